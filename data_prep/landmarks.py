"""68-point iBUG landmarks on cropped frames, gap filling and temporal smoothing.

The default backend is dlib: the HOG face detector on the crop downscaled to `DETECT_SIZE`, then the
68-point shape predictor shipped by `face-recognition-models` on the full-resolution crop with the
box rescaled (the predictor file is located without importing that package, whose
``pkg_resources`` import is deprecated). `face_alignment` (optional, not a dependency) is
selectable with `--landmarks face_alignment`.
"""

import importlib.util
import os

import cv2
import dlib
import numpy as np

from data_prep import PrepareError
from data_prep.crop import largest

# Side in pixels of the crop the face detector sees; at the default crop scale the face is ~115 px.
DETECT_SIZE = 256
# Side in pixels of the crop the landmark model sees when the output crop is smaller than this.
MIN_LANDMARK_SIZE = 256
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def shape_predictor_path() -> str:
    """The 68-point predictor file shipped in the `face-recognition-models` package.

    Found with `importlib.util.find_spec`, which does not run the package's ``__init__`` (that
    imports the deprecated ``pkg_resources``).

    Raises:
      FileNotFoundError: the package or its model file is not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed (pip install it)")
    path = os.path.join(spec.submodule_search_locations[0], "models", PREDICTOR_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing from the face-recognition-models package")
    return path


class DlibLandmarker:
    """dlib HOG face detector + 68-point shape predictor: the project's one landmark detector.

    `data_prep` landmarks its crops with it (`__call__`); `eval.face_landmarks` uses `box` and
    `points` separately, to fall back on the ground truth's face box in generated frames.
    """

    name = "dlib"

    def __init__(self):
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(shape_predictor_path())

    def box(self, gray: np.ndarray) -> dlib.rectangle | None:
        """The largest face in a square grey image, in its pixels, or None.

        The HOG detector runs on a `DETECT_SIZE` copy (area filter down, bilinear up), without
        upsampling and then, if it finds nothing, with 2x upsampling.
        """
        s = gray.shape[0]
        small = gray
        if s != DETECT_SIZE:
            interp = cv2.INTER_AREA if s > DETECT_SIZE else cv2.INTER_LINEAR
            small = cv2.resize(gray, (DETECT_SIZE, DETECT_SIZE), interpolation=interp)
        r = largest(self._detector(small, 0)) or largest(self._detector(small, 1))
        if r is None:
            return None
        k = s / DETECT_SIZE
        return dlib.rectangle(*(round(v * k) for v in (r.left(), r.top(), r.right(), r.bottom())))

    def points(self, gray: np.ndarray, box: dlib.rectangle) -> np.ndarray:
        """The 68 landmarks [68, 2] float32 (x, y) predicted inside `box` of a grey image."""
        return np.array([(p.x, p.y) for p in self._predictor(gray, box).parts()], np.float32)

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        """Landmarks of the largest face in one crop.

        Args:
          crop: [S, S, 3] uint8 RGB.

        Returns:
          [68, 2] float32 (x, y) in crop pixels, or None when no face is detected.
        """
        gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        box = self.box(gray)
        return None if box is None else self.points(gray, box)


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
