"""Tests for the taming autoencoder, VQModel, discriminator and loss helpers (tiny configs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import codebook as codebook_config
from vpgc_jax import runs
from vpgc_jax.losses.vqgan import adaptive_weight, hinge_d_loss, hinge_g_loss, vq_loss
from vpgc_jax.models.codebook import GridCodebook
from vpgc_jax.models.discriminator import MultiscaleDiscriminator
from vpgc_jax.models.taming import AttnBlock, Decoder, Downsample, Encoder, Upsample
from vpgc_jax.models.vqgan import VQModel, make_vqmodel

TINY = dict(ch=32, ch_mult=(1, 3), num_res_blocks=1, attn_resolutions=(8,), z_channels=12)


def n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def shapes(module, *args, **kw):
    return jax.eval_shape(lambda k: module.init(k, *args, **kw), jax.random.key(0))


def paper_model(variant: str = "paper512") -> VQModel:
    return runs.build_model(codebook_config.get_config(variant))


def test_paper_parameter_counts():
    p = shapes(paper_model(), jnp.zeros((1, 512, 512, 3)))["params"]
    assert n_params(p["encoder"]) == 26_648_704
    assert n_params(p["decoder"]) == 38_988_739
    assert n_params(p["quant_conv"]) == 65_792
    assert n_params(p["post_quant_conv"]) == 65_792
    assert n_params(p["quantize"]) == 262_144
    assert p["quantize"]["embedding"].shape == (16, 16, 256, 4)
    assert n_params(p) == 66_031_171
    heat = Encoder(in_channels=7, ch_mult=(1, 1, 2, 2, 4, 4))
    assert n_params(shapes(heat, jnp.zeros((1, 512, 512, 7)))["params"]) == 10_583_424
    pv = shapes(paper_model("vanilla"), jnp.zeros((1, 512, 512, 3)))["params"]
    assert pv["quantize"]["embedding"].shape == (1024, 256) and n_params(pv) == 66_031_171


def test_param_tree_mirrors_pytorch_names():
    p = shapes(paper_model(), jnp.zeros((1, 512, 512, 3)))["params"]
    enc, dec = p["encoder"], p["decoder"]
    assert set(enc) == {"conv_in", "mid", "norm_out", "conv_out"} | {f"down_{i}" for i in range(6)}
    assert set(enc["down_2"]) == {"block_0", "block_1", "downsample"}
    assert set(enc["down_2"]["block_0"]) == {"norm1", "conv1", "norm2", "conv2", "nin_shortcut"}
    assert set(enc["down_5"]) == {"block_0", "attn_0", "block_1", "attn_1"}
    assert set(enc["mid"]) == {"block_1", "attn_1", "block_2"}
    assert set(enc["mid"]["attn_1"]) == {"norm", "q", "k", "v", "proj_out"}
    assert enc["mid"]["attn_1"]["q"]["kernel"].shape == (1, 1, 512, 512)
    assert enc["down_0"]["downsample"]["conv"]["kernel"].shape == (3, 3, 64, 64)
    assert set(dec["up_5"]) == {f"block_{j}" for j in range(3)} | {
        f"attn_{j}" for j in range(3)
    } | {"upsample"}
    assert "upsample" not in dec["up_0"]
    assert dec["conv_out"]["kernel"].shape == (3, 3, 64, 3)  # get_last_layer()
    assert p["quant_conv"]["kernel"].shape == (1, 1, 256, 256)


def test_torch_default_init_bounds():
    enc = Encoder(in_channels=5, **TINY, resolution=16)
    p = jax.jit(enc.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 5)))["params"]
    k, b = p["conv_in"]["kernel"], p["conv_in"]["bias"]
    bound = (5 * 9) ** -0.5
    assert float(jnp.abs(k).max()) <= bound and float(jnp.abs(k).max()) > 0.8 * bound
    assert float(jnp.abs(b).max()) <= bound and float(jnp.abs(b).max()) > 0.5 * bound
    np.testing.assert_allclose(float(jnp.std(k)), bound / np.sqrt(3), rtol=0.15)
    np.testing.assert_array_equal(p["norm_out"]["scale"], 1.0)


def test_encoder_decoder_shapes_non_square():
    x = jax.random.normal(jax.random.key(0), (2, 16, 24, 5))
    enc = Encoder(in_channels=5, resolution=16, **TINY)
    z, _ = jax.eval_shape(enc.init_with_output, jax.random.key(1), x)
    assert z.shape == (2, 8, 12, 12) and z.dtype == jnp.float32
    dec = Decoder(out_ch=7, resolution=16, **TINY)
    y, v = jax.eval_shape(dec.init_with_output, jax.random.key(2), z)
    assert y.shape == (2, 16, 24, 7)
    assert set(v["params"]["up_1"]) == {"block_0", "attn_0", "block_1", "attn_1", "upsample"}
    with pytest.raises(ValueError):
        jax.eval_shape(enc.init, jax.random.key(1), x[..., :3])


def test_bf16_compute_keeps_float32_params():
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
    enc = Encoder(resolution=16, dtype=jnp.bfloat16, **TINY)
    z, v = jax.jit(enc.init_with_output)(jax.random.key(1), x)
    assert z.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(v))


def test_attn_block_matches_numpy():
    c = 32
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, c))
    y, v = jax.jit(AttnBlock(c).init_with_output)(jax.random.key(1), x)
    p = jax.tree_util.tree_map(np.asarray, v["params"])
    xn = np.asarray(x, np.float64)
    g = xn.reshape(2, 15, 32, 1)  # 32 groups of 1 channel
    mu, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
    hn = ((g - mu) / np.sqrt(var + 1e-6)).reshape(2, 15, c) * p["norm"]["scale"] + p["norm"]["bias"]

    def lin(name, a):
        return a @ p[name]["kernel"][0, 0] + p[name]["bias"]

    q, k, vv = lin("q", hn), lin("k", hn), lin("v", hn)
    logits = np.einsum("bic,bjc->bij", q, k) * c**-0.5
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = xn + lin("proj_out", np.einsum("bij,bjc->bic", w, vv)).reshape(xn.shape)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4)


def test_down_and_upsample_semantics():
    x = jax.random.normal(jax.random.key(0), (1, 7, 9, 32))
    y, v = jax.jit(Downsample(32).init_with_output)(jax.random.key(1), x)
    assert y.shape == (1, 3, 4, 32)
    kern, bias = (
        np.asarray(a) for a in (v["params"]["conv"]["kernel"], v["params"]["conv"]["bias"])
    )
    xp = np.pad(np.asarray(x), ((0, 0), (0, 1), (0, 1), (0, 0)))  # right/bottom only
    want = np.einsum("hwc,hwco->o", xp[0, 4:7, 6:9], kern) + bias  # output pixel (2, 3)
    np.testing.assert_allclose(np.asarray(y[0, 2, 3]), want, rtol=1e-4, atol=1e-4)
    u, vu = jax.jit(Upsample(32).init_with_output)(jax.random.key(2), x)
    assert u.shape == (1, 14, 18, 32)
    kern = np.asarray(vu["params"]["conv"]["kernel"])
    xr = np.repeat(np.repeat(np.asarray(x), 2, 1), 2, 2)
    want = np.einsum("hwc,hwco->o", xr[0, 4:7, 6:9], kern) + np.asarray(
        vu["params"]["conv"]["bias"]
    )
    np.testing.assert_allclose(np.asarray(u[0, 5, 7]), want, rtol=1e-4, atol=1e-4)


TINY_CODEBOOK = dict(K_c=5, d_c=4, r=3)


@pytest.mark.parametrize(
    "cb",
    [
        dict(kind="grid", lookup="soft"),
        dict(kind="grid", lookup="hard", window="knn"),
        dict(kind="vanilla", num_codes=13),
    ],
)
def test_vqmodel_tiny_roundtrip(cb):
    m = make_vqmodel(TINY, {**TINY_CODEBOOK, **cb}, embed_dim=24, resolution=16)
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
    (x_rec, aux), v = m.init_with_output(jax.random.key(1), x)
    assert x_rec.shape == x.shape
    assert set(v["params"]) == {"encoder", "quant_conv", "quantize", "post_quant_conv", "decoder"}
    assert v["params"]["quant_conv"]["kernel"].shape == (1, 1, 12, 24)  # z_channels -> embed_dim
    assert {"codebook_loss", "commitment_loss"} <= set(aux)
    z = m.apply(v, x, method=VQModel.encode)
    assert z.shape == (2, 8, 8, 12)
    np.testing.assert_allclose(m.apply(v, z, method=VQModel.decode_features), x_rec, atol=1e-5)
    if cb["kind"] == "grid":
        assert m.apply(v, method=VQModel.prior).shape == (8, 8, 4)
        assert v["params"]["quantize"]["embedding"].shape == (8, 8, 5, 4)  # grid from the encoder
    else:
        assert aux["indices"].shape == (2, 8, 8)
    with pytest.raises(ValueError, match="codebook kind"):
        make_vqmodel(TINY, {**TINY_CODEBOOK, "kind": "lattice"}, embed_dim=24, resolution=16)


def test_vqmodel_on_a_non_square_grid_keeps_rows_and_columns():
    """16 x 24 images -> an 8 x 12 latent grid: every reshape keeps h and w apart."""
    sq = make_vqmodel(TINY, {**TINY_CODEBOOK, "kind": "grid"}, embed_dim=24, resolution=16)
    m = VQModel(sq.encoder, sq.decoder, GridCodebook(8, 12, **TINY_CODEBOOK), embed_dim=24)
    x = jax.random.uniform(jax.random.key(0), (2, 16, 24, 3), minval=-1, maxval=1)
    (x_rec, aux), v = m.init_with_output(jax.random.key(1), x)
    assert x_rec.shape == (2, 16, 24, 3) and v["params"]["quantize"]["embedding"].shape[:2] == (
        8,
        12,
    )
    assert m.apply(v, method=VQModel.prior).shape == (8, 12, 4)
    assert np.isfinite(float(aux["entropy"]))
    with pytest.raises(ValueError, match=r"GridCodebook expects \[B, 8, 12, C\]"):
        jax.eval_shape(m.apply, v, jnp.swapaxes(x, 1, 2))  # 24 x 16 images: a 12 x 8 grid


def test_vqmodel_grid_size_mismatch_raises():
    sq = make_vqmodel(TINY, {**TINY_CODEBOOK, "kind": "grid"}, embed_dim=24, resolution=16)
    m = VQModel(sq.encoder, sq.decoder, GridCodebook(16, 16, **TINY_CODEBOOK), embed_dim=24)
    with pytest.raises(ValueError, match=r"GridCodebook expects \[B, 16, 16, C\]"):
        jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_discriminator_shapes_counts_and_batch_stats():
    d = MultiscaleDiscriminator()
    v = shapes(d, jnp.zeros((1, 512, 512, 3)), train=False)
    assert n_params(v["params"]) == 1_326_722 == 2 * 663_361
    assert set(v["params"]["discriminator_1"]) == {"model0", "model1", "model2", "model3"}
    assert "bias" not in v["params"]["discriminator_0"]["model1"]["conv"]
    out = jax.eval_shape(lambda v, x: d.apply(v, x, train=False), v, jnp.zeros((2, 512, 512, 3)))
    assert [o.shape for o in out] == [(2, 131, 131, 1), (2, 67, 67, 1)]

    small = MultiscaleDiscriminator(ndf=8)
    x = jax.random.normal(jax.random.key(0), (3, 64, 64, 3))
    variables = jax.jit(lambda k, x: small.init(k, x, train=False))(jax.random.key(1), x)
    outs, upd = jax.jit(lambda v, x: small.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    assert [o.shape for o in outs] == [(3, 19, 19, 1), (3, 11, 11, 1)]  # 64->33->17->18->19
    before = variables["batch_stats"]["discriminator_0"]["model1"]["bn"]["mean"]
    after = upd["batch_stats"]["discriminator_0"]["model1"]["bn"]["mean"]
    assert float(jnp.abs(after - before).max()) > 0


def test_hinge_and_adaptive_weight():
    real = [jnp.array([[2.0, 0.5]]), jnp.array([0.0])]
    fake = [jnp.array([[-2.0, 0.5]]), jnp.array([1.0])]
    # real: scale0 mean(relu(1-[2,.5])) = .25, scale1 = 1 -> .625; fake: (.75, 2) -> 1.375
    np.testing.assert_allclose(hinge_d_loss(real, fake), 0.5 * (0.625 + 1.375))
    np.testing.assert_allclose(hinge_g_loss(fake), -(-0.75 + 1.0) / 2)
    np.testing.assert_allclose(hinge_g_loss(fake[0]), 0.75)
    g1, g2 = jnp.full((3, 3, 4, 3), 2.0), jnp.full((3, 3, 4, 3), 0.5)
    s = np.sqrt(108.0)  # ||ones[3,3,4,3]||
    np.testing.assert_allclose(adaptive_weight(g1, g2), 0.8 * 2 * s / (0.5 * s + 1e-4), rtol=1e-5)
    np.testing.assert_allclose(adaptive_weight(g1, 0 * g2), 0.8 * 1e4)
    aux = {"codebook_loss": jnp.array(2.0), "commitment_loss": jnp.array(1.0)}
    np.testing.assert_allclose(vq_loss(aux, beta=0.25, legacy=True), 1.5)  # reference
    np.testing.assert_allclose(vq_loss(aux, beta=1.0, legacy=False), 3.0)  # paper Eq. 2
    np.testing.assert_allclose(vq_loss(aux, beta=0.25, legacy=False), 2.25)  # taming VQGAN
    np.testing.assert_allclose(vq_loss(aux, beta=1.0, legacy=False, codebook_weight=2.0), 6.0)
