"""One stable square head-and-shoulders crop per clip (static camera), and applying it.

dlib's HOG frontal face detector runs on a bounded subset of frames downscaled to `DETECT_SIZE`; the
box is the median centre and median size of the largest face per frame (outliers removed),
enlarged by `crop_scale` plus the motion range of the face, centred a little above the face.
Where the box leaves the frame it is padded by border replication.
"""

import dataclasses
import logging

import cv2
import dlib
import numpy as np

from data_prep import PrepareError

# Longest side, in pixels, of the frames the face detector sees (faces of ~40-180 px detect well).
DETECT_SIZE = 256
# Frames kept for the crop estimate: MIN_SAMPLES to 2 * MIN_SAMPLES (stride doubling).
MIN_SAMPLES = 40
# Smallest usable face (detector box side) in source pixels.
MIN_FACE_PX = 64
# Default enlargement of the dlib face box (brows-to-chin square): 2.2, plus the head's motion range
# and shifted up by UP_SHIFT face sizes, keeps hair, ears, neck and collar inside on the sample
# portraits (checked on the contact sheets of all three clips).
DEFAULT_CROP_SCALE = 2.2
UP_SHIFT = 0.2


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A square crop in source pixels.

    Attributes:
      box: (x0, y0, x1, y1) integers, half-open, x1 - x0 == y1 - y0; may extend past the frame.
      face_size: median detected face-box side in source pixels.
      detection_rate: fraction of sampled frames with a face.
      sampled: number of sampled frames.
      multi_face_frames: sampled frames with more than one face.
    """

    box: tuple[int, int, int, int]
    face_size: float
    detection_rate: float
    sampled: int
    multi_face_frames: int

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]


class FrameSampler:
    """Keeps a bounded, evenly strided subset of a stream of frames, downscaled for detection.

    The stride doubles (and every other kept frame is dropped) whenever more than 2 * MIN_SAMPLES
    are held, so the subset stays between MIN_SAMPLES and 2 * MIN_SAMPLES frames.
    """

    def __init__(self):
        self.stride = 1
        self.samples: list[tuple[int, np.ndarray]] = []  # (frame index, [h, w] uint8 gray)
        self.scale = 1.0  # detection pixels per source pixel

    def add(self, index: int, gray: np.ndarray) -> None:
        """Offers frame `index` ([H, W] uint8 gray, source pixels)."""
        if index % self.stride:
            return
        h, w = gray.shape
        self.scale = DETECT_SIZE / max(h, w)
        small_wh = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        self.samples.append((index, cv2.resize(gray, small_wh, interpolation=interp)))
        if len(self.samples) > 2 * MIN_SAMPLES:
            self.stride *= 2
            self.samples = [s for s in self.samples if s[0] % self.stride == 0]


def largest(rects: dlib.rectangles) -> dlib.rectangle | None:
    """The largest-area detection, or None."""
    return max(rects, key=lambda r: r.area(), default=None)


def estimate_crop_box(
    path: str,
    sampler: FrameSampler,
    width: int,
    height: int,
    crop_scale: float,
    max_missing_frac: float,
) -> CropBox:
    """Finds the one crop box for the clip from the sampled frames.

    Args:
      path: the video, for error messages.
      sampler: the frames sampled during the scan pass.
      width: source frame width in pixels.
      height: source frame height in pixels.
      crop_scale: crop side / detected face-box side.
      max_missing_frac: largest tolerated fraction of sampled frames without a face.

    Returns:
      The `CropBox` in source pixels.

    Raises:
      PrepareError: faces missing in more than `max_missing_frac` of the sampled frames, or a face
        smaller than MIN_FACE_PX.
    """
    detector = dlib.get_frontal_face_detector()
    found, missing, multi = [], [], 0
    # 2x upsampling (detection at ~512 px) first: dlib's box size depends on the pyramid level that
    # fires, and at ~512 px it matches full-resolution detection on 512 px portraits.
    for upsample in (1, 0):
        found, missing, multi = [], [], 0
        for index, small in sampler.samples:
            rects = detector(small, upsample)
            multi += len(rects) > 1
            r = largest(rects)
            if r is None:
                missing.append(index)
            else:
                found.append((r.center().x, r.center().y, (r.width() + r.height()) / 2))
        if len(missing) <= max_missing_frac * len(sampler.samples):
            break
    n = len(sampler.samples)
    if not found or len(missing) > max_missing_frac * n:
        first = ", ".join(map(str, missing[:8]))
        raise PrepareError(
            path,
            f"no face found in {len(missing)} of {n} sampled frames (> {max_missing_frac:.0%}); "
            f"first frames without a face: {first}",
        )
    if multi:
        logging.warning(
            "%s: several faces in %d of %d sampled frames; using the largest", path, multi, n
        )
    dets = np.asarray(found, np.float64) / sampler.scale  # [F, 3] (cx, cy, size) in source pixels
    centre, size = np.median(dets[:, :2], axis=0), np.median(dets[:, 2])
    # Drop detections far from the consensus (another person, a false positive), then re-estimate.
    keep = np.linalg.norm(dets[:, :2] - centre, axis=1) < 0.5 * size
    keep &= np.abs(np.log(dets[:, 2] / size)) < np.log(1.5)
    if keep.any():
        centre, size = np.median(dets[keep, :2], axis=0), np.median(dets[keep, 2])
    if size < MIN_FACE_PX:
        raise PrepareError(
            path,
            f"face too small: {size:.0f} px < {MIN_FACE_PX} px in a {width}x{height} frame; "
            "use a higher-resolution source",
        )
    # The head moves during the clip: widen the box by the spread (10th-90th percentile) of the face
    # centres so hair and chin stay inside in every frame, not just the median one.
    kept = dets[keep] if keep.any() else dets
    spread = float(
        np.max(np.percentile(kept[:, :2], 90, axis=0) - np.percentile(kept[:, :2], 10, axis=0))
    )
    side = int(round(size * crop_scale + spread))
    x0 = int(round(centre[0] - side / 2))
    # dlib's box centre is near the nose; the head top is ~1 face size above it, the collar about as
    # far below the chin, so the crop is centred UP_SHIFT face sizes higher.
    y0 = int(round(centre[1] - UP_SHIFT * size - side / 2))
    return CropBox((x0, y0, x0 + side, y0 + side), float(size), len(found) / n, n, multi)


def crop_frame(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Cuts `box` out of `frame`, replicating borders outside the frame, and resizes to `size`.

    Args:
      frame: [H, W, C] or [H, W] uint8 in source pixels.
      box: (x0, y0, x1, y1) square, half-open, in source pixels; may leave the frame.
      size: output side in pixels (INTER_AREA when shrinking, INTER_LINEAR when enlarging).

    Returns:
      [size, size, C] (or [size, size]) uint8.
    """
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx0 >= cx1 or cy0 >= cy1:
        raise ValueError(f"crop box {box} does not overlap the {w}x{h} frame")
    patch = frame[cy0:cy1, cx0:cx1]
    pads = (cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1)  # top, bottom, left, right
    if any(pads):
        patch = cv2.copyMakeBorder(patch, *pads, cv2.BORDER_REPLICATE)
    side = x1 - x0
    if side == size:
        return np.ascontiguousarray(patch)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def to_crop_coords(points: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Maps (x, y) source pixels to pixels of the `size` crop (pixel-centre aligned).

    Args:
      points: [..., 2] float (x, y) in source pixels.
      box: the crop box in source pixels.
      size: crop side in pixels.

    Returns:
      [..., 2] float64 (x, y) in crop pixels.
    """
    s = size / (box[2] - box[0])
    return (np.asarray(points, np.float64) - np.array(box[:2]) + 0.5) * s - 0.5
