"""Stage-1 autoencoder: encoder -> quant_conv -> codebook -> post_quant_conv -> decoder.

The reference's ``VQGridModel`` (spec §1.2, §1.5); with the vanilla codebook it is taming's
``VQModel``. Submodules are named ``encoder``, ``quant_conv``, ``quantize``, ``post_quant_conv``,
``decoder`` as in the PyTorch state dict (spec §6.2). Paper config: 66,031,171 parameters.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpgc_jax.models.codebook import GridCodebook, VanillaCodebook
from vpgc_jax.models.taming import Decoder, Encoder, torch_conv

Dtype = Any
Array = jax.Array


GRID_FIELDS = ("K_c", "d_c", "r", "window", "lookup", "trainable", "init_scale", "position_chunk")
VANILLA_FIELDS = ("num_codes", "trainable")


class VQModel(nn.Module):
    """Grid-codebook (or vanilla VQGAN) autoencoder, NHWC, images in [-1, 1].

    Built from a config by :func:`make_vqmodel`; the submodules are passed in already configured
    (house style #5: ``Encoder(**config.model.encoder)``) and keep their PyTorch names.

    Attributes:
      encoder: the taming `Encoder` (images -> [B, h, w, z_channels]).
      decoder: the taming `Decoder` mirroring it.
      quantize: a `GridCodebook` (Sec. 3.2) or a `VanillaCodebook` (VQGAN, Eq. 1-2). The grid
        codebook's grid must be the encoder's output grid (it raises otherwise): for square
        images `make_vqmodel` gives it the encoder's `latent_grid`; any H x W image works with a
        (H / 2^L) x (W / 2^L) codebook.
      embed_dim: latent channels seen by the codebook (quant_conv z_channels -> embed_dim).
      dtype: compute dtype of quant_conv / post_quant_conv (`vpgc_jax.precision`); images and
        encoder features come out in float32 whatever it is.
      param_dtype: parameter storage dtype.
    """

    encoder: Encoder
    decoder: Decoder
    quantize: GridCodebook | VanillaCodebook
    embed_dim: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def resolution(self) -> int:
        """Side R of the [B, R, R, 3] images."""
        return self.encoder.resolution

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        z = self.encoder.z_channels
        self.quant_conv = torch_conv(self.embed_dim, 1, z, **kw)
        self.post_quant_conv = torch_conv(z, 1, self.embed_dim, **kw)

    @property
    def is_grid(self) -> bool:
        """Whether the codebook is the grid codebook (it has a texture prior)."""
        return isinstance(self.quantize, GridCodebook)

    def encode(self, x: Array, train: bool = False) -> Array:
        """Encoder output BEFORE quant_conv (the stage-2 target Z, spec §4.3).

        Args:
          x: [B, H, W, in_channels] images in [-1, 1].
          train: enables dropout.

        Returns:
          [B, h, w, z_channels] float32.
        """
        return self.encoder(x, train).astype(jnp.float32)

    def quantize_latent(self, h: Array) -> tuple[Array, dict[str, Array]]:
        """quant_conv -> codebook: [B, h, w, z_channels] -> (z_q [B, h, w, embed_dim], aux)."""
        return self.quantize(self.quant_conv(h))

    def decode(self, z_q: Array, train: bool = False) -> Array:
        """post_quant_conv -> decoder: [B, h, w, embed_dim] -> [B, H, W, out_ch] float32."""
        return self.decoder(self.post_quant_conv(z_q), train).astype(jnp.float32)

    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Reconstructs x [B, H, W, in_channels] -> (x_rec [B, H, W, out_ch], codebook aux)."""
        z_q, aux = self.quantize_latent(self.encode(x, train))
        return self.decode(z_q, train), aux

    def decode_features(self, f: Array) -> Array:
        """Stage-2 inference path (spec §4.4): quant_conv -> codebook -> post_quant_conv -> decoder.

        Args:
          f: [B, h, w, z_channels] predicted features F_hat (same space as :meth:`encode`).

        Returns:
          [B, H, W, out_ch] images, about [-1, 1].
        """
        z_q, _ = self.quantize_latent(f)
        return self.decode(z_q)

    def prior(self) -> Array:
        """Texture prior P [h, w, d_c] of the grid codebook (Sec. 3.3).

        Raises:
          ValueError: for the vanilla codebook, which has no per-position prior.
        """
        if not self.is_grid:
            raise ValueError("prior() needs the grid codebook")
        return self.quantize.prior()


def make_vqmodel(
    encoder: Mapping[str, Any],
    codebook: Mapping[str, Any],
    embed_dim: int,
    resolution: int,
    *,
    remat: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> VQModel:
    """A VQModel from a stage-1 config's ``model`` fields (``make_vqmodel(**config.model, ...)``).

    Args:
      encoder: taming's ddconfig, `Encoder` fields (ch, ch_mult, num_res_blocks,
        attn_resolutions, z_channels, dropout); the decoder mirrors it (spec §1.1-1.2).
      codebook: ``kind`` ('grid' or 'vanilla') and that codebook's fields: `GridCodebook`'s
        (`GRID_FIELDS`; its grid is the encoder's `latent_grid`) or `VanillaCodebook`'s
        (`VANILLA_FIELDS`; its dim is `embed_dim`). Fields of the other kind are ignored.
      embed_dim: latent channels the codebook sees.
      resolution: side R of the [B, R, R, 3] images.
      remat: rematerialise the encoder / decoder blocks in the backward pass (512 px memory).
      dtype: compute dtype (`vpgc_jax.precision`).
      param_dtype: parameter storage dtype.

    Raises:
      ValueError: an unknown codebook kind or field.
    """
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    dd = dict(encoder, resolution=resolution, remat=remat, **kw)
    enc = Encoder(in_channels=3, **dd)
    fields = {k: v for k, v in codebook.items() if k != "kind"}
    unknown = set(fields) - set(GRID_FIELDS) - set(VANILLA_FIELDS)
    if unknown:
        raise ValueError(f"unknown codebook fields {sorted(unknown)}")
    kind = codebook.get("kind")
    if kind == "grid":
        h, w = enc.latent_grid
        grid_fields = {k: v for k, v in fields.items() if k in GRID_FIELDS}
        quantize = GridCodebook(grid_h=h, grid_w=w, **grid_fields, **kw)
    elif kind == "vanilla":
        vanilla_fields = {k: v for k, v in fields.items() if k in VANILLA_FIELDS}
        quantize = VanillaCodebook(dim=embed_dim, **vanilla_fields, **kw)
    else:
        raise ValueError(f"codebook kind must be 'grid' or 'vanilla', got {kind!r}")
    return VQModel(enc, Decoder(out_ch=3, **dd), quantize, embed_dim, **kw)
