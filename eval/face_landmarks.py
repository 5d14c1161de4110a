"""dlib landmarks for F-LMD, with the ground truth's face box as fallback for generated frames.

F-LMD (Sec. 4.2 of Wang et al. 2023, after Ji et al. 2021) compares the 68 landmarks detected on
a generated frame with those detected on its ground-truth frame. Detection is `data_prep`'s
(`data_prep.landmarks.DlibLandmarker`, the project's one detector) on frames enlarged (bicubic) to
at least `DETECT_SIZE` = 256 px, the size `data_prep` landmarks its crops at. Measured on the 1510
frames of the macron clip at 128 px: dlib finds the face in every frame with or without
enlargement, but its landmarks agree with the dataset's (detected on 256-px crops of the 512-px
source) to 1.03 px (at 512 scale) after enlarging to 256 px, 1.24 px after enlarging to 512 px and
2.06 px without.

Scoring only the frames where the detector finds a face would flatter a model whose frames often
have no recognisable face: where it finds none in a generated frame, `FaceLandmarks` runs the
shape predictor inside the face box found on the ground truth, so that frame is scored (badly)
instead of dropped.
"""

import cv2
import dlib
import numpy as np

from data_prep.landmarks import MIN_LANDMARK_SIZE, DlibLandmarker

# Frames smaller than this are enlarged before landmark detection (see the module docstring).
DETECT_SIZE = MIN_LANDMARK_SIZE
# F-LMD is reported in pixels of a frame of this side (paper Sec. 4.2 works at 512 x 512).
FLMD_RESOLUTION = 512


class FaceLandmarks:
    """dlib's 68 landmarks per frame, with a fallback face box where none is detected (F-LMD).

    Args:
      detect_size: frames with a side under it are enlarged (bicubic) to it first.
    """

    def __init__(self, detect_size: int = DETECT_SIZE):
        self.detect_size = detect_size
        self._dlib = DlibLandmarker()

    def __call__(
        self, frames: np.ndarray, fallback: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Landmarks of uint8 frames.

        Args:
          frames: [N, R, R, 3] uint8 RGB.
          fallback: optional [N, 4] int boxes (left, top, right, bottom; px of the enlarged frame;
            right <= left for none), used where the detector finds no face.

        Returns:
          ([N, 68, 2] float32 (x, y) px of the R x R frame, zeros where there is neither a face nor
           a fallback box; [N, 4] int32 boxes used (-1 for none); [N] bool, detector found a face).
        """
        r = frames.shape[1]
        size = max(r, self.detect_size)
        points = np.zeros((len(frames), 68, 2), np.float32)
        boxes = np.full((len(frames), 4), -1, np.int32)
        found = np.zeros(len(frames), bool)
        for i, frame in enumerate(frames):
            if size != r:
                frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_CUBIC)
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            box = self._dlib.box(gray)
            found[i] = box is not None
            if box is None and fallback is not None and fallback[i, 2] > fallback[i, 0]:
                box = dlib.rectangle(*(int(v) for v in fallback[i]))
            if box is None:
                continue
            boxes[i] = (box.left(), box.top(), box.right(), box.bottom())
            pts = self._dlib.points(gray, box)
            points[i] = (pts + 0.5) * (r / size) - 0.5  # pixel-centre aligned rescale
        return points, boxes, found


def flmd_convention(resolution: int, counted: int, total: int) -> str:
    """The F-LMD convention in words, for a report.

    Args:
      resolution: side R in pixels of the frames the landmarks were detected on.
      counted: frames where dlib found a face in the ground truth (the frames averaged over).
      total: frames evaluated.
    """
    scale = FLMD_RESOLUTION / resolution
    size = DETECT_SIZE
    return (
        "mean Euclidean distance between the 68 dlib landmarks of the generated and of the "
        f"ground-truth frame, in pixels of a 512 x 512 frame (measured at {resolution} px, times "
        f"512 / {resolution} = {scale:g}); frames under {size} px are enlarged (bicubic) to "
        f"{size} px for detection. Where dlib finds no face in a generated frame, its landmarks "
        "are predicted in the face box found on the ground truth, so failures count instead of "
        "being dropped ('face found': share of frames where dlib's detector itself found a face). "
        f"Averaged over the {counted} of {total} frames with a face found in the ground truth."
    )
