"""PyTorch inference path of vpgc_jax: autoencoder, grid codebook and driver (needs torch, not JAX).

Written from the spec (§1.2-1.5, §4.1-4.2) and mirroring the Flax modules in
``vpgc_jax/models``, with the reference's attribute names so its state dicts load as they are:
``Encoder``/``Decoder`` (taming), ``GridCodebook`` (square or knn window, soft or hard lookup),
``VanillaCodebook``, ``VQModel``, and the driver (``Encoder`` on heatmaps + ``DriverHead``, the
reference's ``PriorTrans`` or the paper's variant). Layout is PyTorch's: images [B, C, H, W].
Everything is built for inference (``eval()``; dropout off).

Loading (:func:`load_stage1`, :func:`load_driver`, :func:`load_export`) checks every key and shape
and refuses partial models, unlike the reference's loaders.

Window tables: exported files carry theirs; for other files (e.g. the reference's own checkpoints)
the table is computed by ``vpgc_jax.models.codebook.window_table``, which imports JAX and sklearn.
"""

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from vpgc_jax.interop import convert, torch_io

torch = torch_io.require_torch()
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

EXPORT_MANIFEST = torch_io.EXPORT_MANIFEST


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> dropout -> conv2, + (nin_)shortcut (§1.2)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over H*W tokens, C^-0.5 scale, residual (spec §1.2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)  # [B, L, C]
        k = self.k(h).reshape(b, c, hh * ww)  # [B, C, L]
        v = self.v(h).reshape(b, c, hh * ww)  # [B, C, L]
        w = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # [B, Lq, Lk]
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """``down.i`` / ``up.i``: ``block`` and ``attn`` lists, then ``downsample``/``upsample``."""

    def __init__(self, c_in, c_out, blocks, attn, resample, dropout):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(blocks):
            self.block.append(ResnetBlock(c_in, c_out, dropout))
            c_in = c_out
            if attn:
                self.attn.append(AttnBlock(c_out))
        if resample == "down":
            self.downsample = Downsample(c_out)
        elif resample == "up":
            self.upsample = Upsample(c_out)

    def forward(self, x):
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class _Mid(nn.Module):
    def __init__(self, c, dropout):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, dropout)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Taming Encoder, ``double_z=False``: [B, in_channels, H, W] -> [B, z_channels, h, w]."""

    def __init__(
        self,
        *,
        ch: int = 64,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 8),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        z_channels: int = 256,
        resolution: int = 512,
        in_channels: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        res = resolution
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            self.down.append(
                _Level(
                    ch * in_ch_mult[i],
                    ch * mult,
                    num_res_blocks,
                    res in attn_resolutions,
                    None if last else "down",
                    dropout,
                )
            )
            res = res if last else res // 2
        c = ch * ch_mult[-1]
        self.mid = _Mid(c, dropout)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Taming Decoder, no tanh: [B, z_channels, h, w] -> [B, out_ch, H, W]."""

    def __init__(
        self,
        *,
        ch: int = 64,
        out_ch: int = 3,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 8),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        z_channels: int = 256,
        resolution: int = 512,
        dropout: float = 0.0,
    ):
        super().__init__()
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, dropout)
        levels = []
        for i in reversed(range(n)):
            block_out = ch * ch_mult[i]
            up = "up" if i != 0 else None
            attn = res in attn_resolutions
            levels.insert(0, _Level(block_in, block_out, num_res_blocks + 1, attn, up, dropout))
            block_in = block_out
            res = res * 2 if i != 0 else res
        self.up = nn.ModuleList(levels)  # up[i] is level i; run from the last to 0
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def window_table(window: str, h: int, w: int, r: int) -> np.ndarray:
    """The [h*w, r*r] window table (vpgc_jax.models.codebook; imports JAX and sklearn)."""
    from vpgc_jax.models.codebook import window_table as jax_window_table

    return np.asarray(jax_window_table(window, h, w, r))


