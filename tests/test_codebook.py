"""Tests for the grid and vanilla codebooks against plain numpy loops (tiny, odd, distinct dims)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpgc_jax.models.codebook import (
    GridCodebook,
    VanillaCodebook,
    grid_lookup,
    knn_window,
    square_window,
    window_table,
)

REF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"
B, H, W, K_C, D_C, R, C = 2, 5, 6, 3, 2, 3, 6  # K_d = 3, window = 9 positions x 3 codes = 27


def naive_lookup(g, z, table, lookup):
    """Reference loop: g [h, w, K_c, d_c], z [B, h, w, C], table [h*w, R] -> z_q, indices."""
    h, w, k_c, d_c = g.shape
    b, _, _, c = z.shape
    flat = g.reshape(h * w, k_c, d_c)
    z_q = np.zeros_like(z)
    idx_out = np.zeros((b, h, w, c // d_c), np.int64)
    for bi in range(b):
        for row in range(h):
            for col in range(w):
                n = row * w + col
                codes = np.concatenate([flat[m] for m in table[n]], 0)  # [R*K_c, d_c]
                for k in range(c // d_c):
                    q = z[bi, row, col, k * d_c : (k + 1) * d_c]
                    if lookup == "soft":
                        logits = codes @ q
                        p = np.exp(logits - logits.max())
                        p /= p.sum()
                        out = p @ codes
                    else:
                        dist = ((codes - q) ** 2).sum(-1)
                        j = int(np.argmin(dist))
                        idx_out[bi, row, col, k] = j
                        out = codes[j]
                    z_q[bi, row, col, k * d_c : (k + 1) * d_c] = out
    return z_q, idx_out


def _setup(window, lookup, seed=0, **kw):
    m = GridCodebook(H, W, K_C, D_C, R, window=window, lookup=lookup, **kw)
    z = jax.random.normal(jax.random.key(seed), (B, H, W, C)) * 1.5
    variables = m.init(jax.random.key(seed + 1), z)
    return m, z, variables


def test_knn_window_matches_reference_table():
    ref = np.array(json.loads((REF / "knn_window_16.json").read_text()))
    assert ref.shape == (256, 16)
    np.testing.assert_array_equal(knn_window(16, 16, 4), ref)


def test_square_window_blocks():
    t = square_window(H, W, R)
    assert t.shape == (H * W, R * R)
    for row in range(H):
        for col in range(W):
            n = row * W + col
            r0 = min(max(row - R // 2, 0), H - R)
            c0 = min(max(col - R // 2, 0), W - R)
            want = [(r0 + i) * W + c0 + j for i in range(R) for j in range(R)]
            np.testing.assert_array_equal(t[n], want)
            assert n in t[n]
    # Even r: rows u-2..u+1 for an interior position at 16x16, r=4.
    t16 = square_window(16, 16, 4)
    np.testing.assert_array_equal(
        t16[8 * 16 + 8][:4], [6 * 16 + 6, 6 * 16 + 7, 6 * 16 + 8, 6 * 16 + 9]
    )
    with pytest.raises(ValueError):
        square_window(3, 7, 4)
    with pytest.raises(ValueError):
        window_table("hex", 4, 4, 2)


@pytest.mark.parametrize("window", ["square", "knn"])
@pytest.mark.parametrize("lookup", ["soft", "hard"])
def test_lookup_matches_naive(window, lookup):
    m, z, variables = _setup(window, lookup)
    z_q, aux = m.apply(variables, z)
    g = np.asarray(variables["params"]["embedding"])
    want, idx = naive_lookup(g, np.asarray(z), window_table(window, H, W, R), lookup)
    np.testing.assert_allclose(np.asarray(z_q), want, rtol=1e-5, atol=1e-5)
    if lookup == "hard":
        np.testing.assert_array_equal(np.asarray(aux["indices"]), idx)
        assert aux["indices"].dtype == jnp.int32 and aux["indices"].shape == (B, H, W, C // D_C)
        assert 1 <= int(aux["codes_used"]) <= H * W * K_C
        assert set(aux) >= {"codebook_loss", "commitment_loss", "codes_used", "perplexity"}
    else:
        window_size = R * R * K_C
        assert 0.0 < float(aux["entropy"]) <= np.log(window_size) + 1e-5
        assert 1.0 / window_size <= float(aux["max_weight"]) <= 1.0
        np.testing.assert_allclose(aux["effective_codes"], np.exp(aux["entropy"]), rtol=1e-6)
    np.testing.assert_allclose(aux["codebook_loss"], np.mean((np.asarray(z) - want) ** 2), 1e-5)
    np.testing.assert_allclose(aux["commitment_loss"], aux["codebook_loss"], rtol=1e-6)


@pytest.mark.parametrize("lookup", ["soft", "hard"])
def test_position_chunk_invariance(lookup):
    g = jax.random.normal(jax.random.key(3), (H, W, K_C, D_C))
    z = jax.random.normal(jax.random.key(4), (B, H, W, C))
    table = window_table("knn", H, W, R)

    def f(g, z, chunk):
        z_q, _ = grid_lookup(g, z, table, lookup=lookup, position_chunk=chunk)
        return jnp.sum(jnp.sin(z_q)), z_q

    outs = [jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(g, z, c) for c in (None, 7)]
    (v0, q0), (gg0, gz0) = outs[0]
    (v1, q1), (gg1, gz1) = outs[1]
    np.testing.assert_allclose(q0, q1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gg0, gg1, rtol=1e-4, atol=5e-5)  # summation order differs
    np.testing.assert_allclose(gz0, gz1, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("lookup", ["soft", "hard"])
@pytest.mark.parametrize("trainable", [True, False])
def test_gradient_reaches_codebook_only_when_trainable(lookup, trainable):
    m, z, variables = _setup("square", lookup, trainable=trainable)

    def loss(params, z):
        z_q, aux = m.apply({"params": params}, z)
        return jnp.sum(z_q**2) + aux["codebook_loss"] + aux["commitment_loss"]

    g_params, g_z = jax.grad(loss, argnums=(0, 1))(variables["params"], z)
    g_norm = float(jnp.abs(g_params["embedding"]).sum())
    assert (g_norm > 0) == trainable
    assert float(jnp.abs(g_z).sum()) > 0


def test_hard_straight_through_is_identity():
    m, z, variables = _setup("knn", "hard")
    g = jax.grad(lambda z: jnp.sum(m.apply(variables, z)[0] * 3.0))(z)
    np.testing.assert_allclose(g, 3.0 * np.ones_like(g))


def test_prior_is_per_position_mean():
    m, _, variables = _setup("square", "soft")
    p = m.apply(variables, method=GridCodebook.prior)
    g = np.asarray(variables["params"]["embedding"])
    assert p.shape == (H, W, D_C)
    for row in range(H):
        for col in range(W):
            np.testing.assert_allclose(p[row, col], g[row, col].mean(0), rtol=1e-6)


def test_init_scale_and_shape_errors():
    m, z, variables = _setup("square", "soft", init_scale=0.1)
    assert variables["params"]["embedding"].shape == (H, W, K_C, D_C)
    assert 0.05 < float(jnp.std(variables["params"]["embedding"])) < 0.2
    with pytest.raises(ValueError):
        m.apply(variables, z[:, :, :5])
    with pytest.raises(ValueError):
        m.apply(variables, z[..., :5])


def test_vanilla_codebook_matches_naive():
    n_codes, dim = 11, 5
    m = VanillaCodebook(num_codes=n_codes, dim=dim)
    z = jax.random.uniform(jax.random.key(0), (B, 3, 7, dim), minval=-0.1, maxval=0.1)
    variables = m.init(jax.random.key(1), z)
    e = np.asarray(variables["params"]["embedding"])
    assert e.shape == (n_codes, dim) and np.abs(e).max() <= 1.0 / n_codes
    z_q, aux = m.apply(variables, z)
    zn = np.asarray(z)
    idx = ((zn[..., None, :] - e) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(aux["indices"], idx)
    np.testing.assert_allclose(z_q, e[idx], rtol=1e-5, atol=1e-6)
    assert int(aux["codes_used"]) == len(np.unique(idx))
    counts = np.bincount(idx.ravel(), minlength=n_codes) / idx.size
    ent = -(counts[counts > 0] * np.log(counts[counts > 0])).sum()
    np.testing.assert_allclose(aux["perplexity"], np.exp(ent), rtol=1e-5)
    g = jax.grad(lambda p: m.apply({"params": p}, z)[1]["codebook_loss"])(variables["params"])
    assert float(jnp.abs(g["embedding"]).sum()) > 0
