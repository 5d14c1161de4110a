"""grain input pipelines: a prepared dataset -> training and evaluation batches.

Two element kinds, both built from small documented transforms over the random-access source of
`vpgc_jax.data.frames.open_split`:

* codebook stage (stage 1): ``{'image': float32 [B, R, R, 3] in [-1, 1]}``;
* driver stage (stage 2): ``{'heatmaps': float32 [B, R, R, 7] in [0, 1], 'image': ...}``, the
  heatmaps of frames t-3..t+3 for each target frame t, clamped to the split's ends (spec §3.2).

Frames come either as groups of ``frames_per_group`` consecutive frames (4 in the reference, spec
§3.1: item i holds frames 4i..4i+3) or as independent random frames (``frames_per_group=1``). The
global batch is ``batch_size`` frames, i.e. ``batch_size // frames_per_group`` groups.

Pipelines are deterministic given a seed, shuffle and repeat, and return grain iterators whose
position is checkpointable (`get_state` / `set_state`, or orbax via
`grain.checkpoint.CheckpointSave`). Multi-process sharding: every process walks the same stream of
global batches (shuffled groups, reshuffled every epoch) and takes its own contiguous part of each
batch, so the global batch at step n does not depend on the process count, an epoch reads every
group exactly once over all processes, and the iterator state (the number of global batches read)
is the same on every process and valid for any process count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np

from vpgc_jax import images
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib

# How far the training iterators read ahead: 4 threads, 4 batches. grain's default (16 threads, 500
# batches) decodes up to 500 batches as soon as a run starts, while it is still compiling: at
# 128 px, batch 8, 1.6 GiB buffered and 28 CPU seconds in the first 20 s for stage 2, and the tiny
# stage-1 step's trace in a run took 7.7 s with it, 2.2 s without (benchmarks/RESULTS.md, "Input
# read-ahead"). A train step consumes one batch; 4 ready batches cover a slow read, and
# `--config.num_workers` adds processes where decoding is the bottleneck.
READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)


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
class ProcessSlice:
    """(global batch number b, its group ids [g_global]) -> this process's part of the batch.

    Process p of P takes the p-th of P contiguous parts (`np.array_split`; equal when P divides
    the batch). Returns ``{'group': ids [g], 'slot': their positions in the global batch [g],
    'batch': b}``; (b, slot) names a group's place in the stream whatever the process count.
    """

    process_index: int
    process_count: int

    def __call__(self, batch_number: int, groups: np.ndarray) -> dict:
        slots = np.array_split(np.arange(len(groups)), self.process_count)[self.process_index]
        return {"group": groups[slots], "slot": slots, "batch": batch_number}


@dataclasses.dataclass
class LoadFrames:
    """Group ids [g] -> uint8 frames [g*G, S, S, 3] and their split frame indices 'index' [g*G].

    Group i holds split frames i*G .. i*G+G-1 (reference grouping, spec §3.1).
    """

    source: Sequence[dict]
    frames_per_group: int

    def __call__(self, element: dict) -> dict:
        g = self.frames_per_group
        idx = (element["group"][:, None] * g + np.arange(g)).reshape(-1)  # [g*G]
        image = np.stack([self.source[int(i)]["image"] for i in idx])
        return {**element, "image": image, "index": idx.astype(np.int32)}


@dataclasses.dataclass
class ImagesToFloat:
    """uint8 [G, S, S, 3] -> float32 [G, R, R, 3] in [-1, 1]."""

    resolution: int

    def __call__(self, element: dict) -> dict:
        image = np.stack([to_float_image(im, self.resolution) for im in element["image"]])
        return {**element, "image": image}


@dataclasses.dataclass
class RenderHeatmapStacks:
    """Adds 'heatmaps' float32 [g*G, R, R, 7] in [0, 1] for each frame of the element's groups.

    Landmarks of the whole split (crop pixels at `dataset_size`) are rescaled to `resolution` and
    drawn with the data-prep drawer; neighbours are clamped to [0, N-1] (spec §3.2). With
    `jitter` > 0 each group's landmarks are scaled by U(1 - jitter, 1 + jitter) about their box
    centre, drawn from a generator seeded by (seed, batch number, slot), so a group gets the same
    jitter whatever the process count.
    """

    landmarks: np.ndarray  # [N, 68, 2] float32, crop pixels at dataset_size
    dataset_size: int
    resolution: int
    frames_per_group: int
    jitter: float = 0.0
    seed: int = 0

    def __call__(self, element: dict) -> dict:
        seq = self.landmarks * (self.resolution / self.dataset_size)  # [N, 68, 2] at resolution
        frames = element["index"].reshape(-1, self.frames_per_group)  # [g, G]
        stacks = []
        for slot, group_frames in zip(element["slot"], frames, strict=True):
            group_seq = seq
            if self.jitter > 0:
                rng = np.random.default_rng((self.seed, int(element["batch"]), int(slot)))
                group_seq = jitter_landmarks(seq, rng.uniform(1 - self.jitter, 1 + self.jitter))
            stacks += [
                heatmaps_lib.heatmap_stack(group_seq, int(t), self.resolution) for t in group_frames
            ]
        return {**element, "heatmaps": np.stack(stacks)}  # [g*G, R, R, 7]


def drop_bookkeeping(element: dict) -> dict:
    """Keeps the arrays a batch is made of ('image', 'index', 'heatmaps')."""
    return {k: v for k, v in element.items() if k not in ("group", "slot", "batch")}


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
        batch_size: frames per GLOBAL batch (all processes together); a multiple of
            `frames_per_group` x `process_count`. Each process gets ``batch_size //
            process_count`` frames, its contiguous part of every global batch.
        resolution: output side R in pixels; frames are resized from the dataset size if needed.
        frames_per_group: 4 for the reference's consecutive-frame groups, 1 for independent frames.
        seed: pipeline seed (shuffle order and landmark jitter).
        shuffle / repeat: shuffle groups (a new order every epoch); repeat forever (training) or
            one pass (evaluation).
        drop_remainder: drop a last incomplete batch.
        landmark_jitter: driver stage only; 0.05 gives the reference's U(0.95, 1.05) landmark scale.
        process_index / process_count: this process and the number of processes.
        num_workers: grain worker processes (0 = in-process). Workers need absl flags parsed.

    Returns:
        A `grain.IterDataset`; `iter()` gives a checkpointable iterator of dicts of numpy arrays:
        'image' float32 [B, R, R, 3] in [-1, 1], 'index' int32 [B] (split frame index) and, for the
        driver stage, 'heatmaps' float32 [B, R, R, 7] in [0, 1], with B = batch_size //
        process_count.

    Raises:
        ValueError: bad stage, a batch size that does not split into whole groups per process, or
            a split with fewer frames than one batch.
    """
    if stage not in ("codebook", "driver"):
        raise ValueError(f"stage must be 'codebook' or 'driver', got {stage!r}")
    if batch_size % frames_per_group:
        raise ValueError(
            f"batch_size {batch_size} is not a multiple of frames_per_group {frames_per_group}"
        )
    groups_per_batch = batch_size // frames_per_group
    if groups_per_batch % process_count:
        raise ValueError(
            f"batch_size {batch_size} ({groups_per_batch} groups of {frames_per_group}) does not "
            f"split into whole groups over {process_count} processes: use a multiple of "
            f"{frames_per_group * process_count}"
        )
    source = frames_lib.open_split(dataset_dir, split)
    num_groups = len(source) // frames_per_group
    if num_groups < groups_per_batch and drop_remainder:
        raise ValueError(
            f"{dataset_dir}: split {split!r} has {len(source)} frames, fewer than one batch "
            f"of {batch_size} frames"
        )

    ds = grain.MapDataset.range(num_groups)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(groups_per_batch, drop_remainder=drop_remainder)  # group ids [g_global]
    ds = ds.map_with_index(ProcessSlice(process_index, process_count))
    ds = ds.map(LoadFrames(source, frames_per_group))
    ds = ds.map(ImagesToFloat(resolution))
    if stage == "driver":
        meta = frames_lib.load_meta(dataset_dir)
        landmarks = frames_lib.load_landmarks(dataset_dir, split)["landmarks"]
        render = RenderHeatmapStacks(
            landmarks, int(meta["size"]), resolution, frames_per_group, landmark_jitter, seed
        )
        ds = ds.map(render)
    it_ds = ds.map(drop_bookkeeping).to_iter_dataset(READ_OPTIONS)
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it_ds


def load_frames(source, indices, resolution: int) -> np.ndarray:
    """Frames `indices` of an `open_split` source as float32 [len(indices), R, R, 3] in [-1, 1]."""
    return np.stack([to_float_image(source[int(i)]["image"], resolution) for i in indices])
