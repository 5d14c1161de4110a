"""Stage 2: the prior-guided driving module (paper Sec. 3.3; reference spec §4).

Landmark heatmaps -> heatmap encoder E^l -> Z^l [B, h, w, D] -> prior-guided MLPs -> pre-norm
transformer over the h*w tokens -> F_hat [B, h, w, D], a prediction of the frozen stage-1
encoder's output Z (before quant_conv). Stage 1's quant_conv -> grid codebook (soft lookup) ->
post_quant_conv -> decoder then render the image (`VQModel.decode_features`).

Two variants share the heatmap encoder and transformer blocks:

* ``'paper'`` (default): F = MLP_F([Z^l ⊕ P]) (Eq. 6), F_g = mean over positions of F attached to
  every position, F_hat = MLP_G([F ⊕ F_g]) (Eq. 7), then a per-frame transformer (3 layers).
* ``'reference'`` (``GridFormer7_Model`` + ``PriorTrans``, spec §4.2): MLP_head([Z^l ⊕ P]) +
  MLP_hair([maxpool(Z^l) ⊕ P]) in parallel, then a 4-layer transformer over the tokens of the
  ``frames_per_group`` consecutive frames of a group jointly (1024 tokens at paper shapes).

Ablations (paper Table 5): ``use_texture_prior=False`` drops P from the MLP inputs,
``use_global_feature=False`` drops the global branch (F_g in 'paper', MLP_hair in 'reference');
both False is the Table 5 "Baseline", only the prior is "w P", both on is the full model.

Submodule names mirror the reference's state-dict keys (spec §6.3) so the PyTorch converter only
renames and transposes: ``mlp_head.2.weight`` <-> ``params['mlp_head']['layer_2']['kernel']``,
``transformer.layers.1.0.fn.to_qkv.weight`` <-> ``params['transformer']['layers_1_0']['to_qkv']``,
``transformer.layers.1.1.fn.net.3`` <-> ``params['transformer']['layers_1_1']['net_3']``. The
heatmap encoder is the stage-1 `Encoder` class (``params['heatmap_encoder']``, PyTorch default
init); Dense layers use the reference's ``init_net`` (N(0, 0.02), bias 0).
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpgc_jax.models.taming import Encoder
from vpgc_jax.precision import at_least_f32

Dtype = Any
Array = jax.Array

dense_init = nn.initializers.normal(0.02)  # reference init_net: N(0, 0.02), bias 0 (spec §4.1)


def layer_norm(x: Array, param_dtype: Dtype) -> Array:
    """LayerNorm(eps 1e-5) named ``norm``, two-pass variance, in at least float32 (spec §4.2)."""
    dt = at_least_f32(x.dtype)
    return nn.LayerNorm(
        epsilon=1e-5, dtype=dt, param_dtype=param_dtype, use_fast_variance=False, name="norm"
    )(x.astype(dt))


# The MLPs' nonlinearity: ReLU (paper, reference) or GELU (beyond both: a ReLU unit whose input is
# negative for every frame passes nothing and gets no gradient; measured in RESULTS.md, "A driver
# that ignores its input").
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu}


def _dense(features: int, name: str, use_bias: bool = True, **kw) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=dense_init, name=name, **kw)


class MLP(nn.Module):
    """Three-layer MLP Linear -> ReLU -> Linear -> ReLU -> Linear (Eq. 6-7; spec §4.2).

    Params ``layer_0``, ``layer_2``, ``layer_4`` mirror ``nn.Sequential`` indices 0, 2, 4.
    """

    features: int
    activation: str = "relu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[..., C_in] -> [..., features]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        act = ACTIVATIONS[self.activation]
        x = act(_dense(self.features, "layer_0", **kw)(x))
        x = act(_dense(self.features, "layer_2", **kw)(x))
        return _dense(self.features, "layer_4", **kw)(x)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention block x + Attn(LN(x)) (spec §4.2).

    ``to_qkv`` has no bias; its output columns are [q | k | v], head h owning columns
    64h..64h+63 of each (PyTorch rows, spec §6.3). Scale dim_head^-0.5; softmax in float32; dropout
    on the attention weights and after ``to_out`` in training only.
    """

    heads: int = 4
    dim_head: int = 64
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, T, D] -> [B, T, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, t, d = x.shape
        inner = self.heads * self.dim_head
        h = layer_norm(x, self.param_dtype)
        qkv = _dense(3 * inner, "to_qkv", use_bias=False, **kw)(h)
        q, k, v = jnp.split(qkv.reshape(b, t, 3, self.heads, self.dim_head), 3, axis=2)
        q, k, v = (a[:, :, 0] for a in (q, k, v))  # [B, T, heads, dim_head]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(at_least_f32(q.dtype))
        logits = logits * self.dim_head**-0.5
        weights = jax.nn.softmax(logits, axis=-1)
        weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).reshape(b, t, inner)
        out = _dense(d, "to_out_0", **kw)(out)
        return x + nn.Dropout(self.dropout, deterministic=not train)(out)


