"""grain input pipelines on a real prepared dataset: shapes, groups, clamping, determinism."""

import time

import numpy as np
import pytest

from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib
from vpgc_jax.data import pipeline


def test_codebook_batches_are_consecutive_groups_in_range(tiny_dataset):
    ds = pipeline.make_dataset(
        tiny_dataset,
        "train",
        stage="codebook",
        batch_size=8,
        resolution=48,
        frames_per_group=4,
        seed=3,
    )
    batch = next(iter(ds))
    assert batch["image"].shape == (8, 48, 48, 3)
    assert batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
    for g in batch["index"].reshape(2, 4):
        assert g[0] % 4 == 0 and np.array_equal(g, g[0] + np.arange(4))
    # The image really is that frame, resized.
    source = frames_lib.open_split(tiny_dataset, "train")
    expected = pipeline.to_float_image(source[int(batch["index"][5])]["image"], 48)
    np.testing.assert_array_equal(batch["image"][5], expected)


def test_independent_frames_and_determinism(tiny_dataset):
    def first_indices(seed):
        ds = pipeline.make_dataset(
            tiny_dataset,
            "train",
            stage="codebook",
            batch_size=5,
            resolution=32,
            frames_per_group=1,
            seed=seed,
        )
        it = iter(ds)
        return np.concatenate([next(it)["index"] for _ in range(3)])

    a, b, c = first_indices(0), first_indices(0), first_indices(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(set(a.tolist())) == len(a)  # one epoch's shuffle has no repeats in 15 of 70 frames


def test_iterator_state_resumes_exactly(tiny_dataset):
    ds = pipeline.make_dataset(
        tiny_dataset, "train", stage="codebook", batch_size=4, resolution=32, seed=7
    )
    it = iter(ds)
    for _ in range(20):  # past one epoch of 17 groups: repeat + reshuffle are part of the state
        next(it)
    state = it.get_state()
    want = [next(it)["index"] for _ in range(3)]
    it2 = iter(ds)
    it2.set_state(state)
    got = [next(it2)["index"] for _ in range(3)]
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)


def test_driver_heatmap_stacks_clamp_at_split_ends(tiny_dataset):
    meta = frames_lib.load_meta(tiny_dataset)
    n_test = meta["test_frames"]
    ds = pipeline.make_dataset(
        tiny_dataset,
        "test",
        stage="driver",
        batch_size=4,
        resolution=64,
        shuffle=False,
        repeat=False,
        drop_remainder=True,
    )
    batches = list(ds)
    assert len(batches) == n_test // 4
    first = batches[0]
    assert first["heatmaps"].shape == (4, 64, 64, 7) and first["heatmaps"].dtype == np.float32
    assert set(np.unique(first["heatmaps"])) <= {0.0, 1.0}
    lms = frames_lib.load_landmarks(tiny_dataset, "test")["landmarks"] * (64 / meta["size"])
    # Frame 0: channels t-3..t-1 are clamped to frame 0, so channels 0..3 are the same heatmap.
    want0 = heatmaps_lib.draw_heatmap(lms[0], 64).astype(np.float32) / 255
    for ch in range(4):
        np.testing.assert_array_equal(first["heatmaps"][0, ..., ch], want0)
    np.testing.assert_array_equal(
        first["heatmaps"][0, ..., 4], heatmaps_lib.draw_heatmap(lms[1], 64).astype(np.float32) / 255
    )
    last = batches[-1]
    t = int(last["index"][-1])
    assert t == n_test - 1
    want_last = heatmaps_lib.draw_heatmap(lms[t], 64).astype(np.float32) / 255
    for ch in range(3, 7):
        np.testing.assert_array_equal(last["heatmaps"][-1, ..., ch], want_last)


def test_landmark_jitter_scales_about_box_centre():
    pts = np.array([[10.0, 10.0], [30.0, 50.0], [20.0, 30.0]])
    out = pipeline.jitter_landmarks(pts, 1.05)
    np.testing.assert_allclose(out.mean(0) - pts.mean(0), 0.05 * (pts.mean(0) - [20.0, 30.0]))
    np.testing.assert_allclose(out.max(0) - out.min(0), 1.05 * (pts.max(0) - pts.min(0)))


def test_bad_arguments(tiny_dataset):
    with pytest.raises(ValueError, match="multiple of frames_per_group"):
        pipeline.make_dataset(
            tiny_dataset, "train", stage="codebook", batch_size=6, resolution=32, frames_per_group=4
        )
    with pytest.raises(ValueError, match="stage"):
        pipeline.make_dataset(tiny_dataset, "train", stage="audio", batch_size=4, resolution=32)
    with pytest.raises(ValueError, match="fewer than one batch"):
        pipeline.make_dataset(tiny_dataset, "test", stage="codebook", batch_size=40, resolution=32)


def test_driver_landmark_jitter_is_seeded(tiny_dataset):
    def first_heatmaps(jitter, seed):
        ds = pipeline.make_dataset(
            tiny_dataset,
            "train",
            stage="driver",
            batch_size=4,
            resolution=64,
            seed=seed,
            landmark_jitter=jitter,
        )
        return next(iter(ds))["heatmaps"]

    plain, a, b = first_heatmaps(0.0, 5), first_heatmaps(0.05, 5), first_heatmaps(0.05, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(plain, a)
    # Scaling about the box centre keeps the drawing's centroid in place (to a pixel or so).
    ys, xs = np.nonzero(plain[0, ..., 3])
    ys2, xs2 = np.nonzero(a[0, ..., 3])
    assert abs(xs.mean() - xs2.mean()) < 1.5 and abs(ys.mean() - ys2.mean()) < 1.5


def test_training_iterator_reads_only_a_few_batches_ahead(tiny_dataset, monkeypatch):
    """While a run compiles, its iterator buffers `READ_OPTIONS.prefetch_buffer_size` batches, not
    grain's default 500 (1.6 GiB and 28 CPU seconds in 20 s for this stage-2 pipeline at 128 px:
    benchmarks/RESULTS.md, "Input read-ahead")."""
    reads = []
    original = frames_lib.FrameSource.__getitem__

    def counted(self, index):
        reads.append(index)
        return original(self, index)

    monkeypatch.setattr(frames_lib.FrameSource, "__getitem__", counted)
    kw = dict(stage="driver", batch_size=8, resolution=32, frames_per_group=1, seed=0)
    it = iter(pipeline.make_dataset(tiny_dataset, "train", **kw))
    next(it)
    time.sleep(2.0)  # the read-ahead threads fill the buffer meanwhile
    # The batch taken, 4 buffered and up to 4 in flight on the 4 threads: at most 9 batches.
    assert 8 <= len(reads) <= 9 * 8, len(reads)
