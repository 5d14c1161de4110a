"""Grid-based codebook with receptive windows and soft/hard indexing; VQGAN's vanilla codebook.

Grid codebook: Sec. 3.2, Eq. 4-5 of Wang et al. 2023; reference behaviour: spec §1.3-1.6.
Vanilla codebook: Eq. 1-2 (Esser et al. 2021).

Layout: the codebook ``embedding`` is G [h, w, K_c, d_c]; the reference's ``quantize.embedding``
is [h*w, K_c, d_c] with position n = row*w + col, i.e. a plain reshape. A latent z [B, h, w, C] is
split per position into K_d = C/d_c sub-vectors [B, h, w, K_d, d_c]; chunk k holds channels
k*d_c .. k*d_c + d_c - 1.

The lookup is written once for ONE position (:func:`soft_lookup_position`,
:func:`hard_lookup_position`, functions of ``(z_pos [K_d, d_c], codes [W, d_c])``, W = r^2*K_c)
and lifted with ``jax.vmap`` over the batch and positions. The window codes are gathered once per
call ([h*w, W, d_c]: 16 MiB at paper shapes), never per sample, and the reference's broadcast
[B, N, K_d, W, d_c] tensor (4 GiB at B=4) is never built. Positions are processed in chunks of
``position_chunk`` by ``lax.map`` over a ``jax.checkpoint``-ed body, so the [chunk, B, K_d, W]
logits are the largest temporaries in both the forward and the backward pass.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes for codebook similarities on GPU.


# -------------------------------------------------------------------------------------------------
# Window tables: static numpy, [h*w, r*r] int32, row n = position row*w + col.
# -------------------------------------------------------------------------------------------------
def square_window(h: int, w: int, r: int) -> np.ndarray:
    """The r x r block of grid positions around each position (Sec. 3.2, "receptive window").

    Convention: the block of position (u, v) spans rows ``u - r//2 .. u - r//2 + r - 1`` (for even
    r the extra row is on the top: r=4 gives u-2..u+1; odd r is centred), likewise for columns. At
    the borders the block is shifted inward (not clipped), so every position sees exactly r^2
    positions. Entries are listed row-major within the block (the position itself is usually not
    entry 0).

    Args:
      h: grid height.
      w: grid width.
      r: window side.

    Returns:
      int32 array [h*w, r*r] of flattened positions (row*w + col).

    Raises:
      ValueError: if not 1 <= r <= min(h, w).
    """
    if r > h or r > w or r < 1:
        raise ValueError(f"square window r={r} must satisfy 1 <= r <= min(h={h}, w={w})")
    rows0 = np.clip(np.arange(h) - r // 2, 0, h - r)  # [h] first row of each block
    cols0 = np.clip(np.arange(w) - r // 2, 0, w - r)  # [w]
    off = np.arange(r)
    rr = rows0[:, None, None, None] + off[None, None, :, None]  # [h, 1, r, 1]
    cc = cols0[None, :, None, None] + off[None, None, None, :]  # [1, w, 1, r]
    return (rr * w + cc).reshape(h * w, r * r).astype(np.int32)  # [h*w, r*r]


@functools.cache
def _knn_window_cached(h: int, w: int, r: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors  # local import: only needed to build tables

    scale = float(max(h, w))
    xs = (np.arange(w, dtype=np.float64) + 0.5) / scale
    ys = (np.arange(h, dtype=np.float64) + 0.5) / scale
    gx, gy = np.meshgrid(xs, ys)  # [h, w] each; gx varies along columns
    points = np.stack([gx.ravel(), gy.ravel()], axis=-1)  # [h*w, 2] (x=col, y=row), row-major
    knn = NearestNeighbors(n_neighbors=r * r, algorithm="kd_tree").fit(points)
    _, idx = knn.kneighbors(points)
    out = idx.astype(np.int32)
    out.setflags(write=False)
    return out


def knn_window(h: int, w: int, r: int) -> np.ndarray:
    """The reference's window: the r^2 nearest grid positions by sklearn kd-tree (spec §1.3-1.4).

    Cell centres are ((col + 0.5)/s, (row + 0.5)/s) with s = max(h, w), equal to the reference's
    (i + 0.5)/16 at 16x16 (exact binary fractions, so tied distances tie exactly), as (x=col,
    y=row) points flattened row-major. ``NearestNeighbors(n_neighbors=r*r, algorithm='kd_tree')``
    is fit and queried on the same points. Rows are sorted by distance (entry 0 is the position
    itself); ties are broken by the kd-tree traversal, which makes the windows irregular. At 16x16,
    r=4 this equals ``shared/data/reference/knn_window_16.json`` exactly (tested).

    Args:
      h: grid height.
      w: grid width.
      r: window side; the window holds r*r positions.

    Returns:
      Read-only int32 array [h*w, r*r].

    Raises:
      ValueError: if not 1 <= r*r <= h*w.
    """
    if r < 1 or r * r > h * w:
        raise ValueError(f"knn window needs 1 <= r*r={r * r} <= h*w={h * w}")
    return _knn_window_cached(h, w, r)


def window_table(kind: str, h: int, w: int, r: int) -> np.ndarray:
    """Dispatches to :func:`square_window` ('square') or :func:`knn_window` ('knn').

    Raises:
      ValueError: on an unknown ``kind``.
    """
    if kind == "square":
        return square_window(h, w, r)
    if kind == "knn":
        return knn_window(h, w, r)
    raise ValueError(f"window must be 'square' or 'knn', got {kind!r}")


# -------------------------------------------------------------------------------------------------
# Per-position lookups (written once, lifted with vmap).
# -------------------------------------------------------------------------------------------------
def soft_lookup_position(z_pos: Array, codes: Array) -> tuple[Array, Array, Array]:
    """Soft indexing at one position (Eq. 4-5): attention of K_d queries over W window codes.

    Args:
      z_pos: [K_d, d_c] float32 query sub-vectors Z^s_(u,v).
      codes: [W, d_c] float32 window codes G^W_(u,v), W = r^2*K_c.

    Returns:
      z_q [K_d, d_c] = softmax(z_pos @ codes^T) @ codes (unscaled dot products, no temperature);
      entropy [K_d] (nats) and max_weight [K_d] of each softmax row (no gradient).
    """
    logits = jnp.einsum("kd,jd->kj", z_pos, codes, precision=_HIGHEST)  # [K_d, W]
    weights = jax.nn.softmax(logits, axis=-1)  # [K_d, W]
    z_q = jnp.einsum("kj,jd->kd", weights, codes, precision=_HIGHEST)  # [K_d, d_c]
    log_w = jax.nn.log_softmax(jax.lax.stop_gradient(logits), axis=-1)  # [K_d, W]
    w_sg = jnp.exp(log_w)
    entropy = -jnp.sum(w_sg * log_w, axis=-1)  # [K_d]
    return z_q, entropy, jnp.max(w_sg, axis=-1)


def hard_lookup_position(z_pos: Array, codes: Array) -> tuple[Array, Array]:
    """Hard indexing at one position: Eq. 1 restricted to the window (reference §1.5).

    Squared distances use the contraction ||z||^2 - 2 z.c + ||c||^2 instead of the reference's
    direct differences sum (z - c)^2, so in near-ties (differences at float32 rounding level) the
    chosen index can differ from the reference's; exact ties take the first index (torch.argmin).

    Args:
      z_pos: [K_d, d_c] float32 query sub-vectors.
      codes: [W, d_c] float32 window codes.

    Returns:
      z_q [K_d, d_c] = codes[idx] (no straight-through here) and idx [K_d] int32 window slots
      (slot j = K_c * neighbour_rank + k).
    """
    dots = jnp.einsum("kd,jd->kj", z_pos, codes, precision=_HIGHEST)  # [K_d, W]
    z_sq = jnp.sum(z_pos**2, -1, keepdims=True)  # [K_d, 1]
    dist = z_sq - 2.0 * dots + jnp.sum(codes**2, -1)[None, :]  # [K_d, W]
    idx = jnp.argmin(dist, axis=-1).astype(jnp.int32)  # [K_d]
    return jnp.take(codes, idx, axis=0), idx


def _map_positions(fn, z_nb: Array, codes_window: Array, position_chunk: int | None):
    """Lifts ``fn(z_pos [K_d, d_c], codes [W, d_c])`` to z_nb [N, B, K_d, d_c], codes [N, W, d_c].

    vmap over the batch (codes shared), then over positions: all at once if ``position_chunk`` is
    falsy, else ``lax.map`` over chunks of positions with a rematerialised body.
    """
    over_batch = jax.vmap(fn, in_axes=(0, None))  # z [B, K_d, d_c], codes [W, d_c]
    if not position_chunk or position_chunk >= z_nb.shape[0]:
        return jax.vmap(over_batch)(z_nb, codes_window)
    body = jax.checkpoint(lambda args: over_batch(*args))
    return jax.lax.map(body, (z_nb, codes_window), batch_size=position_chunk)


def grid_lookup(
    embedding: Array,
    z: Array,
    table: np.ndarray,
    *,
    lookup: str = "soft",
    position_chunk: int | None = 16,
) -> tuple[Array, dict[str, Array]]:
    """Functional grid-codebook lookup (no straight-through, no losses); see GridCodebook.

    Args:
      embedding: G [h, w, K_c, d_c] float32.
      z: [B, h, w, C] float32, C = K_d * d_c.
      table: [h*w, R] int window table (R = r^2 positions).
      lookup: 'soft' (Eq. 4-5) or 'hard' (argmin within the window).
      position_chunk: positions per ``lax.map`` step (None/0: all positions in one vmap).

    Returns:
      z_q [B, h, w, C] float32 and a dict: soft -> 'entropy', 'max_weight' [B, h, w, K_d];
      hard -> 'indices' [B, h, w, K_d] int32 window slots.

    Raises:
      ValueError: on an unknown ``lookup``.
    """
    h, w, k_c, d_c = embedding.shape
    b, _, _, c = z.shape
    n, k_d = h * w, c // d_c
    codes_window = embedding.reshape(n, k_c, d_c)[jnp.asarray(table)]  # [N, R, K_c, d_c]
    codes_window = codes_window.reshape(n, -1, d_c)  # [N, W, d_c], slot j = K_c*rank + k
    z_nb = z.reshape(b, n, k_d, d_c).transpose(1, 0, 2, 3)  # [N, B, K_d, d_c]

    def to_bhw(a: Array) -> Array:  # [N, B, K_d, ...] -> [B, h, w, K_d, ...]
        return jnp.moveaxis(a, 1, 0).reshape(b, h, w, *a.shape[2:])

    if lookup == "soft":
        fn = soft_lookup_position
        z_q, entropy, max_w = _map_positions(fn, z_nb, codes_window, position_chunk)
        stats = {"entropy": to_bhw(entropy), "max_weight": to_bhw(max_w)}
    elif lookup == "hard":
        z_q, idx = _map_positions(hard_lookup_position, z_nb, codes_window, position_chunk)
        stats = {"indices": to_bhw(idx)}
    else:
        raise ValueError(f"lookup must be 'soft' or 'hard', got {lookup!r}")
    return to_bhw(z_q).reshape(b, h, w, c), stats  # [B, h, w, C]


def _usage_stats(ids: Array, num: int) -> dict[str, Array]:
    """codes_used (distinct ids) and perplexity exp(H(usage)) of integer ids in [0, num)."""
    counts = jnp.zeros((num,), jnp.float32).at[ids.reshape(-1)].add(1.0)
    p = counts / jnp.sum(counts)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {"codes_used": jnp.sum(counts > 0).astype(jnp.int32), "perplexity": jnp.exp(ent)}


def _vq_losses(z: Array, z_q: Array) -> dict[str, Array]:
    sg = jax.lax.stop_gradient
    return {
        "codebook_loss": jnp.mean((sg(z) - z_q) ** 2),
        "commitment_loss": jnp.mean((sg(z_q) - z) ** 2),
    }


class GridCodebook(nn.Module):
    """Position-aware grid codebook G [h, w, K_c, d_c] with receptive windows (Sec. 3.2).

    Losses (Eq. 2) are returned unweighted and combined by the trainer: ``codebook_loss`` =
    mean((sg[z] - z_q)^2), ``commitment_loss`` = mean((sg[z_q] - z)^2). The reference ("legacy",
    spec §1.5) uses commitment x 1 + beta(0.25) x codebook; the paper uses both with weight 1. For
    soft lookup z_q is a differentiable function of z and G, so ``codebook_loss`` also sends a
    gradient to z through the softmax weights.

    Attributes:
      grid_h: latent grid height h.
      grid_w: latent grid width w.
      K_c: codes per position.
      d_c: code length; the latent channel count C must be a multiple (K_d = C / d_c).
      r: window side (r^2 positions per window).
      window: 'square' (paper's r x r block, :func:`square_window`) or 'knn' (the reference's
        kd-tree nearest neighbours, :func:`knn_window`; needed for reference checkpoints).
      lookup: 'soft' (paper Eq. 4-5: attention, no quantisation, no straight-through) or 'hard'
        (reference stage 1: window argmin + straight-through z + sg(z_q - z)).
      trainable: False freezes G (stop_gradient inside the lookup), as the reference does
        (spec §1.6).
      init_scale: codes are drawn init_scale x N(0, 1). The reference draws N(0, 1), hence the
        default 1.0; a calibration run with 0.1 x N(0, 1) gave an exactly uniform softmax
        (entropy = ln(window size) for the whole run).
      position_chunk: positions per lax.map step (memory/speed knob; None = one vmap over all).
      dtype: dtype of the returned z_q (the lookup itself always runs in float32).
      param_dtype: storage dtype of G.
    """

    grid_h: int = 16
    grid_w: int = 16
    K_c: int = 256
    d_c: int = 4
    r: int = 4
    window: str = "square"
    lookup: str = "soft"
    trainable: bool = True
    init_scale: float = 1.0
    position_chunk: int | None = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        def init(key, shape, dtype):
            return self.init_scale * jax.random.normal(key, shape, dtype)

        shape = (self.grid_h, self.grid_w, self.K_c, self.d_c)
        self.embedding = self.param("embedding", init, shape, self.param_dtype)  # G

    def _codes(self) -> Array:
        g = self.embedding.astype(jnp.float32)
        return g if self.trainable else jax.lax.stop_gradient(g)

    def __call__(self, z: Array) -> tuple[Array, dict[str, Array]]:
        """Looks up every position's K_d sub-vectors in its window.

        Args:
          z: [B, h, w, C] latent (output of quant_conv), any float dtype.

        Returns:
          z_q [B, h, w, C] in ``dtype`` and aux (float32 unless noted):
            'codebook_loss', 'commitment_loss': scalars (see class docstring).
            soft: 'entropy' (mean softmax entropy, nats), 'max_weight' (mean largest weight),
              'effective_codes' (exp(mean entropy)).
            hard: 'indices' [B, h, w, K_d] int32 window slots; 'codes_used' (int32, distinct
              codebook entries G[u, v, k] selected in the batch, each counted at its own grid
              position, out of h*w*K_c); 'perplexity' (exp of the entropy of that histogram).

        Raises:
          ValueError: if z's grid is not (grid_h, grid_w) or C is not a multiple of d_c.
        """
        if z.ndim != 4 or z.shape[1:3] != (self.grid_h, self.grid_w) or z.shape[-1] % self.d_c:
            raise ValueError(
                f"GridCodebook expects [B, {self.grid_h}, {self.grid_w}, C] with C % {self.d_c}"
                f" == 0, got {z.shape}"
            )
        table = window_table(self.window, self.grid_h, self.grid_w, self.r)
        z32 = z.astype(jnp.float32)
        z_q, stats = grid_lookup(
            self._codes(), z32, table, lookup=self.lookup, position_chunk=self.position_chunk
        )
        aux = _vq_losses(z32, z_q)
        if self.lookup == "soft":
            ent = jnp.mean(stats["entropy"])
            aux.update(entropy=ent, effective_codes=jnp.exp(ent))
            aux.update(max_weight=jnp.mean(stats["max_weight"]))
            out = z_q
        else:
            n = self.grid_h * self.grid_w
            idx = stats["indices"].reshape(z.shape[0], n, -1)  # [B, N, K_d]
            owner = jnp.asarray(table)[jnp.arange(n)[:, None], idx // self.K_c]  # [B, N, K_d]
            entry = owner * self.K_c + idx % self.K_c  # [B, N, K_d] flat index into G
            aux.update(indices=stats["indices"], **_usage_stats(entry, n * self.K_c))
            out = z32 + jax.lax.stop_gradient(z_q - z32)  # straight-through estimator
        return out.astype(self.dtype), aux

    def prior(self) -> Array:
        """Texture prior P [h, w, d_c] float32: mean of the K_c codes at each position (Sec. 3.3).

        Each position's own codes, not its window (spec §4.2).
        """
        return jnp.mean(self._codes(), axis=2)


class VanillaCodebook(nn.Module):
    """VQGAN's unordered codebook C [N, d]: argmin + straight-through (Eq. 1-2, Esser et al. 2021).

    Same parameter count as the grid codebook at paper shapes (1024 x 256 = 16*16*256*4). Init
    U(-1/N, 1/N) as taming's ``VectorQuantizer``.

    Attributes:
      num_codes: N.
      dim: d, must equal the latent channel count.
      trainable: False stops gradients to the codes.
      dtype: dtype of the returned z_q.
      param_dtype: storage dtype.
    """

    num_codes: int = 1024
    dim: int = 256
    trainable: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: Array) -> tuple[Array, dict[str, Array]]:
        """Quantises every position of z [B, h, w, d] to its nearest code.

        Returns:
          z_q [B, h, w, d] (straight-through) and aux: 'codebook_loss', 'commitment_loss'
          (float32 scalars, as in GridCodebook), 'indices' [B, h, w] int32, 'codes_used'
          (distinct codes in the batch, int32), 'perplexity'.

        Raises:
          ValueError: if the channel count is not ``dim``.
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"VanillaCodebook expects {self.dim} channels, got {z.shape}")
        bound = 1.0 / self.num_codes

        def init(key, shape, dtype):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        e = self.param("embedding", init, (self.num_codes, self.dim), self.param_dtype)
        e = e.astype(jnp.float32)  # [N, d]
        if not self.trainable:
            e = jax.lax.stop_gradient(e)
        z32 = z.astype(jnp.float32)
        dots = jnp.einsum("bhwd,nd->bhwn", z32, e, precision=_HIGHEST)  # [B, h, w, N]
        dist = jnp.sum(z32**2, -1, keepdims=True) - 2.0 * dots + jnp.sum(e**2, -1)
        idx = jnp.argmin(dist, axis=-1).astype(jnp.int32)  # [B, h, w]
        z_q = jnp.take(e, idx, axis=0)  # [B, h, w, d]
        aux = _vq_losses(z32, z_q)
        aux.update(indices=idx, **_usage_stats(idx, self.num_codes))
        out = z32 + jax.lax.stop_gradient(z_q - z32)
        return out.astype(self.dtype), aux
