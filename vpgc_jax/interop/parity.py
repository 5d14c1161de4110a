"""Numerical parity on real inputs: vpgc_jax float32 against float64 and against our PyTorch module.

The float64 truth is our PyTorch module (`torch_modules`) in float64, which matches the released
code in float64 to ~1e-8 (issue 15); a vpgc_jax float64 run is added when JAX runs with
``jax_enable_x64`` (``benchmarks/parity512.py`` turns it on). Models get their initial weights plus
N(0, 0.02) noise on every tensor, so norms, biases and the codebook are off their defaults. Inputs
are real: heatmap stacks drawn from a prepared clip's landmarks, and its frames.

Used by ``tests/test_parity.py`` (256 px) and ``benchmarks/parity512.py`` (512 px, the figures in
the README's interop section).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib
from vpgc_jax.export_torch import module_fields
from vpgc_jax.interop import convert
from vpgc_jax.interop import torch_modules as tm
from vpgc_jax.models.driver import PriorGuidedDriver
from vpgc_jax.models.vqgan import VQModel

torch = tm.torch
NOISE = 0.02  # std of the noise added to every initialised tensor (as in issue 15's check)


def real_heatmaps(dataset_dir: str, resolution: int, num: int = 4, start: int = 10) -> np.ndarray:
    """Heatmap stacks of train frames start..start+num-1 of a prepared dataset.

    The landmarks (crop pixels at the dataset's size) are scaled to ``resolution``.

    Returns:
      [num, resolution, resolution, 7] float32 in [0, 1].
    """
    size = frames_lib.load_meta(dataset_dir)["size"]
    lm = frames_lib.load_landmarks(dataset_dir, "train")["landmarks"] * (resolution / size)
    stacks = [heatmaps_lib.heatmap_stack(lm, t, resolution) for t in range(start, start + num)]
    return np.stack(stacks)


def noisy_params(module, *inputs, seed: int = 0):
    """``module.init`` params plus N(0, NOISE) on every tensor, as float32 numpy arrays."""
    params = module.init(jax.random.PRNGKey(seed), *inputs)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: (np.asarray(a) + NOISE * rng.normal(size=a.shape)).astype(np.float32), params
    )


# A narrower stage-1 model with the paper's depth (5 downsamplings, grid R/32) that decodes ~6x
# faster on CPU: the renderer of tests/test_parity.py.
LIGHT_STAGE1 = dict(ch=32, num_res_blocks=1, z_channels=64, embed_dim=64, K_c=64)


def stage1_model(
    resolution: int, lookup: str = "soft", dtype=jnp.float32, light: bool = False
) -> VQModel:
    """The paper's stage-1 architecture (spec §1.1) at ``resolution`` (grid resolution / 32), or
    with ``light`` the narrower `LIGHT_STAGE1`."""
    grid = resolution // 32
    return VQModel(
        resolution=resolution, grid_h=grid, grid_w=grid, lookup=lookup, dtype=dtype,
        param_dtype=dtype, **(LIGHT_STAGE1 if light else {}),
    )  # fmt: skip


def driver_model(
    variant: str, resolution: int, dtype=jnp.float32, dim: int = 256, group: int = 4
) -> PriorGuidedDriver:
    """The spec §4 driver ('reference': 4 layers attending jointly over ``group`` frames; 'paper':
    3 per-frame layers with the positional embedding) at ``resolution`` (grid resolution / 32),
    predicting ``dim`` features."""
    grid = resolution // 32
    extra = {"depth": 4, "frames_per_group": group} if variant == "reference" else {}
    extra = extra or {"pos_embedding": True}
    return PriorGuidedDriver(
        variant=variant, resolution=resolution, grid_h=grid, grid_w=grid, dtype=dtype,
        param_dtype=dtype, dim=dim, **extra,
    )  # fmt: skip


def torch_stage1(vq: VQModel, params, double: bool):
    model = tm.VQModel(**{k: v for k, v in module_fields(vq).items() if k != "position_chunk"})
    tm.load_state_dict_strict(model, convert.stage1_state_dict(jax.device_get(params)), "parity")
    return model.double() if double else model


def torch_driver(driver: PriorGuidedDriver, params, double: bool):
    model = tm.Driver(**module_fields(driver))
    n = len(convert.MODULE_PREFIX)
    enc, imp = (
        {k[n:]: v for k, v in sd.items()}
        for sd in convert.driver_state_dicts(jax.device_get(params))
    )
    tm.load_state_dict_strict(model.encoder, enc, "parity Enc")
    tm.load_state_dict_strict(model.implicit, imp, "parity Imp")
    return model.double() if double else model


def _nchw(x: np.ndarray, double: bool):
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    return t.double() if double else t.float()


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().astype(np.float64).transpose(0, 2, 3, 1)


def rel_l2(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _x64() -> bool:
    return bool(jax.config.jax_enable_x64)


@dataclasses.dataclass
class DriverParity:
    """Stage 2 at one resolution: features F_hat and the frame rendered from them.

    Feature figures are relative L2 against the float64 truth; frame figures are max abs
    differences on [-1, 1]. ``*_jax64`` are None unless JAX runs with x64.
    """

    variant: str
    resolution: int
    features_jax32: float
    features_torch32: float
    features_jax32_vs_torch32: float
    frame_jax32: float
    frame_torch32: float
    frame_jax32_vs_torch32: float
    features_jax64: float | None = None
    frame_jax64: float | None = None


def driver_parity(
    variant: str, heatmaps: np.ndarray, render_frames: int = 1, light_stage1: bool = False
) -> DriverParity:
    """Compares the stage-2 path (driver -> soft lookup -> decoder) on real heatmap stacks.

    Args:
      variant: 'reference' or 'paper'.
      heatmaps: [B, R, R, 7] float32 in [0, 1] (`real_heatmaps`); 'reference' attends jointly
        over groups of min(4, B) frames (B a multiple of it).
      render_frames: how many of the B predictions are decoded to frames (decoding is the cost).
      light_stage1: render with the narrower `LIGHT_STAGE1` model (the driver then predicts its
        64 features) instead of the paper's stage 1.
    """
    res = heatmaps.shape[1]
    vq = stage1_model(res, "soft", light=light_stage1)
    group = min(4, len(heatmaps))
    drv = driver_model(variant, res, dim=vq.z_channels, group=group)
    probe = jnp.zeros((1, res, res, 3), jnp.float32)
    vq_params = noisy_params(vq, probe, seed=1)
    prior = np.asarray(vq.apply({"params": vq_params}, method=VQModel.prior))
    params = noisy_params(drv, jnp.asarray(heatmaps), jnp.asarray(prior), seed=2)

    def render(model, p, vp, f):
        return model.apply({"params": vp}, f, method=VQModel.decode_features)

    f32 = np.asarray(jax.jit(drv.apply)({"params": params}, heatmaps, prior), np.float64)
    img32 = np.asarray(jax.jit(render, static_argnums=0)(vq, None, vq_params, f32[:render_frames]))
    torch_out = {}
    for double in (False, True):
        t_drv, t_vq = torch_driver(drv, params, double), torch_stage1(vq, vq_params, double)
        with torch.no_grad():
            p_t = torch.tensor(prior.reshape(-1, prior.shape[-1]))
            f = t_drv(_nchw(heatmaps, double), p_t.double() if double else p_t)
            img = t_vq.decode_features(f[:render_frames])
        torch_out[double] = (_nhwc(f), _nhwc(img))
    (ft32, it32), (f64, i64) = torch_out[False], torch_out[True]
    out = DriverParity(
        variant=variant,
        resolution=res,
        features_jax32=rel_l2(f32, f64),
        features_torch32=rel_l2(ft32, f64),
        features_jax32_vs_torch32=rel_l2(f32, ft32),
        frame_jax32=max_abs(img32, i64),
        frame_torch32=max_abs(it32, i64),
        frame_jax32_vs_torch32=max_abs(img32, it32),
    )
    if _x64():
        v64 = stage1_model(res, "soft", jnp.float64, light=light_stage1)
        d64 = driver_model(variant, res, jnp.float64, dim=vq.z_channels, group=group)
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        vp64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), vq_params)
        h64, q64 = jnp.asarray(heatmaps, jnp.float64), jnp.asarray(prior, jnp.float64)
        fj64 = jax.jit(d64.apply)({"params": p64}, h64, q64)
        ij64 = jax.jit(render, static_argnums=0)(v64, None, vp64, fj64[:render_frames])
        out.features_jax64 = rel_l2(fj64, f64)
        out.frame_jax64 = max_abs(ij64, i64)
    return out


@dataclasses.dataclass
class Stage1Parity:
    """Stage 1 reconstructions of real frames: max abs on [-1, 1] against the float64 truth."""

    lookup: str
    resolution: int
    recon_jax32: float
    recon_torch32: float
    index_flips: int | None  # hard lookup: indices of JAX float32 != float64 truth's
    recon_jax64: float | None = None


def stage1_parity(frames: np.ndarray, lookup: str) -> Stage1Parity:
    """Compares stage-1 reconstruction (encoder -> lookup -> decoder) of ``frames``.

    Args:
      frames: [B, R, R, 3] float32 in [-1, 1].
      lookup: 'soft' or 'hard'.
    """
    res = frames.shape[1]
    vq = stage1_model(res, lookup)
    params = noisy_params(vq, jnp.asarray(frames[:1]), seed=3)
    y32, aux = jax.jit(vq.apply)({"params": params}, frames)
    outs = {}
    for double in (False, True):
        with torch.no_grad():
            outs[double] = torch_stage1(vq, params, double)(_nchw(frames, double))
    y64, info64 = outs[True]
    flips = None
    if lookup == "hard":
        idx = np.asarray(aux["indices"]).reshape(info64["indices"].shape)
        flips = int(np.sum(idx != info64["indices"].numpy()))
    out = Stage1Parity(
        lookup=lookup,
        resolution=res,
        recon_jax32=max_abs(y32, _nhwc(y64)),
        recon_torch32=max_abs(_nhwc(outs[False][0]), _nhwc(y64)),
        index_flips=flips,
    )
    if _x64():
        v64 = stage1_model(res, lookup, jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        yj64, _ = jax.jit(v64.apply)({"params": p64}, jnp.asarray(frames, jnp.float64))
        out.recon_jax64 = max_abs(yj64, _nhwc(y64))
    return out