class FeedForward(nn.Module):
    """Pre-norm feed-forward block x + FF(LN(x)), FF = Linear -> GELU (erf) -> Linear (spec §4.2).

    Params ``net_0`` and ``net_3`` mirror the reference's ``fn.net.0`` / ``fn.net.3``.
    """

    mlp_dim: int = 256
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, T, D] -> [B, T, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _dense(self.mlp_dim, "net_0", **kw)(layer_norm(x, self.param_dtype))
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(h, approximate=False))
        h = _dense(x.shape[-1], "net_3", **kw)(h)
        return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class Transformer(nn.Module):
    """Pre-norm transformer, no final norm (reference ``Transformer``, spec §4.2).

    Layer L is ``layers_L_0`` (attention) then ``layers_L_1`` (feed-forward).
    """

    depth: int = 4
    heads: int = 4
    dim_head: int = 64
    mlp_dim: int = 256
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, T, D] -> [B, T, D]."""
        kw = dict(dropout=self.dropout, dtype=self.dtype, param_dtype=self.param_dtype)
        for layer in range(self.depth):
            x = SelfAttention(self.heads, self.dim_head, name=f"layers_{layer}_0", **kw)(x, train)
            x = FeedForward(self.mlp_dim, name=f"layers_{layer}_1", **kw)(x, train)
        return x


class PriorGuidedDriver(nn.Module):
    """Heatmap stacks -> predicted stage-1 features F_hat (paper Sec. 3.3, Eq. 6-7; spec §4).

    Built from a config by :func:`make_driver`; the heatmap encoder and the transformer are passed
    in already configured (house style #5) and keep their PyTorch names.

    Attributes:
      heatmap_encoder: E^l, a taming `Encoder` (spec §4.1: ch 64, ch_mult (1, 1, 2, 2, 4, 4), 2
        blocks, attention at 16, 7 input channels) whose ``z_channels`` is the feature width D
        (the stage-1 encoder's, 256 in the paper); its output grid (`latent_grid` for square
        stacks) is the grid of the stage-1 features it predicts.
      transformer: the pre-norm `Transformer` of width D (paper: 3 layers; reference: 4; both 4
        heads x 64, MLP 256, dropout 0.1 in training).
      variant: 'paper' (sequential MLPs, mean-pooled F_g, per-frame transformer) or 'reference'
        (parallel MLP_head + MLP_hair on max-pooled Z^l, joint transformer over a frame group).
      d_c: width of the texture prior P (stage-1 d_c).
      use_texture_prior: concatenate P to the MLP inputs (Table 5 "w P").
      use_global_feature: the global branch (F_g / MLP_hair) (Table 5 "Full model").
      pos_embedding: a learned [h*w, D] positional embedding added before the transformer (the
        paper is silent, the reference has none).
      frames_per_group: 'reference' only: consecutive frames attended jointly (4); the batch must
        be a multiple of it and hold whole groups in order.
      mlp_activation: the MLPs' nonlinearity, 'relu' (paper, reference) or 'gelu' (`ACTIVATIONS`).
      exemplar: beyond the paper and the reference (`vpgc_jax.exemplars`): the call also takes
        Z_ex, the stage-1 features of the training frame with the nearest landmarks; it joins
        Z^l in the MLP input, and F_hat = Z_ex + the transformer's output (a correction).
      dtype, param_dtype: compute and storage dtypes of the MLPs (`vpgc_jax.precision`; norms and
        softmax in float32); F_hat comes out in float32.
    """

    heatmap_encoder: Encoder
    transformer: Transformer
    variant: str = "paper"
    d_c: int = 4
    use_texture_prior: bool = True
    use_global_feature: bool = True
    pos_embedding: bool = False
    frames_per_group: int = 4
    mlp_activation: str = "relu"
    exemplar: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def dim(self) -> int:
        """Feature width D."""
        return self.heatmap_encoder.z_channels

    @property
    def grid(self) -> tuple[int, int]:
        """The latent grid (h, w) the driver predicts features on, for square R x R stacks."""
        return self.heatmap_encoder.latent_grid

    @property
    def resolution(self) -> int:
        """Side R of the [B, R, R, 7] heatmap stacks."""
        return self.heatmap_encoder.resolution

    def _check(
        self, heatmaps: Array, grid: tuple[int, int], prior: Array | None, ex: Array | None
    ) -> None:
        if self.variant not in ("paper", "reference"):
            raise ValueError(f"variant must be 'paper' or 'reference', got {self.variant!r}")
        if self.use_texture_prior:
            want = (*grid, self.d_c)
            if prior is None or tuple(prior.shape) != want:
                got = None if prior is None else tuple(prior.shape)
                raise ValueError(f"use_texture_prior needs a prior P of shape {want}, got {got}")
        if self.exemplar:
            want = (heatmaps.shape[0], *grid, self.dim)
            if ex is None or tuple(ex.shape) != want:
                got = None if ex is None else tuple(ex.shape)
                raise ValueError(f"an exemplar driver needs Z_ex of shape {want}, got {got}")
        if self.variant == "reference" and heatmaps.shape[0] % self.frames_per_group:
            raise ValueError(
                f"the reference driver attends over groups of {self.frames_per_group} frames; "
                f"batch {heatmaps.shape[0]} is not a multiple"
            )

    @nn.compact
    def __call__(
        self,
        heatmaps: Array,
        prior: Array | None = None,
        exemplar: Array | None = None,
        train: bool = False,
    ) -> Array:
        """Predicts F_hat from heatmap stacks.

        Args:
          heatmaps: [B, H, W, 7] float (H = W = R in training), frames t-3..t+3 of each target
            frame t, values in [0, 1].
          prior: texture prior P [h, w, d_c] from the frozen grid codebook (`VQModel.prior`),
            h, w the heatmap encoder's output grid; ignored (may be None) when
            ``use_texture_prior`` is False.
          exemplar: Z_ex [B, h, w, dim] float, with ``exemplar`` only (ignored otherwise): the
            stage-1 features of each frame's exemplar (`vpgc_jax.exemplars`).
          train: enables dropout (rng stream 'dropout').

        Returns:
          F_hat [B, h, w, dim] in the space of the stage-1 encoder output Z.

        Raises:
          ValueError: bad variant, heatmap channels, prior or exemplar shape, or (reference) a
            batch that is not a whole number of frame groups.
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        act = self.mlp_activation
        z_l = self.heatmap_encoder(heatmaps, train)  # [B, h, w, D]
        b, h, w, dim = z_l.shape
        self._check(heatmaps, (h, w), prior, exemplar)
        n = h * w
        x = z_l.reshape(b, n, dim)  # tokens in row-major position order
        if self.exemplar:
            z_ex = exemplar.astype(jnp.float32).reshape(b, n, dim)
            x = jnp.concatenate([x, z_ex.astype(x.dtype)], -1)  # [B, N, 2D]

        def with_prior(t: Array) -> Array:  # [B, N, D] -> [B, N, D + d_c] (or unchanged)
            if not self.use_texture_prior:
                return t
            p = prior.reshape(1, n, self.d_c).astype(t.dtype)
            return jnp.concatenate([t, jnp.broadcast_to(p, (b, n, self.d_c))], -1)

        if self.variant == "paper":
            f = MLP(dim, act, name="mlp_f", **kw)(with_prior(x))  # Eq. 6
            if self.use_global_feature:
                f_g = jnp.broadcast_to(jnp.mean(f, axis=1, keepdims=True), f.shape)
                f = MLP(dim, act, name="mlp_g", **kw)(jnp.concatenate([f, f_g], -1))  # Eq. 7
            tokens = f
        else:
            tokens = MLP(dim, act, name="mlp_head", **kw)(with_prior(x))
            if self.use_global_feature:
                g = jnp.broadcast_to(jnp.max(x, axis=1, keepdims=True), x.shape)
                tokens = tokens + MLP(dim, act, name="mlp_hair", **kw)(with_prior(g))

        if self.pos_embedding:
            pos = self.param("pos_embedding", dense_init, (n, dim), self.param_dtype)
            tokens = tokens + pos.astype(tokens.dtype)
        group = self.frames_per_group if self.variant == "reference" else 1
        tokens = tokens.reshape(b // group, group * n, dim)
        tokens = self.transformer(tokens, train).astype(jnp.float32)
        if self.exemplar:
            tokens = tokens + z_ex
        return tokens.reshape(b, h, w, dim)


def make_driver(
    encoder: Mapping[str, Any],
    transformer: Mapping[str, Any],
    *,
    dim: int,
    resolution: int,
    in_channels: int = 7,
    remat: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    **fields,
) -> PriorGuidedDriver:
    """A PriorGuidedDriver from a stage-2 config's ``model`` fields and its stage-1 run's shapes.

    Args:
      encoder: the heatmap encoder's `Encoder` fields (ch, ch_mult, num_res_blocks,
        attn_resolutions).
      transformer: `Transformer` fields (depth, heads, dim_head, mlp_dim, dropout).
      dim: feature width D, the stage-1 encoder's z_channels.
      resolution: side R of the heatmap stacks (the stage-1 resolution).
      in_channels: heatmaps per stack (7: frames t-3..t+3).
      remat: rematerialise the heatmap encoder's blocks in the backward pass.
      dtype, param_dtype: compute and storage dtypes.
      **fields: the other PriorGuidedDriver fields (variant, d_c, use_texture_prior,
        use_global_feature, pos_embedding, frames_per_group).
    """
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    heatmap_encoder = Encoder(
        **encoder, z_channels=dim, resolution=resolution, in_channels=in_channels, remat=remat, **kw
    )
    return PriorGuidedDriver(heatmap_encoder, Transformer(**transformer, **kw), **fields, **kw)
