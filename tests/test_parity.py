"""Numerical parity on real inputs at 256 px (issue 15): vpgc_jax float32 against a float64 run
(our PyTorch module in float64, which matches the released code in float64 to ~1e-8) and against
our PyTorch module in float32, for both driver variants.

The driver is the spec's (heatmap encoder width 64, 5 downsamplings); frames are rendered through
a narrower stage-1 decoder of the same depth (`parity.LIGHT_STAGE1`) to keep the test short.
Heatmaps are drawn from the sample clip's real landmarks (scaled from the 128 px tiny dataset to
256 px): sparse inputs are where a one-pass float32 variance loses precision. Measured here with the
stable GroupNorm: features 5.9e-7 (reference) and 4.6e-7 (paper) relative L2 from float64, PyTorch's
float32 6.2e-7 / 3.7e-7; frames 7.0e-5 / 4.1e-5 max abs. How far flax's one-pass GroupNorm
strays depends on how close a group's channel biases happen to be: 7.2e-4 from float64 for one
draw of weights (the reference driver, 256 px), 3.7e-6 for the draw used here; the GroupNorm test
at the end checks that failure mode directly.
"""

import pytest

pytest.importorskip("torch")

from vpgc_jax.interop import parity  # noqa: E402

FEATURES_RTOL = 1e-4  # relative L2 of F_hat (issue 15)
FRAME_ATOL = 1e-3  # max abs on [-1, 1] of the rendered frame (issue 15)


@pytest.fixture(scope="module")
def heatmaps_256(tiny_dataset):
    return parity.real_heatmaps(str(tiny_dataset), 256, num=2)


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_stage2_float32_matches_float64_and_pytorch_on_real_heatmaps(variant, heatmaps_256):
    heat = heatmaps_256  # the reference driver attends over both frames jointly
    assert 0.0 < heat.mean() < 0.1  # sparse line drawings, as in training
    r = parity.driver_parity(variant, heat, light_stage1=True)
    print(r)
    assert r.features_jax32 < FEATURES_RTOL, r
    assert r.features_jax32_vs_torch32 < FEATURES_RTOL, r
    assert r.frame_jax32 < FRAME_ATOL, r
    assert r.frame_jax32_vs_torch32 < FRAME_ATOL, r
    # The float64 truth is meaningful: PyTorch's own float32 sits as close to it.
    assert r.features_torch32 < FEATURES_RTOL, r


def test_group_norm_is_float32_accurate_on_sparse_real_heatmaps(tiny_dataset):
    """The first GroupNorm of the heatmap encoder sees a near-constant map: the conv's bias on the
    background, plus the weights along the landmark lines. Where a group's channel biases are close
    its variance is tiny next to its mean square, and a one-pass E[x^2] - E[x]^2 cancels (flax's
    default: max relative error 3.4e-3 here); the two-pass, two-stage sums stay at float32 noise
    (2.8e-6 here)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vpgc_jax.models import taming

    heat = parity.real_heatmaps(str(tiny_dataset), 256, num=2)  # [2, 256, 256, 7]
    rng = np.random.default_rng(0)
    w = rng.normal(0.0, 0.1, (7, 64))
    b = np.repeat(rng.uniform(-0.5, 0.5, 32), 2) + rng.normal(0.0, 1e-3, 64)  # close pairs
    x = (heat.astype(np.float64) @ w + b).astype(np.float32)  # [2, 256, 256, 64]

    xg = x.astype(np.float64).reshape(2, 256, 256, 32, 2)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    truth = ((xg - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)

    def rel_max(module) -> float:
        y = module.apply(module.init(jax.random.PRNGKey(0), x), jnp.asarray(x))
        return float(np.max(np.abs(np.asarray(y, np.float64) - truth)) / np.max(np.abs(truth)))

    ours = rel_max(taming.GroupNorm())
    flax_default = rel_max(nn.GroupNorm(num_groups=32, epsilon=1e-6))
    print(f"GroupNorm max relative error: ours {ours:.1e}, flax one-pass {flax_default:.1e}")
    assert ours < 1e-5
    assert flax_default > 100 * ours  # the failure this guards against is real on these inputs
