"""PriorGuidedDriver (stage 2, paper Sec. 3.3; spec §4): counts, shapes, prior, ablations, modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import codebook as codebook_config
from configs import driver as driver_config
from vpgc_jax import runs
from vpgc_jax.models.driver import MLP, PriorGuidedDriver, make_driver

# Tiny: 32 px heatmaps, one downsampling -> 16x16 grid, width 16.
TINY_ENCODER = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
TINY_TRANSFORMER = dict(depth=2, heads=2, dim_head=8, mlp_dim=32, dropout=0.1)


def tiny(encoder=None, **fields) -> PriorGuidedDriver:
    """The tiny driver (`make_driver`), `fields` overriding its PriorGuidedDriver fields."""
    return make_driver(
        {**TINY_ENCODER, **(encoder or {})},
        TINY_TRANSFORMER,
        dim=16,
        d_c=4,
        resolution=32,
        **fields,
    )


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def random_inputs(b: int = 4, seed: int = 0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    heatmaps = (jax.random.uniform(k1, (b, 32, 32, 7)) > 0.9).astype(jnp.float32)
    prior = jax.random.normal(k2, (16, 16, 4))
    return heatmaps, prior


def init(model, heatmaps, prior):
    return model.init(jax.random.PRNGKey(1), heatmaps, prior)


def test_reference_parameter_counts_equal_the_reference():
    """Spec §4.1-4.2: heatmap encoder 10,583,424; PriorTrans 1,976,832 (paper shapes, no alloc)."""
    model = runs.build_driver(
        driver_config.get_config("reference"), codebook_config.get_config("paper512")
    )
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0), jnp.zeros((4, 512, 512, 7)), jnp.zeros((16, 16, 4))
        )
    )["params"]
    assert count(shapes["heatmap_encoder"]) == 10_583_424
    assert count({k: v for k, v in shapes.items() if k != "heatmap_encoder"}) == 1_976_832
    assert shapes["mlp_head"]["layer_0"]["kernel"].shape == (260, 256)
    assert shapes["transformer"]["layers_3_0"]["to_qkv"]["kernel"].shape == (256, 768)
    assert "bias" not in shapes["transformer"]["layers_3_0"]["to_qkv"]


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_output_shape_and_eval_is_deterministic(variant):
    model = tiny(variant=variant)
    heatmaps, prior = random_inputs()
    variables = init(model, heatmaps, prior)
    out = model.apply(variables, heatmaps, prior)
    assert out.shape == (4, 16, 16, 16) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    again = model.apply(variables, heatmaps, prior, rngs={"dropout": jax.random.PRNGKey(7)})
    np.testing.assert_array_equal(out, again)  # eval: no dropout whatever the rng
    train = [
        model.apply(variables, heatmaps, prior, train=True, rngs={"dropout": jax.random.PRNGKey(s)})
        for s in (1, 2)
    ]
    assert not np.allclose(train[0], train[1])  # dropout 0.1 acts in training


def test_texture_prior_feeds_the_output_only_when_enabled():
    heatmaps, prior = random_inputs()
    other = prior + 1.0
    with_p = tiny()
    v = init(with_p, heatmaps, prior)
    assert not np.allclose(with_p.apply(v, heatmaps, prior), with_p.apply(v, heatmaps, other))
    without = tiny(use_texture_prior=False)
    v = init(without, heatmaps, None)
    np.testing.assert_array_equal(
        without.apply(v, heatmaps, None), without.apply(v, heatmaps, other)
    )
    with pytest.raises(ValueError, match="prior P of shape"):
        with_p.apply(init(with_p, heatmaps, prior), heatmaps, prior[:8])


@pytest.mark.parametrize(
    "variant, flags, branches, first_in",
    [
        ("paper", dict(use_texture_prior=False, use_global_feature=False), {"mlp_f"}, 16),
        ("paper", dict(use_texture_prior=True, use_global_feature=False), {"mlp_f"}, 20),
        ("paper", dict(use_texture_prior=True, use_global_feature=True), {"mlp_f", "mlp_g"}, 20),
        ("reference", dict(use_global_feature=False), {"mlp_head"}, 20),
        ("reference", dict(use_global_feature=True), {"mlp_head", "mlp_hair"}, 20),
    ],
)
def test_ablation_flags_change_the_parameter_tree(variant, flags, branches, first_in):
    """Paper Table 5 rows: Baseline (no P, no F_g), w P, Full model."""
    model = tiny(variant=variant, **flags)
    heatmaps, prior = random_inputs()
    params = init(model, heatmaps, prior)["params"]
    assert set(params) == {"heatmap_encoder", "transformer"} | branches
    first = "mlp_f" if variant == "paper" else "mlp_head"
    assert params[first]["layer_0"]["kernel"].shape == (first_in, 16)
    if "mlp_g" in params:  # F_hat = MLP([F ⊕ F_g]): twice the width in
        assert params["mlp_g"]["layer_0"]["kernel"].shape == (32, 16)


def test_pos_embedding_flag_adds_one_table():
    model = tiny(pos_embedding=True)
    params = init(model, *random_inputs())["params"]
    assert params["pos_embedding"].shape == (256, 16)


def test_reference_attends_across_its_frame_group_and_paper_per_frame():
    """The reference transformer mixes the 4 frames of a group (spec §4.2); the paper's does not."""
    heatmaps, prior = random_inputs(8)
    changed = heatmaps.at[1].set(1.0 - heatmaps[1])  # alter frame 1 of the first group only
    for variant, mixes in (("reference", True), ("paper", False)):
        model = tiny(variant=variant)
        v = init(model, heatmaps, prior)
        a, b = model.apply(v, heatmaps, prior), model.apply(v, changed, prior)
        assert np.allclose(a[4:], b[4:], atol=1e-6)  # the second group never sees frame 1
        assert np.allclose(a[0], b[0], atol=1e-6) != mixes


