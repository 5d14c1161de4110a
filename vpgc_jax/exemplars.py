"""Exemplar features for the driver: the stage-1 features of the nearest training frame.

Beyond the paper and the reference (``model.exemplar``, named option; measured in
benchmarks/RESULTS.md, "Issue 16: exemplar driver"). The driver of Sec. 3.3 predicts the stage-1
features F_hat from landmark heatmaps alone, so it has to learn the subject's whole appearance
from them; at a CPU budget (about 1000 steps) that prediction stays smooth, and a non-learned
lookup of the training frame with the nearest landmarks scores better. With ``model.exemplar`` the
driver is also given Z_ex, the frozen stage-1 encoder's output for that training frame (the
retrieval baseline's pick, `eval.metrics.retrieval_baseline` with match 'landmarks'), and
predicts F_hat = Z_ex + a correction (`vpgc_jax.models.driver.PriorGuidedDriver`).

The bank holds Z for every training frame with its landmarks; a stage-2 run writes it once to
``WORKDIR/exemplars.npz`` (`build`, `save`) so that inference needs neither the dataset nor a
re-encoding. In training, a frame's exemplar is the nearest training frame at least ``gap``
frames away from it (`training_table`): its own neighbours would hand the driver the answer,
which a held-out or driving frame never gets.
"""

import os

import numpy as np
from tqdm import tqdm

from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import pipeline

FILENAME = "exemplars.npz"


def nearest(
    bank_landmarks: np.ndarray, landmarks: np.ndarray, gap: int = 0, chunk: int = 512
) -> np.ndarray:
    """Index of the bank entry with the least sum of squared landmark distances, per query.

    Args:
      bank_landmarks: [K, P, 2] float (x, y) pixels (P points, 68 for landmarks).
      landmarks: [n, P, 2] float, the same pixel frame.
      gap: 0 compares every pair; > 0 means the queries are the bank's own frames in order, and
        query t may not match bank frames i with |i - t| < gap.
      chunk: queries compared at a time (bounds the [chunk, K] distance matrix).

    Returns:
      [n] int64 indices into the bank (the first on ties); `eval.metrics.retrieval_baseline`
      uses it too.
    """
    a = np.asarray(bank_landmarks, np.float64).reshape(len(bank_landmarks), -1)
    b = np.asarray(landmarks, np.float64).reshape(len(landmarks), -1)
    a2 = (a**2).sum(1)
    out = np.zeros(len(b), np.int64)
    for lo in range(0, len(b), chunk):
        q = b[lo : lo + chunk]
        d = (q**2).sum(1)[:, None] - 2 * q @ a.T + a2[None]  # [c, K]
        if gap:
            t = np.arange(lo, lo + len(q))[:, None]
            d[np.abs(np.arange(len(a))[None] - t) < gap] = np.inf
        out[lo : lo + len(q)] = np.argmin(d, axis=1)
    return out


def training_table(bank_landmarks: np.ndarray, gap: int) -> np.ndarray:
    """For each training frame, the nearest other training frame at least `gap` frames away.

    Args:
      bank_landmarks: [K, 68, 2] float, the training split's landmarks in frame order.
      gap: frames i with |i - t| < gap are not candidates for frame t (1: only t itself is
        excluded).

    Returns:
      [K] int32 bank indices.

    Raises:
      ValueError: `gap` < 1, or no candidate is left (fewer than gap + 1 training frames).
    """
    k = len(bank_landmarks)
    if gap < 1:
        raise ValueError(f"the exemplar gap must be at least 1 frame, got {gap}")
    if k <= gap:
        raise ValueError(f"{k} training frames leave no exemplar {gap} or more frames away")
    return nearest(bank_landmarks, bank_landmarks, gap).astype(np.int32)


class ExemplarBank:
    """Stage-1 features and landmarks of the training frames.

    Attributes:
      landmarks: [K, 68, 2] float32 (x, y) pixels at ``resolution``.
      features: [K, h, w, D] float32 stage-1 encoder outputs Z (before quant_conv).
      resolution: side R of the frames the landmarks are in.
    """

    def __init__(self, landmarks: np.ndarray, features: np.ndarray, resolution: int):
        if len(landmarks) != len(features) or not len(landmarks):
            raise ValueError(
                f"an exemplar bank needs as many landmark sets as feature grids (at least 1), "
                f"got {len(landmarks)} and {len(features)}"
            )
        self.landmarks = np.asarray(landmarks, np.float32)
        self.features = np.asarray(features, np.float32)
        self.resolution = int(resolution)

    def __len__(self) -> int:
        return len(self.landmarks)

    def lookup(self, landmarks: np.ndarray) -> np.ndarray:
        """Z_ex [n, h, w, D] float32 of the nearest bank frame for landmarks [n, 68, 2] at R px."""
        return self.features[nearest(self.landmarks, landmarks)]

    def save(self, path: str) -> None:
        """Writes the bank to `path` (.npz; features as float16), atomically (tmp + rename)."""
        tmp = path + ".tmp.npz"
        np.savez(
            tmp,
            landmarks=self.landmarks,
            features=self.features.astype(np.float16),
            resolution=np.int32(self.resolution),
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "ExemplarBank":
        """Reads a bank written by `save`.

        Raises:
          FileNotFoundError: no file at `path` (the stage-2 run was not trained with
            ``model.exemplar``, or its exemplars.npz was removed).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: missing; an exemplar driver run writes it when training starts"
            )
        with np.load(path) as f:
            return cls(f["landmarks"], f["features"], int(f["resolution"]))


def build(encode_fn, dataset_dir: str, resolution: int, batch: int = 32) -> ExemplarBank:
    """Encodes every training frame of a prepared dataset with the frozen stage-1 encoder.

    Args:
      encode_fn: ``encode_fn(x [B, R, R, 3] float32 in [-1, 1]) -> Z [B, h, w, D]`` (a
        `vpgc_jax.runs.Batched` of the stage-1 encoder, parameters bound).
      dataset_dir: a directory written by `python -m data_prep.prepare`.
      resolution: side R the frames are resized to (the stage-1 resolution).
      batch: frames encoded per call.

    Returns:
      The `ExemplarBank` of the training split, in frame order.
    """
    meta = frames_lib.load_meta(dataset_dir)
    train = frames_lib.open_split(dataset_dir, "train")
    lms = frames_lib.load_landmarks(dataset_dir, "train")["landmarks"]
    lms = lms * (resolution / float(meta["size"]))
    feats = []
    for lo in tqdm(range(0, len(train), batch), desc="exemplar bank", unit="batch", leave=False):
        idx = np.arange(lo, min(lo + batch, len(train)))
        x = pipeline.load_frames(train, idx, resolution)
        feats.append(np.asarray(encode_fn(x), np.float32))
    # Rounded as `save` stores them, so training sees the features inference will load.
    feats = np.concatenate(feats).astype(np.float16).astype(np.float32)
    return ExemplarBank(lms, feats, resolution)
