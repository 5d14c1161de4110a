"""grain input pipelines: a prepared dataset -> training and evaluation batches.

Two element kinds, both built from small documented transforms over the random-access source of
`vpgc_jax.data.frames.open_split`:

* codebook stage (stage 1): ``{'image': float32 [B, R, R, 3] in [-1, 1]}``;
* driver stage (stage 2): ``{'heatmaps': float32 [B, R, R, 7] in [0, 1], 'image': ...}``, the
  heatmaps of frames t-3..t+3 for each target frame t, clamped to the split's ends (spec §3.2).

Frames come either as groups of ``frames_per_group`` consecutive frames (4 in the reference, spec
§3.1: item i holds frames 4i..4i+3) or as independent random frames (``frames_per_group=1``). The
global batch is ``batch_size`` frames, i.e. ``batch_size // frames_per_group`` groups.

Pipelines are deterministic given a seed, shuffle and repeat, shard per process for multi-host
(process p reads groups p, p + P, ...), and return grain iterators whose position is checkpointable
(`get_state` / `set_state`, or orbax via `grain.checkpoint.CheckpointSave`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np

from vpgc_jax import images
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib


def to_float_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [S, S, 3] -> float32 [R, R, 3] in [-1, 1] (reference normalisation, spec §3.1)."""
    return images.to_signed(images.resize(image, resolution))


def jitter_landmarks(landmarks: np.ndarray, scale: float) -> np.ndarray:
    """Scales landmarks [..., 68, 2] about their bounding-box centre (spec §3.2, `.mat` path)."""
    lo = landmarks.min(axis=-2, keepdims=True)
    hi = landmarks.max(axis=-2, keepdims=True)
    centre = (lo + hi) / 2
    return centre + scale * (landmarks - centre)


@dataclasses.dataclass
class LoadFrames:
    """Group index -> uint8 frames of `frames_per_group` consecutive frames + their indices.

    Group g holds split frames g*G .. g*G+G-1 (reference grouping, spec §3.1).
    """

    source: Sequence[dict]
    frames_per_group: int

    def __call__(self, group: int) -> dict:
        idx = np.arange(group * self.frames_per_group, (group + 1) * self.frames_per_group)
        items = [self.source[int(i)] for i in idx]
        return {"image": np.stack([it["image"] for it in items]), "index": idx.astype(np.int32)}


@dataclasses.dataclass
class ImagesToFloat:
    """uint8 [G, S, S, 3] -> float32 [G, R, R, 3] in [-1, 1]."""

    resolution: int

    def __call__(self, element: dict) -> dict:
        image = np.stack([to_float_image(im, self.resolution) for im in element["image"]])
        return {**element, "image": image}


@dataclasses.dataclass
class RenderHeatmapStacks:
    """Adds 'heatmaps' float32 [G, R, R, 7] in [0, 1] for each frame of the group.

    Landmarks of the whole split (crop pixels at `dataset_size`) are rescaled to `resolution` and
    drawn with the data-prep drawer; neighbours are clamped to [0, N-1] (spec §3.2). With
    `jitter` > 0 each group's landmarks are scaled by U(1 - jitter, 1 + jitter) about their box
    centre.
    """

    landmarks: np.ndarray  # [N, 68, 2] float32, crop pixels at dataset_size
    dataset_size: int
    resolution: int
    jitter: float = 0.0

    def __call__(self, element: dict, rng: np.random.Generator) -> dict:
        seq = self.landmarks * (self.resolution / self.dataset_size)  # [N, 68, 2] at resolution
        if self.jitter > 0:
            seq = jitter_landmarks(seq, rng.uniform(1 - self.jitter, 1 + self.jitter))
        stacks = [
            heatmaps_lib.heatmap_stack(seq, int(t), self.resolution) for t in element["index"]
        ]
        return {**element, "heatmaps": np.stack(stacks)}  # [G, R, R, 7]


def flatten_groups(batch: dict) -> dict:
    """[B/G, G, ...] -> [B, ...] for every array of a batch of groups."""
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


def make_dataset(
    dataset_dir: str,
    split: str,
    *,
    stage: str,
    batch_size: int,
    resolution: int,
    frames_per_group: int = 4,
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    landmark_jitter: float = 0.0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
) -> grain.IterDataset:
    """Builds the grain pipeline for one stage and split.

    Args:
        dataset_dir: a directory written by `python -m data_prep.prepare`.
        split: 'train' or 'test'.
        stage: 'codebook' (images only) or 'driver' (images + 7-frame heatmap stacks).
        batch_size: frames per batch on THIS process (the global batch divided by process_count); a
            multiple of `frames_per_group`.
        resolution: output side R in pixels; frames are resized from the dataset size if needed.
        frames_per_group: 4 for the reference's consecutive-frame groups, 1 for independent frames.
        seed: pipeline seed (shuffle order and landmark jitter).
        shuffle / repeat: shuffle groups; repeat forever (training) or one pass (evaluation).
        drop_remainder: drop a last incomplete batch.
        landmark_jitter: driver stage only; 0.05 gives the reference's U(0.95, 1.05) landmark scale.
        process_index / process_count: multi-host sharding; each process reads every P-th group.
        num_workers: grain worker processes (0 = in-process). Workers need absl flags parsed.

    Returns:
        A `grain.IterDataset`; `iter()` gives a checkpointable iterator of dicts of numpy arrays:
        'image' float32 [B, R, R, 3] in [-1, 1], 'index' int32 [B] (split frame index) and, for the
        driver stage, 'heatmaps' float32 [B, R, R, 7] in [0, 1].

    Raises:
        ValueError: bad stage, batch size not a multiple of frames_per_group, or a split with
            fewer frames than one batch.
    """
    if stage not in ("codebook", "driver"):
        raise ValueError(f"stage must be 'codebook' or 'driver', got {stage!r}")
    if batch_size % frames_per_group:
        raise ValueError(
            f"batch_size {batch_size} is not a multiple of frames_per_group {frames_per_group}"
        )
    source = frames_lib.open_split(dataset_dir, split)
    num_groups = len(source) // frames_per_group
    groups_per_batch = batch_size // frames_per_group
    if num_groups // process_count < groups_per_batch and drop_remainder:
        raise ValueError(
            f"{dataset_dir}: split {split!r} has {len(source)} frames, fewer than one batch "
            f"of {batch_size} frames per process"
        )

    ds = grain.MapDataset.range(num_groups)[process_index::process_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(LoadFrames(source, frames_per_group))
    ds = ds.map(ImagesToFloat(resolution))
    if stage == "driver":
        meta = frames_lib.load_meta(dataset_dir)
        landmarks = frames_lib.load_landmarks(dataset_dir, split)["landmarks"]
        ds = ds.random_map(
            RenderHeatmapStacks(landmarks, int(meta["size"]), resolution, landmark_jitter),
            seed=seed,
        )
    ds = ds.batch(groups_per_batch, drop_remainder=drop_remainder).map(flatten_groups)
    it_ds = ds.to_iter_dataset()
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it_ds


def load_frames(source, indices, resolution: int) -> np.ndarray:
    """Frames `indices` of an `open_split` source as float32 [len(indices), R, R, 3] in [-1, 1]."""
    return np.stack([to_float_image(source[int(i)]["image"], resolution) for i in indices])
