"""Tests for vpgc_jax.data.heatmaps: exact pixels of the spec §3.3 drawer, §3.2 stack clamping."""

import numpy as np
import pytest

from vpgc_jax.data import frames, heatmaps


def _lit(canvas: np.ndarray) -> set[tuple[int, int]]:
    """(x, y) of the non-zero pixels."""
    ys, xs = np.nonzero(canvas)
    return set(zip(xs.tolist(), ys.tolist(), strict=True))


def test_draw_heatmap_hand_checked_16px():
    # Every part collapses to pixel (1, 1) except the left eye (closed loop) and left brow (open).
    pts = np.full((68, 2), [1.99, 1.5], np.float32)  # int() truncates to (1, 1)
    pts[36] = [10.9, 2.2]  # -> (10, 2)
    pts[37:41] = [14.0, 2.0]
    pts[41] = [14.5, 6.7]  # -> (14, 6)
    pts[17] = [10.0, 10.0]
    pts[18:21] = [14.0, 10.0]
    pts[21] = [14.0, 14.0]
    hm = heatmaps.draw_heatmap(pts, 16, thickness=1)
    assert hm.shape == (16, 16) and hm.dtype == np.uint8
    assert set(np.unique(hm).tolist()) == {0, 255}
    expected = {(1, 1)}
    expected |= {(x, 2) for x in range(10, 15)} | {(14, y) for y in range(2, 7)}  # eye edges
    expected |= {(10, 2), (11, 3), (12, 4), (13, 5), (14, 6)}  # closing edge 41 -> 36
    expected |= {(x, 10) for x in range(10, 15)} | {(14, y) for y in range(10, 15)}  # brow, open
    assert _lit(hm) == expected


def test_draw_heatmap_thickness_scales_with_size():
    assert [heatmaps.default_thickness(s) for s in (16, 128, 256, 512, 1024)] == [1, 1, 1, 2, 4]
    pts = np.zeros((68, 2), np.float32)
    pts[0:17, 0] = np.linspace(100, 400, 17)
    pts[0:17, 1] = 300
    np.testing.assert_array_equal(
        heatmaps.draw_heatmap(pts, 512), heatmaps.draw_heatmap(pts, 512, thickness=2)
    )
    assert (heatmaps.draw_heatmap(pts, 512)[:, 200] > 0).sum() > 1  # 2 px wide horizontal jaw


def test_draw_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[68, 2\]"):
        heatmaps.draw_heatmap(np.zeros((67, 2)), 16)
    with pytest.raises(ValueError, match="non-finite"):
        heatmaps.draw_heatmap(np.full((68, 2), np.nan), 16)


def _sequence(n: int) -> np.ndarray:
    """[n, 68, 2]: frame k is every point at pixel (2k + 1, 3), a single lit pixel per heatmap."""
    seq = np.zeros((n, 68, 2), np.float32)
    seq[..., 0] = 2 * np.arange(n)[:, None] + 1
    seq[..., 1] = 3
    return seq


@pytest.mark.parametrize(
    "t, frames_expected",
    [(0, [0, 0, 0, 0, 1, 2, 3]), (2, [0, 0, 1, 2, 3, 4, 4]), (4, [1, 2, 3, 4, 4, 4, 4])],
)
def test_heatmap_stack_clamps_at_the_edges(t, frames_expected):
    stack = heatmaps.heatmap_stack(_sequence(5), t, 13)
    assert stack.shape == (13, 13, 7) and stack.dtype == np.float32
    assert set(np.unique(stack).tolist()) == {0.0, 1.0}
    for channel, k in enumerate(frames_expected):
        assert _lit(stack[..., channel]) == {(2 * k + 1, 3)}, channel
    assert heatmaps.stack_indices(t, 5) == frames_expected


def test_heatmap_stack_rejects_out_of_range():
    with pytest.raises(IndexError):
        heatmaps.heatmap_stack(_sequence(5), 5, 13)


def test_real_landmark_heatmap_density(tiny_dataset):
    # The reference's shipped 512 px heatmaps light ~1.9 % of pixels (spec §3.3).
    lm = frames.load_landmarks(tiny_dataset, "train")["landmarks"]
    scale = 512 / 128
    hm = heatmaps.draw_heatmap((lm[0] + 0.5) * scale - 0.5, 512)
    assert 0.005 < (hm > 127).mean() < 0.04
