"""Mouth and eye region metrics (eval/regions.py) on real frames of the sample clip."""

import cv2
import jax
import numpy as np
import pytest

from eval import regions
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.losses import lpips as lpips_lib


@pytest.fixture(scope="module")
def real(tiny_dataset):
    """Six test frames (uint8, 128 px) of the macron clip and their landmarks."""
    src = frames_lib.open_split(str(tiny_dataset), "test")
    items = [src[i] for i in range(0, 18, 3)]
    return (
        np.stack([it["image"] for it in items]),
        np.stack([it["landmarks"] for it in items]),
    )


@pytest.fixture(scope="module")
def lpips_fn():
    params = lpips_lib.load_lpips_params()
    f = jax.jit(lpips_lib.lpips)

    def score(a, b):
        return np.asarray(f(params, a / 127.5 - 1.0, b / 127.5 - 1.0))

    return score


def test_boxes_hold_the_region_and_stay_inside_the_frame(real):
    frames, landmarks = real
    size = frames.shape[1]
    for lm in landmarks:
        for region, (first, last) in regions.REGIONS.items():
            x0, y0, x1, y1 = regions.region_box(lm, region, size)
            assert x1 - x0 == y1 - y0 >= 8 and 0 <= x0 and 0 <= y0 and x1 <= size and y1 <= size
            pts = lm[first:last]
            assert (pts[:, 0] >= x0).all() and (pts[:, 0] <= x1).all()
            assert (pts[:, 1] >= y0).all() and (pts[:, 1] <= y1).all()
    # A box near the border is shifted inside, keeping its side.
    corner = np.full((68, 2), 60.0)
    corner[48:68] = np.linspace(0.0, 10.0, 20)[:, None]  # a mouth in the top-left corner
    box = regions.region_box(corner, "mouth", size)
    assert box[0] == 0 and box[1] == 0 and box[2] - box[0] == box[3] - box[1]


def test_blur_lowers_sharpness_and_scores(real, lpips_fn):
    frames, landmarks = real
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in frames])
    same = regions.summarize(regions.region_scores(frames, frames, landmarks, lpips_fn))
    blur = regions.summarize(regions.region_scores(frames, blurred, landmarks, lpips_fn))
    for region in regions.REGIONS:
        assert same[f"{region}_sharpness"] == pytest.approx(1.0)
        assert same[f"{region}_psnr"] == 100.0 and same[f"{region}_lpips"] < 1e-6
        assert blur[f"{region}_sharpness"] < 0.6 * same[f"{region}_sharpness"]
        assert blur[f"{region}_lpips"] > 0.05
        assert blur[f"{region}_psnr"] < 40.0


def test_a_wrong_mouth_scores_worse_than_a_right_one(real, lpips_fn):
    """Another frame's mouth (real, sharp, but a different state) is penalised in the box."""
    frames, landmarks = real
    shifted = np.roll(frames, 1, axis=0)
    s = regions.summarize(regions.region_scores(frames, shifted, landmarks, lpips_fn))
    assert s["mouth_lpips"] > 0.0 and s["mouth_psnr"] < 100.0
    assert 0.5 < s["mouth_sharpness"] < 2.0  # real frames are about equally sharp
