"""Region metrics: the mouth and the eyes, which whole-frame numbers barely see (issue 16).

A talking-head crop is mostly static background, hair and torso, so whole-frame PSNR / SSIM /
LPIPS reward a blurred mouth. Here each frame's mouth (iBUG points 48-67) and eyes (36-47) are cut
out with a square box around the ground truth's landmarks, padded by ``PAD`` of the box side on
every side, and resized to ``CROP`` x ``CROP`` pixels; the same box is cut from the output.
Scores: PSNR (8-bit), LPIPS on the crops, and a sharpness ratio, the variance of the Laplacian of
the output's crop over the ground truth's (1.0: as sharp as the real frame; a blurred mouth scores
well below 1).
"""

from collections.abc import Callable

import cv2
import numpy as np

REGIONS: dict[str, tuple[int, int]] = {"mouth": (48, 68), "eyes": (36, 48)}  # [first, last + 1)
CROP = 64  # side of the resized region crops, pixels
PAD = 0.25  # box padding on each side, as a fraction of the landmarks' extent


def region_box(landmarks: np.ndarray, region: str, size: int, pad: float = PAD) -> np.ndarray:
    """The square box [x0, y0, x1, y1) (int pixels) around one region's landmarks.

    The side is the larger extent of the region's points times (1 + 2 * pad), at least 8 px and
    at most ``size``; the box is shifted to lie inside the ``size`` x ``size`` frame.

    Args:
      landmarks: [68, 2] float (x, y) in pixels of the frame (iBUG 68-point order).
      region: a key of ``REGIONS``.
      size: frame side in pixels.

    Raises:
      KeyError: unknown region.
    """
    first, last = REGIONS[region]
    pts = np.asarray(landmarks, np.float64)[first:last]
    lo, hi = pts.min(0), pts.max(0)
    side = int(np.clip(np.ceil((hi - lo).max() * (1 + 2 * pad)), 8, size))
    x0, y0 = (np.round((lo + hi) / 2 - side / 2)).astype(int).clip(0, size - side)
    return np.array([x0, y0, x0 + side, y0 + side])


def crop(frame: np.ndarray, box: np.ndarray, out: int = CROP) -> np.ndarray:
    """[S, S, 3] uint8 frame -> [out, out, 3] uint8 crop of ``box`` (area / linear resize)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    patch = frame[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if patch.shape[0] > out else cv2.INTER_LINEAR
    return cv2.resize(patch, (out, out), interpolation=interp)


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """Sharpness of [N, H, W, 3] uint8 RGB images: variance of the grey-level Laplacian, [N]."""
    grey = [cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in images]
    return np.array([cv2.Laplacian(g, cv2.CV_64F).var() for g in grey])


def psnr_uint8(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB, peak 255) of [N, H, W, C] uint8 images; identical images give 100."""
    mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return np.where(mse == 0, 100.0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)))


def region_scores(
    truth: np.ndarray,
    output: np.ndarray,
    landmarks: np.ndarray,
    lpips_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> dict[str, np.ndarray]:
    """Per-frame region metrics of ``output`` against ``truth``.

    Args:
      truth, output: [N, S, S, 3] uint8 RGB frames.
      landmarks: [N, 68, 2] float (x, y) of the ground truth's landmarks, pixels of the S frame.
      lpips_fn: (a, b) -> [N] LPIPS of [N, CROP, CROP, 3] uint8 crops.

    Returns:
      For each region R of ``REGIONS``: 'R_psnr' [N] dB, 'R_lpips' [N], and 'R_sharpness_truth',
      'R_sharpness_output' [N] (Laplacian variances; `sharpness_ratio` makes the ratio).
    """
    size = truth.shape[1]
    out = {}
    for region in REGIONS:
        boxes = [region_box(lm, region, size) for lm in landmarks]
        t = np.stack([crop(f, b) for f, b in zip(truth, boxes, strict=True)])
        o = np.stack([crop(f, b) for f, b in zip(output, boxes, strict=True)])
        out[f"{region}_psnr"] = psnr_uint8(t, o)
        out[f"{region}_lpips"] = np.asarray(lpips_fn(t, o), np.float64)
        out[f"{region}_sharpness_truth"] = laplacian_variance(t)
        out[f"{region}_sharpness_output"] = laplacian_variance(o)
    return out


def summarize(per_frame: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of `region_scores` over frames; sharpness as one ratio of mean variances per region.

    Returns:
      {'R_psnr', 'R_lpips', 'R_sharpness'} per region (``R_sharpness`` = mean output variance /
      mean ground-truth variance: 1.0 as sharp as the real frames).
    """
    out = {}
    for region in REGIONS:
        out[f"{region}_psnr"] = float(np.mean(per_frame[f"{region}_psnr"]))
        out[f"{region}_lpips"] = float(np.mean(per_frame[f"{region}_lpips"]))
        truth = float(np.mean(per_frame[f"{region}_sharpness_truth"]))
        out[f"{region}_sharpness"] = float(np.mean(per_frame[f"{region}_sharpness_output"])) / max(
            truth, 1e-12
        )
    return out