def test_bad_inputs_raise():
    heatmaps, prior = random_inputs()
    ref = tiny(variant="reference")
    v = init(ref, heatmaps, prior)
    with pytest.raises(ValueError, match="groups of 4 frames"):
        ref.apply(v, heatmaps[:3], prior)
    with pytest.raises(ValueError, match="expects 7 input channels"):
        ref.apply(v, heatmaps[..., :3], prior)
    bad_grid = tiny(encoder={"ch_mult": (1, 2, 2)})  # an 8x8 grid against a 16x16 prior
    with pytest.raises(ValueError, match=r"prior P of shape \(8, 8, 4\), got \(16, 16, 4\)"):
        init(bad_grid, heatmaps, prior)
    with pytest.raises(ValueError, match="variant must be"):
        init(tiny(variant="vit"), heatmaps, prior)


def test_non_square_grid_keeps_rows_and_columns():
    """32 x 48 stacks -> a 16 x 24 grid: the prior, tokens and F_hat keep h and w apart."""
    heatmaps, _ = random_inputs()
    wide = jnp.concatenate([heatmaps, heatmaps[:, :, :16]], axis=2)  # [4, 32, 48, 7]
    prior = jax.random.normal(jax.random.PRNGKey(3), (16, 24, 4))
    for variant in ("paper", "reference"):
        model = tiny(variant=variant, pos_embedding=True)
        v = init(model, wide, prior)
        assert v["params"]["pos_embedding"].shape == (16 * 24, 16)
        assert model.apply(v, wide, prior).shape == (4, 16, 24, 16)
        with pytest.raises(ValueError, match="prior P of shape"):
            model.apply(v, wide, jnp.swapaxes(prior, 0, 1))  # [24, 16, 4]: rows for columns


def test_config_variants():
    ref = driver_config.get_config("reference")
    assert (ref.model.variant, ref.model.transformer.depth, ref.loss.temporal_weight) == (
        "reference",
        4,
        10.0,
    )
    base = driver_config.get_config("cpu128+baseline")
    assert not base.model.use_texture_prior and not base.model.use_global_feature
    assert base.model.encoder.ch_mult == (1, 1, 2, 4) and base.loss.feat_weight == 10.0
    for arg, cb_arg in (("paper512", "paper512"), ("cpu128", "cpu128"), ("reference", "reference")):
        driver = runs.build_driver(
            driver_config.get_config(arg), codebook_config.get_config(cb_arg)
        )
        assert driver.grid == (16, 16) and driver.dim == (64 if cb_arg == "cpu128" else 256)
    wrong = driver_config.get_config("cpu128")
    wrong.model.encoder.ch_mult = (1, 2)  # 1 downsampling of 128 px: 64x64, stage 1 has 16x16
    with pytest.raises(ValueError, match="64x64 grid, the stage-1 model a 16x16 one"):
        runs.build_driver(wrong, codebook_config.get_config("cpu128"))
    with pytest.raises(ValueError, match="unknown driver config variant"):
        driver_config.get_config("paper1024")


def test_gelu_mlps_keep_the_input_where_dead_relus_drop_it():
    """The failure `mlp_activation='gelu'` exists for (RESULTS.md, "A driver that ignores its
    input"): once every ReLU unit of an MLP layer is negative for all inputs, the MLP's output no
    longer depends on its input and no gradient passes it; GELU units still pass both."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 20))
    params = MLP(16).init(jax.random.PRNGKey(1), x)["params"]
    # Every unit of the second layer below zero for all inputs (weights N(0, 0.02), bias -2).
    params["layer_2"]["bias"] = jnp.full_like(params["layer_2"]["bias"], -2.0)
    for activation, alive in (("relu", False), ("gelu", True)):
        mlp = MLP(16, activation)

        def f(x, mlp=mlp):
            return mlp.apply({"params": params}, x)

        change = float(jnp.abs(f(x) - f(-x)).max())
        grad = float(jnp.abs(jax.grad(lambda x, f=f: jnp.sum(f(x) ** 2))(x)).max())
        # Measured: ReLU exactly 0 and 0; GELU about 1e-3 and 1e-5.
        assert (change > 1e-6 and grad > 1e-8) if alive else (change == 0.0 and grad == 0.0)
    # The driver's MLPs take the field: same parameters, other outputs.
    heatmaps, prior = random_inputs(b=2)
    relu, gelu = tiny(), tiny(mlp_activation="gelu")
    variables = init(relu, heatmaps, prior)
    out_relu = jax.jit(relu.apply)(variables, heatmaps, prior)
    out_gelu = jax.jit(gelu.apply)(variables, heatmaps, prior)
    # (At init the outputs are about 3e-7: every layer's weights are N(0, 0.02).)
    assert jnp.abs(out_relu - out_gelu).max() > 0.5 * jnp.abs(out_relu).max()
