"""Reader API for datasets written by `data_prep.prepare` (no TensorFlow needed).

`open_split` gives a grain-compatible random-access source of frames; `load_landmarks` gives the
whole landmark track of a split, from which loaders render 7-frame heatmap stacks
(`vpgc_jax.data.heatmaps.heatmap_stack`, spec §3.2) without decoding images.
"""

import json
import os
import threading
from typing import Any

import numpy as np

SPLITS = ("train", "test")


def load_meta(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads `dataset_dir/meta.json`.

    Args:
      dataset_dir: a directory written by `python -m data_prep.prepare`.

    Returns:
      The meta dict: source {path, sha256, ...}, fps, num_frames, train_frames, test_frames,
      size (px), crop_box [x0, y0, x1, y1] (source px), landmark_backend, has_audio,
      detection_rate, version, tfds_dir (relative path of the TFDS version directory),
      settings, timings_s.

    Raises:
      FileNotFoundError: `dataset_dir` or its meta.json does not exist.
      ValueError: meta.json is not valid JSON or lacks the dataset keys.
    """
    path = os.path.join(os.fspath(dataset_dir), "meta.json")
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"{dataset_dir}: no such dataset directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: missing; not a data_prep dataset (run python -m data_prep.prepare)"
        )
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    missing = {"version", "size", "num_frames", "tfds_dir"} - set(meta)
    if missing:
        raise ValueError(f"{path}: not a data_prep meta.json (missing {sorted(missing)})")
    return meta


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def load_landmarks(dataset_dir: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """The landmark track of one split from `landmarks.npz`, in frame order.

    Args:
      dataset_dir: a prepared dataset directory.
      split: 'train' or 'test'.

    Returns:
      {'landmarks': [N, 68, 2] float32 (x, y) crop pixels, 'valid': [N] bool (False = interpolated),
       'frame_index': [N] int32 index in the decoded (resampled) clip}.

    Raises:
      FileNotFoundError: no landmarks.npz.
      ValueError: unknown split.
    """
    _check_split(split)
    path = os.path.join(os.fspath(dataset_dir), "landmarks.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; not a data_prep dataset")
    with np.load(path) as z:
        return {k: z[f"{split}_{k}"] for k in ("landmarks", "valid", "frame_index")}


class NoAudioError(ValueError):
    """A dataset without audio features (its clip had no usable audio, or it predates them)."""


def load_audio(dataset_dir: str | os.PathLike, split: str) -> np.ndarray:
    """The per-frame audio windows of one split from `audio.npz` (`data_prep.audio`).

    Args:
      dataset_dir: a prepared dataset directory.
      split: 'train' or 'test'.

    Returns:
      [N, W, M] float32 normalised log-mel windows (W mel frames of M bands), frame-aligned with
      `load_landmarks`.

    Raises:
      NoAudioError: the dataset has no audio features; the message says why and what to do.
      ValueError: unknown split.
    """
    _check_split(split)
    path = os.path.join(os.fspath(dataset_dir), "audio.npz")
    if not os.path.isfile(path):
        meta = load_meta(dataset_dir)
        if "audio" not in meta:
            why = (
                "it was prepared before audio features existed; re-run python -m "
                "data_prep.prepare on its video with --overwrite"
            )
        else:
            why = (meta["audio"] or {}).get("reason") or "its clip had no usable audio"
        raise NoAudioError(f"{dataset_dir}: has no audio features ({why})")
    with np.load(path) as z:
        return z[f"{split}_mel"].astype(np.float32)


_OPEN_LOCK = threading.Lock()


class FrameSource:
    """Random access to the frames of one split; picklable (reopens its files after unpickling).

    Items are dicts {'image': [S, S, 3] uint8 RGB, 'landmarks': [68, 2] float32 (x, y) crop pixels,
    'valid': np.bool_, 'frame_index': np.int32}, ordered by frame index.
    """

    def __init__(self, dataset_dir: str | os.PathLike, split: str):
        _check_split(split)
        self.dataset_dir = os.fspath(dataset_dir)
        self.split = split
        meta = load_meta(self.dataset_dir)
        self._tfds_dir = os.path.join(self.dataset_dir, meta["tfds_dir"])
        self._len = meta[f"{split}_frames"]
        self._source = None

    def _open(self):
        # grain's prefetch threads call this concurrently. The first TFDS import (lazy: it costs
        # ~1 s) deadlocked when several threads ran it at once (etils lazy imports under the
        # import lock), so opening is serialised.
        with _OPEN_LOCK:
            if self._source is None:
                import tensorflow_datasets as tfds

                builder = tfds.builder_from_directory(self._tfds_dir)
                self._source = builder.as_data_source(self.split)
        return self._source

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -self._len <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} {self.split} frames")
        item = self._open()[int(index) % self._len]
        return {
            "image": np.asarray(item["image"], np.uint8),
            "landmarks": np.asarray(item["landmarks"], np.float32),
            "valid": np.bool_(item["valid"]),
            "frame_index": np.int32(item["frame_index"]),
        }

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"FrameSource({self.dataset_dir!r}, {self.split!r}, len={self._len})"


def open_split(dataset_dir: str | os.PathLike, split: str) -> FrameSource:
    """Opens one split as a grain-compatible random-access source (`__len__`, `__getitem__`).

    Args:
      dataset_dir: a prepared dataset directory.
      split: 'train' or 'test'.

    Returns:
      A `FrameSource`; see its docstring for the item layout.

    Raises:
      FileNotFoundError: not a dataset directory.
      ValueError: unknown split or malformed meta.json.
    """
    return FrameSource(dataset_dir, split)


def evenly_spaced(n_total: int, n: int) -> np.ndarray:
    """`n` frame indices spread evenly over range(n_total) (all if n <= 0 or n >= n_total).

    Returns:
      int64 [min(n, n_total)] (or [n_total]), increasing, first 0 and last n_total - 1.
    """
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.linspace(0, n_total - 1, n).round().astype(int)
