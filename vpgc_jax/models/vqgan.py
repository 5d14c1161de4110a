"""Stage-1 autoencoder: encoder -> quant_conv -> codebook -> post_quant_conv -> decoder.

The reference's ``VQGridModel`` (spec §1.2, §1.5); with ``codebook='vanilla'`` it is taming's
``VQModel``. Submodules are named ``encoder``, ``quant_conv``, ``quantize``, ``post_quant_conv``,
``decoder`` as in the PyTorch state dict (spec §6.2). Paper config: 66,031,171 parameters.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpgc_jax.models.codebook import GridCodebook, VanillaCodebook
from vpgc_jax.models.taming import Decoder, Encoder, torch_conv

Dtype = Any
Array = jax.Array


class VQModel(nn.Module):
    """Grid-codebook (or vanilla VQGAN) autoencoder, NHWC, images in [-1, 1].

    Attributes:
      ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, resolution, in_channels, out_ch,
        dropout: the taming ddconfig shared by encoder and decoder (spec §1.1-1.2).
      embed_dim: latent channels seen by the codebook (quant_conv z_channels -> embed_dim).
      codebook: 'grid' (Sec. 3.2) or 'vanilla' (VQGAN, Eq. 1-2).
      grid_h, grid_w, K_c, d_c, r, window, lookup, trainable, init_scale, position_chunk:
        GridCodebook fields (grid size must equal resolution / 2**(len(ch_mult)-1)).
      num_codes: VanillaCodebook N (its dim is embed_dim).
      remat: rematerialise the encoder / decoder blocks in the backward pass (memory at 512 px).
      dtype: compute dtype (`vpgc_jax.precision`: norms, softmax, codebook in float32); images
        and encoder features come out in float32 whatever it is.
      param_dtype: parameter storage dtype.
    """

    ch: int = 64
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 8)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    z_channels: int = 256
    resolution: int = 512
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    embed_dim: int = 256
    codebook: str = "grid"
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
    num_codes: int = 1024
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        latent = self.resolution // 2 ** (len(self.ch_mult) - 1)
        if self.codebook == "grid" and (latent, latent) != (self.grid_h, self.grid_w):
            raise ValueError(
                f"resolution {self.resolution} with {len(self.ch_mult) - 1} downsamplings gives a "
                f"{latent}x{latent} latent grid, but grid_h, grid_w = {self.grid_h}, {self.grid_w}"
            )
        dd = dict(
            ch=self.ch,
            ch_mult=tuple(self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=tuple(self.attn_resolutions),
            z_channels=self.z_channels,
            resolution=self.resolution,
            dropout=self.dropout,
            remat=self.remat,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = Encoder(in_channels=self.in_channels, **dd)
        self.decoder = Decoder(out_ch=self.out_ch, **dd)
        self.quant_conv = torch_conv(self.embed_dim, 1, self.z_channels, **kw)
        self.post_quant_conv = torch_conv(self.z_channels, 1, self.embed_dim, **kw)
        if self.codebook == "grid":
            self.quantize = GridCodebook(
                grid_h=self.grid_h,
                grid_w=self.grid_w,
                K_c=self.K_c,
                d_c=self.d_c,
                r=self.r,
                window=self.window,
                lookup=self.lookup,
                trainable=self.trainable,
                init_scale=self.init_scale,
                position_chunk=self.position_chunk,
                **kw,
            )
        elif self.codebook == "vanilla":
            self.quantize = VanillaCodebook(
                num_codes=self.num_codes, dim=self.embed_dim, trainable=self.trainable, **kw
            )
        else:
            raise ValueError(f"codebook must be 'grid' or 'vanilla', got {self.codebook!r}")

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
        if self.codebook != "grid":
            raise ValueError("prior() needs codebook='grid'")
        return self.quantize.prior()
