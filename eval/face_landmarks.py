"""dlib landmarks for F-LMD, with the ground truth's face box as fallback for generated frames.

F-LMD (Sec. 4.2 of Wang et al. 2023, after Ji et al. 2021) compares the 68 landmarks detected on
a generated frame with those detected on its ground-truth frame. `eval.metrics.detect_landmarks`
returns no landmarks where dlib's face detector fails; scoring only the frames where it succeeds
would flatter a model whose frames often have no recognisable face. `FaceLandmarks` detects the
same way and, where the detector fails on a generated frame, runs the shape predictor inside the
face box found on the ground truth, so that frame is scored (badly) instead of dropped.
"""

import cv2
import dlib
import numpy as np

from data_prep.crop import largest
from data_prep.landmarks import DETECT_SIZE as DLIB_DETECT_SIZE
from eval import metrics


class FaceLandmarks:
    """dlib's 68 landmarks per frame, with the ground truth's face box as fallback (for F-LMD).

    Detection is that of `eval.metrics.detect_landmarks` (via `data_prep.landmarks.
    DlibLandmarker`): frames under `eval.metrics.DETECT_SIZE` px are enlarged (bicubic) to it, the
    HOG detector runs on a 256-px grey copy (no upsampling, then 2x), and the shape predictor in
    the largest box. Where the detector finds no face in a generated frame, the predictor runs in
    the box found on its ground-truth frame: a frame without a recognisable face is then scored
    (badly) instead of dropped, which would flatter a model that often fails.
    """

    def __init__(self):
        import face_recognition_models  # Imports pkg_resources: needs setuptools<81.

        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(
            face_recognition_models.pose_predictor_model_location()
        )

    def _box(self, gray: np.ndarray) -> dlib.rectangle | None:
        s = gray.shape[0]
        small = gray
        if s != DLIB_DETECT_SIZE:
            interp = cv2.INTER_AREA if s > DLIB_DETECT_SIZE else cv2.INTER_LINEAR
            small = cv2.resize(gray, (DLIB_DETECT_SIZE, DLIB_DETECT_SIZE), interpolation=interp)
        r = largest(self._detector(small, 0)) or largest(self._detector(small, 1))
        if r is None:
            return None
        k = s / DLIB_DETECT_SIZE
        return dlib.rectangle(*(round(v * k) for v in (r.left(), r.top(), r.right(), r.bottom())))

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
        size = max(r, metrics.DETECT_SIZE)
        points = np.zeros((len(frames), 68, 2), np.float32)
        boxes = np.full((len(frames), 4), -1, np.int32)
        found = np.zeros(len(frames), bool)
        for i, frame in enumerate(frames):
            if size != r:
                frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_CUBIC)
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            box = self._box(gray)
            found[i] = box is not None
            if box is None and fallback is not None and fallback[i, 2] > fallback[i, 0]:
                box = dlib.rectangle(*(int(v) for v in fallback[i]))
            if box is None:
                continue
            boxes[i] = (box.left(), box.top(), box.right(), box.bottom())
            pts = np.array([(p.x, p.y) for p in self._predictor(gray, box).parts()], np.float32)
            points[i] = (pts + 0.5) * (r / size) - 0.5  # pixel-centre aligned, as detect_landmarks
        return points, boxes, found


def flmd_convention(resolution: int, counted: int, total: int) -> str:
    """The F-LMD convention in words, for a report.

    Args:
      resolution: side R in pixels of the frames the landmarks were detected on.
      counted: frames where dlib found a face in the ground truth (the frames averaged over).
      total: frames evaluated.
    """
    scale = metrics.FLMD_RESOLUTION / resolution
    size = metrics.DETECT_SIZE
    return (
        "mean Euclidean distance between the 68 dlib landmarks of the generated and of the "
        f"ground-truth frame, in pixels of a 512 x 512 frame (measured at {resolution} px, times "
        f"512 / {resolution} = {scale:g}); frames under {size} px are enlarged (bicubic) to "
        f"{size} px for detection. Where dlib finds no face in a generated frame, its landmarks "
        "are predicted in the face box found on the ground truth, so failures count instead of "
        "being dropped ('face found': share of frames where dlib's detector itself found a face). "
        f"Averaged over the {counted} of {total} frames with a face found in the ground truth."
    )
