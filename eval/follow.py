"""Does a reenactment follow its driver? Scores for cross-reenactment, which has no ground truth.

Issue 16 item 7, the cross-reenactment analogue of the expression / pose distances (AED / APD) in
LivePortrait's tables: landmarks detected on each output frame (dlib, `eval.face_landmarks`) are
compared with the landmarks that produced it, the driving track retargeted onto the subject
(`vpgc_jax.retarget`):

* mouth LMD: mean distance over the 20 mouth points (iBUG 48-67), pixels at 512 x 512 (F-LMD's
  convention, `eval.metrics.flmd`), over the frames where a face was detected;
* mouth-opening correlation: Pearson r over time between the output's inner-lip gap and the
  driving one (`mouth_opening`); a mouth that opens and closes with the driver scores near 1;
* mouth-opening range: the standard deviation over time of the output's gap over the driving
  one's (1: as expressive as the driver; a nearly neutral mouth scores near 0).
"""

import numpy as np

from eval.face_landmarks import FLMD_RESOLUTION

MOUTH = slice(48, 68)
INNER_UPPER = (61, 62, 63)  # iBUG inner upper lip, left to right
INNER_LOWER = (67, 66, 65)  # the inner lower lip points below them


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap per frame: the mean distance of points 61-63 to 67-65, in the input's units.

    Args:
      landmarks: [N, 68, 2] float (x, y), iBUG 68-point order.

    Returns:
      [N] float64 (0 for a closed mouth).
    """
    lm = np.asarray(landmarks, np.float64)
    upper, lower = lm[:, list(INNER_UPPER)], lm[:, list(INNER_LOWER)]
    return np.linalg.norm(lower - upper, axis=-1).mean(-1)


def _varies(x: np.ndarray) -> bool:
    return bool(x.std() > 1e-9 * max(1.0, float(np.abs(x).max())))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two [N] series; NaN when N < 2 or either is constant (to rounding)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or not (_varies(a) and _varies(b)):
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def follow_scores(
    detected: np.ndarray, driving: np.ndarray, found: np.ndarray, resolution: int
) -> dict[str, float]:
    """How closely output frames follow the landmarks that drove them.

    Args:
      detected: [N, 68, 2] float landmarks detected on the output frames, pixels of the R x R frame.
      driving: [N, 68, 2] float driving landmarks (retargeted onto the subject), same pixels.
      found: [N] bool, a face was detected on the output frame (others are left out).
      resolution: R, the frame side in pixels.

    Returns:
      {'mouth_lmd' (px at 512), 'opening_corr' (Pearson r), 'opening_range' (std ratio, output over
       driving), 'frames' (counted), 'face_found' (fraction of frames)}; NaN scores when no frame
       has a face.

    Raises:
      ValueError: shapes differ or are not [N, 68, 2] / [N].
    """
    det, drv = np.asarray(detected, np.float64), np.asarray(driving, np.float64)
    found = np.asarray(found, bool)
    if det.shape != drv.shape or det.ndim != 3 or det.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must both be [N, 68, 2], got {det.shape} and {drv.shape}")
    if found.shape != (len(det),):
        raise ValueError(f"found must be [{len(det)}], got {found.shape}")
    n = int(found.sum())
    out = {"frames": n, "face_found": float(found.mean()) if len(found) else float("nan")}
    if n == 0:
        return {
            **out,
            "mouth_lmd": float("nan"),
            "opening_corr": float("nan"),
            "opening_range": float("nan"),
        }
    det, drv = det[found], drv[found]
    dist = np.linalg.norm(det[:, MOUTH] - drv[:, MOUTH], axis=-1).mean()
    o_det, o_drv = mouth_opening(det), mouth_opening(drv)
    return {
        **out,
        "mouth_lmd": float(dist * FLMD_RESOLUTION / resolution),
        "opening_corr": pearson(o_det, o_drv),
        "opening_range": float(o_det.std() / o_drv.std()) if _varies(o_drv) else float("nan"),
    }