class GridCodebook(nn.Module):
    """Grid codebook lookup (Sec. 3.2, Eq. 4-5; spec §1.3-1.5) for inference.

    ``embedding`` is the reference's ``quantize.embedding`` [h*w, K_c, d_c]; ``table`` (a
    non-persistent buffer, not in the state dict) lists each position's r^2 window positions.
    Soft: softmax of unscaled dot products over the r^2*K_c window codes. Hard: argmin of
    sum_d (z - c)^2 computed from the differences, first index on ties: the reference's
    ``chamfer_compare`` formula, so indices match the reference's even in near-ties (spec §5.3).
    The JAX module uses ||z||^2 - 2 z.c + ||c||^2, whose float32 cancellation (about 1e-6 of
    ||z||^2) can pick another code where two distances are that close.
    """

    def __init__(self, grid_h, grid_w, K_c, d_c, table, lookup="soft", position_chunk=16):
        super().__init__()
        if lookup not in ("soft", "hard"):
            raise ValueError(f"lookup must be 'soft' or 'hard', got {lookup!r}")
        self.grid_h, self.grid_w, self.K_c, self.d_c = grid_h, grid_w, K_c, d_c
        self.lookup = lookup
        self.position_chunk = position_chunk or grid_h * grid_w
        self.embedding = nn.Parameter(torch.randn(grid_h * grid_w, K_c, d_c))
        table = torch.as_tensor(np.array(table, dtype=np.int64))
        if table.shape[0] != grid_h * grid_w:
            raise ValueError(f"window table {tuple(table.shape)} does not fit a {grid_h}x{grid_w}")
        self.register_buffer("table", table, persistent=False)

    def forward(self, z):
        """z [B, C, h, w] -> (z_q [B, C, h, w], info); hard: info['indices'] [B, h*w, K_d]."""
        b, c, h, w = z.shape
        n, d = h * w, self.d_c
        if (h, w) != (self.grid_h, self.grid_w) or c % d:
            raise ValueError(
                f"GridCodebook expects [B, C, {self.grid_h}, {self.grid_w}], got {z.shape}"
            )
        ct = torch.promote_types(z.dtype, torch.float32)  # float32, or float64 after .double()
        zb = z.to(ct).permute(0, 2, 3, 1).reshape(b, n, c // d, d)  # [B, N, K_d, d_c]
        codes = self.embedding.to(ct)[self.table].reshape(n, -1, d)  # [N, W, d_c]
        # Hard lookup materialises [B, chunk, K_d, W, d_c] differences: smaller chunks.
        chunk = self.position_chunk if self.lookup == "soft" else max(1, self.position_chunk // 4)
        out, idx = [], []
        for s in range(0, n, chunk):
            zc, cc = zb[:, s : s + chunk], codes[s : s + chunk]  # [B, c, K_d, d], [c, W, d]
            if self.lookup == "soft":
                dots = torch.einsum("bnkd,nwd->bnkw", zc, cc)  # [B, c, K_d, W]
                out.append(torch.einsum("bnkw,nwd->bnkd", torch.softmax(dots, -1), cc))
            else:
                diff = zc[:, :, :, None, :] - cc[None, :, None, :, :]  # [B, c, K_d, W, d]
                i = (diff * diff).sum(-1).argmin(-1)  # [B, c, K_d]
                idx.append(i)
                i_d = i[..., None].expand(-1, -1, -1, d)
                out.append(torch.gather(cc[None].expand(b, -1, -1, -1), 2, i_d))
        z_q = torch.cat(out, 1).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return z_q.to(z.dtype), ({"indices": torch.cat(idx, 1)} if idx else {})

    def prior(self):
        """Texture prior P [h*w, d_c]: mean of each position's K_c codes (Sec. 3.3)."""
        return self.embedding.mean(1)


class VanillaCodebook(nn.Module):
    """VQGAN codebook (taming ``VectorQuantizer``, ``quantize.embedding.weight`` [N, d])."""

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_codes, dim)

    def forward(self, z):
        b, c, h, w = z.shape
        ct = torch.promote_types(z.dtype, torch.float32)
        zf = z.to(ct).permute(0, 2, 3, 1).reshape(-1, c)
        e = self.embedding.weight.to(ct)
        dist = (zf**2).sum(-1, keepdim=True) - 2.0 * zf @ e.T + (e**2).sum(-1)
        idx = dist.argmin(-1)
        z_q = e[idx].reshape(b, h, w, c).permute(0, 3, 1, 2)
        return z_q.to(z.dtype), {"indices": idx.reshape(b, h, w)}


class VQModel(nn.Module):
    """encoder -> quant_conv -> codebook -> post_quant_conv -> decoder (spec §1.2, §1.5).

    Takes the fields of the JAX ``VQModel`` (a stage-1 run's ``config.model``); JAX-only fields
    (trainable, init_scale, dtype, ...) are accepted and ignored. ``table`` overrides the window
    table (default: computed from window, r and the grid).
    """

    JAX_ONLY = ("trainable", "init_scale", "dtype", "param_dtype")

    def __init__(
        self,
        *,
        ch=64,
        ch_mult=(1, 1, 2, 2, 4, 8),
        num_res_blocks=2,
        attn_resolutions=(16,),
        z_channels=256,
        resolution=512,
        in_channels=3,
        out_ch=3,
        dropout=0.0,
        embed_dim=256,
        codebook="grid",
        grid_h=16,
        grid_w=16,
        K_c=256,
        d_c=4,
        r=4,
        window="square",
        lookup="soft",
        num_codes=1024,
        position_chunk=16,
        table=None,
        **jax_only,
    ):
        super().__init__()
        unknown = set(jax_only) - set(self.JAX_ONLY)
        if unknown:
            raise TypeError(f"VQModel: unknown fields {sorted(unknown)}")
        dd = dict(
            ch=ch,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            z_channels=z_channels,
            resolution=resolution,
            dropout=dropout,
        )
        self.encoder = Encoder(in_channels=in_channels, **dd)
        self.decoder = Decoder(out_ch=out_ch, **dd)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        if codebook == "grid":
            if table is None:
                table = window_table(window, grid_h, grid_w, r)
            self.quantize = GridCodebook(grid_h, grid_w, K_c, d_c, table, lookup, position_chunk)
        elif codebook == "vanilla":
            self.quantize = VanillaCodebook(num_codes, embed_dim)
        else:
            raise ValueError(f"codebook must be 'grid' or 'vanilla', got {codebook!r}")
        self.eval()

    def encode(self, x):
        """[B, 3, H, W] in [-1, 1] -> encoder output before quant_conv [B, z_channels, h, w]."""
        return self.encoder(x)

    def quantize_latent(self, h):
        return self.quantize(self.quant_conv(h))

    def decode(self, z_q):
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x):
        """Reconstruction [B, out_ch, H, W] and the codebook info."""
        z_q, info = self.quantize_latent(self.encode(x))
        return self.decode(z_q), info

    def decode_features(self, f):
        """Stage-2 rendering: predicted features [B, z_channels, h, w] -> images (spec §4.4)."""
        return self.decode(self.quantize_latent(f)[0])

    def prior(self):
        """Texture prior P [h*w, d_c] of the grid codebook."""
        return self.quantize.prior()


# -------------------------------------------------------------------------------------------------
# Driver (spec §4.1-4.2): heatmap Encoder + DriverHead (the reference's PriorTrans).
# -------------------------------------------------------------------------------------------------
# The MLPs' nonlinearity (`vpgc_jax.models.driver.ACTIVATIONS`: flax's gelu is the tanh form).
ACTIVATIONS = {"relu": nn.ReLU, "gelu": lambda: nn.GELU(approximate="tanh")}


def _mlp(c_in: int, c: int, activation: str = "relu") -> nn.Sequential:
    act = ACTIVATIONS[activation]
    return nn.Sequential(nn.Linear(c_in, c), act(), nn.Linear(c, c), act(), nn.Linear(c, c))


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class Attention(nn.Module):
    """Multi-head attention, ``to_qkv`` without bias, columns [q | k | v] by head (spec §6.3)."""

    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.attend_dropout = nn.Dropout(dropout)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(b, t, 3, self.heads, self.dim_head).unbind(2)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.dim_head**-0.5
        w = self.attend_dropout(torch.softmax(logits, -1))
        out = torch.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim, mlp_dim, dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm transformer, no final norm: ``layers.L.0`` attention, ``layers.L.1`` FF."""

    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                    PreNorm(dim, FeedForward(dim, mlp_dim, dropout)),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class DriverHead(nn.Module):
    """Prior-guided MLPs + transformer: Z^l [B, D, h, w], P -> F_hat [B, D, h, w].

    'reference' is ``PriorTrans`` (MLP_head([Z^l, P]) + MLP_hair([maxpool(Z^l), P]), joint
    attention over groups of ``frames_per_group`` frames); 'paper' is Eq. 6-7 (MLP_G([F, mean F])
    after F = MLP_F([Z^l, P])) with per-frame attention. Saved as the ``implicit`` file.
    """

    def __init__(
        self,
        *,
        variant="paper",
        dim=256,
        d_c=4,
        grid_h=16,
        grid_w=16,
        depth=3,
        heads=4,
        dim_head=64,
        mlp_dim=256,
        dropout=0.1,
        use_texture_prior=True,
        use_global_feature=True,
        pos_embedding=False,
        frames_per_group=4,
        mlp_activation="relu",
    ):
        super().__init__()
        if variant not in ("paper", "reference"):
            raise ValueError(f"variant must be 'paper' or 'reference', got {variant!r}")
        if mlp_activation not in ACTIVATIONS:
            raise ValueError(f"mlp_activation must be one of {sorted(ACTIVATIONS)}")
        self.variant, self.dim, self.d_c = variant, dim, d_c
        self.n = grid_h * grid_w
        self.use_texture_prior, self.use_global_feature = use_texture_prior, use_global_feature
        self.frames_per_group = frames_per_group
        c_in = dim + (d_c if use_texture_prior else 0)
        if pos_embedding:
            self.pos_embedding = nn.Parameter(torch.zeros(self.n, dim))
        if variant == "paper":
            self.mlp_f = _mlp(c_in, dim, mlp_activation)
            if use_global_feature:
                self.mlp_g = _mlp(2 * dim, dim, mlp_activation)
        else:
            if use_global_feature:
                self.mlp_hair = _mlp(c_in, dim, mlp_activation)
            self.mlp_head = _mlp(c_in, dim, mlp_activation)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)

    def forward(self, feat, prior=None):
        """feat [B, D, h, w], prior P [h*w, d_c] (or [h, w, d_c]) -> F_hat [B, D, h, w]."""
        b, d, h, w = feat.shape
        x = feat.reshape(b, d, h * w).permute(0, 2, 1)  # [B, N, D], row-major positions

        def with_prior(t):
            if not self.use_texture_prior:
                return t
            p = prior.reshape(1, self.n, self.d_c).to(t.dtype).expand(b, -1, -1)
            return torch.cat([t, p], -1)

        if self.variant == "paper":
            tokens = self.mlp_f(with_prior(x))
            if self.use_global_feature:
                g = tokens.mean(1, keepdim=True).expand_as(tokens)
                tokens = self.mlp_g(torch.cat([tokens, g], -1))
        else:
            tokens = self.mlp_head(with_prior(x))
            if self.use_global_feature:
                g = x.max(1, keepdim=True).values.expand_as(x)
                tokens = tokens + self.mlp_hair(with_prior(g))
        if hasattr(self, "pos_embedding"):
            tokens = tokens + self.pos_embedding
        group = self.frames_per_group if self.variant == "reference" else 1
        if b % group:
            raise ValueError(f"batch {b} is not a whole number of {group}-frame groups")
        tokens = self.transformer(tokens.reshape(b // group, group * self.n, d))
        return tokens.reshape(b, h, w, d).permute(0, 3, 1, 2)


class Driver(nn.Module):
    """Heatmap stacks [B, 7, R, R] -> F_hat [B, D, h, w] (``encoder`` + ``implicit``).

    Takes the fields of the JAX ``PriorGuidedDriver``.
    """

    def __init__(
        self,
        *,
        ch=64,
        ch_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        attn_resolutions=(16,),
        resolution=512,
        in_channels=7,
        dim=256,
        **head,
    ):
        super().__init__()
        for k in ("dtype", "param_dtype"):
            head.pop(k, None)
        self.encoder = Encoder(
            ch=ch,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            z_channels=dim,
            resolution=resolution,
            in_channels=in_channels,
        )
        self.implicit = DriverHead(dim=dim, **head)
        self.eval()

    def forward(self, heatmaps, prior=None):
        return self.implicit(self.encoder(heatmaps), prior)


# -------------------------------------------------------------------------------------------------
# Loading.
# -------------------------------------------------------------------------------------------------
def load_state_dict_strict(module: nn.Module, sd: Mapping, source: str, skip=()) -> None:
    """Loads numpy ``sd`` into ``module`` after checking every key and shape.

    Args:
      module: the target module.
      sd: ``{key: np.ndarray}``.
      source: file name for messages.
      skip: key prefixes that are recognised but not loaded (e.g. ``'loss.'``).

    Raises:
      convert.StateDictError: missing, unexpected or mis-shaped keys (all listed).
    """
    own = module.state_dict()
    problems = {"missing": [], "unexpected": [], "mismatched": []}
    for k, v in own.items():
        if k not in sd:
            problems["missing"].append(k)
        elif tuple(sd[k].shape) != tuple(v.shape):
            problems["mismatched"].append(
                f"{k}: file {list(sd[k].shape)} vs expected {list(v.shape)}"
            )
    problems["unexpected"] = [k for k in sd if k not in own and not k.startswith(tuple(skip))]
    if any(problems.values()):
        raise convert.StateDictError(source, **problems)
    module.load_state_dict(
        {k: torch.from_numpy(np.array(sd[k], dtype=np.float32)) for k in own}, strict=True
    )


def _strip_prefix(sd: Mapping, source: str) -> dict:
    p = convert.MODULE_PREFIX
    if sd and not any(k.startswith(p) for k in sd):
        raise convert.StateDictError(
            source,
            unexpected=list(sd),
            hint="no key carries the 'module.' prefix (the reference would ignore them all)",
        )
    return {k[len(p) :] if k.startswith(p) else k: v for k, v in sd.items()}


def load_stage1(path: str, **overrides) -> VQModel:
    """A stage-1 ``.ckpt`` (exported by vpgc_jax, or the reference's own) as a torch VQModel.

    Exported files carry their model config and window table. For the reference's files the
    config is inferred from the shapes with the reference's knn window (r=4) and **hard** lookup
    (its stage-1 ``test.py``); pass ``lookup='soft'`` for the stage-2 rendering path.

    Args:
      path: the ``.ckpt`` file.
      **overrides: VQModel fields to override (e.g. ``lookup='soft'``).

    Raises:
      FileNotFoundError, torch_io.CheckpointFileError: unreadable or another kind of file.
      convert.StateDictError: missing, unexpected or mis-shaped keys.
    """
    obj = torch_io.load_raw(path)
    sd = torch_io.extract(obj, path, "stage1")
    meta = torch_io.meta(obj)
    fields = json.loads(meta["model"]) if "model" in meta else convert.infer_stage1_model(sd, path)
    fields.update(overrides)
    if "window_table" in meta and "table" not in overrides:
        fields["table"] = meta["window_table"].numpy()
    fields.pop("position_chunk", None)
    model = VQModel(**fields)
    load_state_dict_strict(model, sd, path, skip=("loss.",))
    return model


def load_driver(encoder_path: str, implicit_path: str, **fields) -> Driver:
    """Stage-2 ``Enc``/``Imp`` files (exported, or the reference's) as a torch Driver.

    Exported ``Imp`` files carry the driver config. For the reference's files pass the fields
    the shapes cannot tell, or rely on :func:`convert.infer_driver_model` via ``grid``:
    ``load_driver(enc, imp, grid=16)`` (heads=4 assumed).

    Raises:
      FileNotFoundError, torch_io.CheckpointFileError, convert.StateDictError.
    """
    enc = _strip_prefix(torch_io.load_state_dict(encoder_path, "encoder"), encoder_path)
    imp_obj = torch_io.load_raw(implicit_path)
    imp = _strip_prefix(torch_io.extract(imp_obj, implicit_path, "implicit"), implicit_path)
    meta = torch_io.meta(imp_obj)
    if "model" in meta:
        cfg = json.loads(meta["model"])
    else:
        grid = fields.pop("grid", 16)
        heads = fields.pop("heads", 4)
        p = convert.MODULE_PREFIX
        cfg = convert.infer_driver_model(
            {p + k: v for k, v in enc.items()},
            {p + k: v for k, v in imp.items()},
            grid,
            heads,
            (encoder_path, implicit_path),
        )
    cfg.update(fields)
    model = Driver(**cfg)
    load_state_dict_strict(model.encoder, enc, encoder_path)
    load_state_dict_strict(model.implicit, imp, implicit_path)
    return model


def load_export(directory: str, **stage1_overrides) -> tuple[VQModel, Driver | None]:
    """Loads what ``python -m vpgc_jax.export_torch`` wrote: (VQModel, Driver or None)."""
    path = os.path.join(directory, EXPORT_MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; not a directory written by export_torch")
    with open(path) as f:
        manifest = json.load(f)
    vq = load_stage1(os.path.join(directory, manifest["stage1"]["file"]), **stage1_overrides)
    driver = None
    if manifest.get("stage2"):
        s2 = manifest["stage2"]
        driver = load_driver(
            os.path.join(directory, s2["encoder_file"]),
            os.path.join(directory, s2["implicit_file"]),
        )
    return vq, driver
