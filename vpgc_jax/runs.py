"""Run directories -> models and parameters: the one place a trained run is restored.

A run directory (``python -m vpgc_jax.train --config configs/{codebook,driver}.py:... --workdir
DIR``) holds ``config.json`` and orbax checkpoints ``checkpoints/<step>/{state,data}`` of its
trainer's TrainState. Inference, evaluation, export and the driver trainer need only parameters:
`load_codebook` and `load_driver` restore the ``params`` field alone (orbax partial restore; the
optimizer moments and the discriminator are never read). The jitted functions every user of a
restored model calls are here too: `make_reconstruct` (stage 1) and `make_drive` (stage 2, the
inference path of spec §4.4), with `Batched` to run them at one compiled batch size.

Layering: data -> models -> losses -> runs -> trainers / inference / eval -> CLIs. Nothing here
imports a trainer; the trainers build their models with `build_model` / `build_driver`.
"""

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vpgc_jax import checkpointing, parallel, precision
from vpgc_jax.data import heatmaps as heatmaps_lib
from vpgc_jax.expression import ExpressionBasis
from vpgc_jax.models.audio import AudioToExpression
from vpgc_jax.models.discriminator import MultiscaleDiscriminator
from vpgc_jax.models.driver import PriorGuidedDriver, make_driver
from vpgc_jax.models.vqgan import VQModel, make_vqmodel

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
BASIS_FILE = "expression_basis.npz"  # an audio-model run's `ExpressionBasis`


class Restored(NamedTuple):
    """A restored run: its config, its Flax module, the parameters and the checkpoint step."""

    config: ml_collections.ConfigDict
    model: VQModel | PriorGuidedDriver
    params: dict
    step: int


# -------------------------------------------------------------------------------------------------
# Configs and models.
# -------------------------------------------------------------------------------------------------
def load_run_config(workdir: str, stage: str | None = None) -> ml_collections.ConfigDict:
    """The config a run saved in ``workdir/config.json`` (JSON lists back to tuples).

    Args:
      workdir: a run directory of either stage.
      stage: 'codebook' or 'driver' to require that stage.

    Raises:
      FileNotFoundError: `workdir` holds no config.json (not a run directory), or (with `stage`)
        a run of the other stage.
    """
    path = os.path.join(os.path.expanduser(workdir), CONFIG_FILE)
    if not os.path.isfile(path):
        kind = {"codebook": "stage-1 ", "driver": "stage-2 ", "audio": "audio-model "}.get(
            stage or "", ""
        )
        raise FileNotFoundError(f"{path}: missing; not a {kind}run directory")
    with open(path) as f:
        raw = upgrade_config(json.load(f))
    raw["model"] = _tuples(raw["model"])
    config = ml_collections.ConfigDict(raw)
    saved = config.get("stage", "codebook")
    if stage is not None and saved != stage:
        want = {"codebook": "a stage-1 run", "driver": "a stage-2 run"}.get(
            stage, "an audio-model run"
        )
        raise FileNotFoundError(f"{workdir}: a {saved!r} run, not {want}")
    return config


def _tuples(tree: dict) -> dict:
    """JSON lists -> tuples (ml_collections fields such as ``ch_mult`` are tuples)."""
    return {
        k: _tuples(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v
        for k, v in tree.items()
    }


# -------------------------------------------------------------------------------------------------
# config.json before the model configs were nested (``model.K_c``, not ``model.codebook.K_c``).
# -------------------------------------------------------------------------------------------------
# Flat stage-1 fields by their nested section; the rest (resolution, grid_h, grid_w, in_channels,
# out_ch) are derived or fixed. The same flat names are the PyTorch modules' fields
# (`vpgc_jax.interop.torch_modules.VQModel`) and the reference's ddconfig.
STAGE1_SECTIONS = {
    "encoder": ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "dropout"),
    "codebook": (
        "K_c",
        "d_c",
        "r",
        "window",
        "lookup",
        "trainable",
        "init_scale",
        "position_chunk",
        "num_codes",
    ),
}
DRIVER_SECTIONS = {
    "encoder": ("ch", "ch_mult", "num_res_blocks", "attn_resolutions"),
    "transformer": ("depth", "heads", "dim_head", "mlp_dim", "dropout"),
}
DRIVER_TOP = ("variant", "use_texture_prior", "use_global_feature", "pos_embedding")
DRIVER_TOP += ("frames_per_group", "mlp_activation", "exemplar")


def nested_stage1_model(flat: dict) -> dict:
    """A flat stage-1 ``model`` dict (old config.json, `interop.convert.infer_stage1_model`) nested.

    Returns:
      {'encoder': {...}, 'embed_dim', 'codebook': {'kind', ...}} with the fields `flat` has.
    """
    out = {s: {k: flat[k] for k in keys if k in flat} for s, keys in STAGE1_SECTIONS.items()}
    out["codebook"]["kind"] = flat.get("codebook", "grid")
    if "embed_dim" in flat:
        out["embed_dim"] = flat["embed_dim"]
    return out


def nested_driver_model(flat: dict) -> dict:
    """A flat stage-2 ``model`` dict (old config.json, `interop.convert.infer_driver_model`) nested.

    Returns:
      {'variant', 'encoder': {...}, 'transformer': {...}, 'use_texture_prior', ...} with the
      fields `flat` has; its width, d_c, grid and resolution come from the stage-1 run.
    """
    out = {s: {k: flat[k] for k in keys if k in flat} for s, keys in DRIVER_SECTIONS.items()}
    out.update({k: flat[k] for k in DRIVER_TOP if k in flat})
    return out


def flat_stage1_model(config: ml_collections.ConfigDict) -> dict:
    """The stage-1 model of `config` as one flat dict, the inverse of `nested_stage1_model`.

    Adds the derived fields (resolution, grid_h, grid_w, in_channels, out_ch): the layout of the
    PyTorch modules and of the reference's config.yaml.
    """
    m = config.model.to_dict()
    cb = dict(m["codebook"])
    side = config.resolution // 2 ** (len(m["encoder"]["ch_mult"]) - 1)
    flat = {**m["encoder"], "resolution": config.resolution, "in_channels": 3, "out_ch": 3}
    flat.update(embed_dim=m["embed_dim"], codebook=cb.pop("kind"), grid_h=side, grid_w=side)
    return {**flat, **cb}


def upgrade_config(raw: dict) -> dict:
    """A config.json of either format -> the current one (model configs nested).

    Runs written before the nesting have a flat ``model`` (and a stage-2 run's ``codebook_model``
    record of its stage-1 model); they restore, train on and export unchanged.
    """
    model = raw.get("model", {})
    if "encoder" in model or raw.get("stage") == "audio":
        return raw
    raw = dict(raw)
    if raw.get("stage", "codebook") == "codebook":
        raw["model"] = nested_stage1_model(model)
    else:
        raw["model"] = nested_driver_model(model)
        if raw.get("codebook_model") is not None and "encoder" not in raw["codebook_model"]:
            raw["codebook_model"] = nested_stage1_model(raw["codebook_model"])
    return raw


# -------------------------------------------------------------------------------------------------
# Models.
# -------------------------------------------------------------------------------------------------
def build_model(config: ml_collections.ConfigDict, compute_dtype: str | None = None) -> VQModel:
    """The VQModel of a stage-1 config: ``make_vqmodel(**config.model, ...)``.

    Args:
      config: a stage-1 config (runs saved before ``compute_dtype`` / ``remat`` existed get
        'auto' / False).
      compute_dtype: overrides ``config.compute_dtype`` (e.g. 'float32' for export parity).

    Raises:
      ValueError: an unknown codebook kind or field.
    """
    name = compute_dtype or config.get("compute_dtype", "auto")
    dtype = precision.compute_dtype(name, part="autoencoder")
    return make_vqmodel(
        **config.model.to_dict(),
        resolution=config.resolution,
        remat=config.get("remat", False),
        dtype=dtype,
    )


def build_discriminator(config: ml_collections.ConfigDict) -> MultiscaleDiscriminator:
    """The 2-scale PatchGAN of a stage-1 config (spec §2.2)."""
    return MultiscaleDiscriminator(ndf=config.disc.ndf)


def build_driver(
    config: ml_collections.ConfigDict, cb_config, compute_dtype: str | None = None
) -> PriorGuidedDriver:
    """The PriorGuidedDriver of a stage-2 config, shaped to its stage-1 run's config.

    ``make_driver(**config.model, ...)`` with the stage-1 encoder's width, d_c and resolution;
    ``compute_dtype`` overrides ``config.compute_dtype`` (e.g. 'float32' for export parity).

    Raises:
      ValueError: the texture prior is asked of a stage-1 run without a grid codebook, or the
        heatmap encoder does not reach the stage-1 latent grid.
    """
    cbm = cb_config.model
    if config.model.use_texture_prior and cbm.codebook.kind != "grid":
        raise ValueError(
            f"use_texture_prior needs a grid-codebook stage-1 run; {config.codebook_workdir} "
            f"has codebook={cbm.codebook.kind!r} (set --config.model.use_texture_prior=False)"
        )
    driver = make_driver(
        **config.model.to_dict(),
        dim=cbm.encoder.z_channels,
        d_c=cbm.codebook.d_c,
        resolution=cb_config.resolution,
        in_channels=len(heatmaps_lib.STACK_OFFSETS),
        remat=config.get("remat", False),
        dtype=precision.compute_dtype(compute_dtype or config.get("compute_dtype", "auto")),
    )
    stage1_grid = build_model(cb_config).encoder.latent_grid
    if driver.grid != stage1_grid:
        raise ValueError(
            f"the heatmap encoder ({len(config.model.encoder.ch_mult) - 1} downsamplings of "
            f"{cb_config.resolution} px) gives a {driver.grid[0]}x{driver.grid[1]} grid, the "
            f"stage-1 model a {stage1_grid[0]}x{stage1_grid[1]} one "
            "(set --config.model.encoder.ch_mult to as many levels as stage 1's)"
        )
    return driver


def frame_group(driver: PriorGuidedDriver) -> int:
    """Consecutive frames the driver attends over jointly: the reference variant's group, else 1.

    Its batches must hold whole groups, in frame order.
    """
    return driver.frames_per_group if driver.variant == "reference" else 1


def driver_inputs(driver: PriorGuidedDriver) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Example (heatmaps [n, R, R, 7], prior [h, w, d_c][, exemplar [n, h, w, D]]) inputs of the
    driver, for init; the exemplar features only for an exemplar driver."""
    n = frame_group(driver)
    r, c = driver.resolution, driver.heatmap_encoder.in_channels
    inputs = (
        jax.ShapeDtypeStruct((n, r, r, c), jnp.float32),
        jax.ShapeDtypeStruct((*driver.grid, driver.d_c), jnp.float32),
    )
    if driver.exemplar:
        inputs += (jax.ShapeDtypeStruct((n, *driver.grid, driver.dim), jnp.float32),)
    return inputs


def model_inputs(model: VQModel) -> tuple[jax.ShapeDtypeStruct, ...]:
    """An example image batch [1, R, R, 3] of the stage-1 model, for init."""
    return (jax.ShapeDtypeStruct((1, model.resolution, model.resolution, 3), jnp.float32),)


def abstract_variables(module, inputs, sharding=None, **kwargs) -> dict:
    """`jax.ShapeDtypeStruct`s of ``module.init(rng, *inputs, **kwargs)`` (nothing is computed).

    With `sharding`, every leaf carries it (the target of a restore).
    """
    tree = jax.eval_shape(lambda *xs: module.init(jax.random.PRNGKey(0), *xs, **kwargs), *inputs)
    return tree if sharding is None else checkpointing.abstract_with_shardings(tree, sharding)


# -------------------------------------------------------------------------------------------------
# Restore.
# -------------------------------------------------------------------------------------------------
def restore_fields(
    workdir: str, abstract_fields: dict, step: int | None = None, sharding=None
) -> tuple[int, dict]:
    """Restores named fields of a run's saved TrainState, nothing else.

    Args:
      workdir: a run directory.
      abstract_fields: {field: pytree of shapes}, e.g. ``{'params': ...}`` or, for export with the
        loss, ``{'disc_params': ..., 'disc_batch_stats': ...}``.
      step: checkpoint step; None or negative for the latest.
      sharding: where to place them (default: the first device).

    Returns:
      (step, {field: restored pytree}).

    Raises:
      FileNotFoundError: no checkpoint (at `step`).
      ValueError: a field is missing, or its shapes do not fit the checkpoint.
    """
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = checkpointing.abstract_with_shardings(abstract_fields, sharding)
    step = None if step is None or step < 0 else step
    directory = os.path.join(os.path.expanduser(workdir), CHECKPOINTS)
    step, fields = checkpointing.restore_fields(directory, abstract, step)
    return int(step), fields


def load_codebook(
    workdir: str, step: int | None = -1, sharding=None, compute_dtype: str | None = None
) -> Restored:
    """Restores a stage-1 run's config, VQModel and parameters (the params field only).

    Args:
      workdir: a stage-1 run directory (config.json + checkpoints/).
      step: checkpoint step; None or -1 for the latest.
      sharding: where to place the parameters (default: the first device).
      compute_dtype: overrides the run's ``compute_dtype`` for the returned model.

    Returns:
      `Restored` (config, VQModel, params, step).

    Raises:
      FileNotFoundError: not a stage-1 run, or no checkpoint (at that step).
    """
    config = load_run_config(workdir, "codebook")
    model = build_model(config, compute_dtype)
    abstract = abstract_variables(model, model_inputs(model))["params"]
    step, fields = restore_fields(workdir, {"params": abstract}, step, sharding)
    return Restored(config, model, fields["params"], step)


def load_driver(
    workdir: str,
    cb_config: ml_collections.ConfigDict,
    step: int | None = -1,
    sharding=None,
    compute_dtype: str | None = None,
) -> Restored:
    """Restores a stage-2 run's config, PriorGuidedDriver and parameters (the params field only).

    Args:
      workdir: a stage-2 run directory (config.json + checkpoints/).
      cb_config: the config of the stage-1 run it drives (shapes the driver).
      step: checkpoint step; None or -1 for the latest.
      sharding: where to place the parameters (default: the first device).
      compute_dtype: overrides the run's ``compute_dtype`` for the returned driver.

    Returns:
      `Restored` (config, PriorGuidedDriver, params, step).

    Raises:
      FileNotFoundError: no config.json, a run of another stage, or no checkpoint (at `step`).
      ValueError: the checkpoint does not fit the driver that `cb_config` shapes.
    """
    config = load_run_config(workdir, "driver")
    driver = build_driver(config, cb_config, compute_dtype)
    abstract = abstract_variables(driver, driver_inputs(driver))["params"]
    try:
        step, fields = restore_fields(workdir, {"params": abstract}, step, sharding)
    except ValueError as e:  # orbax: shapes or structure differ
        raise ValueError(f"{workdir}: checkpoint does not fit this stage-1 run's model: {e}") from e
    return Restored(config, driver, fields["params"], step)


class AudioRun(NamedTuple):
    """A restored audio-to-expression run (issue 20)."""

    config: ml_collections.ConfigDict
    model: AudioToExpression
    params: dict
    step: int
    basis: ExpressionBasis


def build_audio_model(config: ml_collections.ConfigDict, num_coefficients: int):
    """``AudioToExpression(**config.model)`` predicting `num_coefficients` coefficients from the
    centre of the stored windows, ``2 * shift_hops`` mel frames shorter (the training jitter)."""
    window = config.features.window - 2 * config.get("shift_hops", 0)
    return AudioToExpression(
        num_coefficients=num_coefficients, window=window, **config.model.to_dict()
    )


def audio_inputs(window: int, n_mels: int) -> tuple[jax.ShapeDtypeStruct, ...]:
    """An example mel batch [1, W, M], for init."""
    return (jax.ShapeDtypeStruct((1, window, n_mels), jnp.float32),)


def load_audio_model(workdir: str, step: int | None = -1, sharding=None) -> AudioRun:
    """Restores an audio-model run: config, module, parameters (params only) and its basis.

    Args:
      workdir: an audio-model run directory (config.json, expression_basis.npz, checkpoints/).
      step: checkpoint step; None or -1 for the latest.
      sharding: where to place the parameters (default: the first device).

    Raises:
      FileNotFoundError: not an audio-model run, no basis file, or no checkpoint (at `step`).
    """
    config = load_run_config(workdir, "audio")
    path = os.path.join(os.path.expanduser(workdir), BASIS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; the audio-model run is incomplete")
    basis = ExpressionBasis.load(path)
    model = build_audio_model(config, basis.num_components)
    inputs = audio_inputs(config.features.window, config.features.n_mels)
    abstract = abstract_variables(model, inputs)["params"]
    step, fields = restore_fields(workdir, {"params": abstract}, step, sharding)
    return AudioRun(config, model, fields["params"], step, basis)


def make_predict_coefficients(model: AudioToExpression):
    """jit(predict(params, mel [B, W, M]) -> coefficients [B, K] float32), eval mode."""
    return jax.jit(lambda params, mel: model.apply({"params": params}, mel))


def texture_prior(vq: VQModel, params, driver: PriorGuidedDriver) -> jax.Array:
    """The stage-1 texture prior P [h, w, d_c] the driver is fed (Sec. 3.3).

    A vanilla codebook has none: zeros of the driver's prior shape (the driver then must not use
    it).
    """
    if vq.is_grid:
        return jax.jit(lambda p: vq.apply({"params": p}, method=VQModel.prior))(params)
    return jnp.zeros(driver_inputs(driver)[1].shape, jnp.float32)


# -------------------------------------------------------------------------------------------------
# The jitted functions of a restored model.
# -------------------------------------------------------------------------------------------------
def make_reconstruct(model: VQModel):
    """jit(reconstruct(params, x [B, R, R, 3]) -> x_rec [B, R, R, 3] float32), eval mode."""

    def reconstruct(params, x):
        return model.apply({"params": params}, x)[0]

    return jax.jit(reconstruct)


def make_drive(driver: PriorGuidedDriver, vq: VQModel):
    """jit(drive(params, vq_params, prior, heatmaps[, exemplar]) -> frames): the inference path
    (spec §4.4).

    heatmaps [B, R, R, 7] (and, for an exemplar driver, Z_ex [B, h, w, D] from
    `vpgc_jax.exemplars`) -> driver (eval mode) -> F_hat -> quant_conv -> codebook ->
    post_quant_conv -> decoder -> [B, R, R, 3] float32 frames, about [-1, 1].
    """

    def drive(params, vq_params, prior, heatmaps, exemplar=None):
        f = driver.apply({"params": params}, heatmaps, prior, exemplar)
        return vq.apply({"params": vq_params}, f, method=VQModel.decode_features)

    return jax.jit(drive)


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Pads the leading axis of `x` to `size` with copies of its last entry (one compiled shape).

    Raises:
      ValueError: `x` is empty or longer than `size`.
    """
    if not 0 < len(x) <= size:
        raise ValueError(f"expected 1 to {size} entries, got {len(x)}")
    pad = size - len(x)
    return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x


class Batched:
    """Calls a jitted ``fn(*args, x)`` at one batch size, with `x` split over the data mesh.

    Args:
      fn: e.g. `make_reconstruct`'s (args: params) or `make_drive`'s (args: params, vq_params,
        prior).
      mesh: the data mesh.
      batch: the compiled batch size (a multiple of the device count).
    """

    def __init__(self, fn, mesh: jax.sharding.Mesh, batch: int):
        if batch % mesh.size:
            raise ValueError(f"batch {batch} is not a multiple of the {mesh.size} devices")
        self.fn, self.mesh, self.batch = fn, mesh, batch

    def __call__(self, *args_and_x) -> np.ndarray:
        """``fn(*args, x)`` for x [n <= batch, ...], padded and cut back: float32 numpy [n, ...].

        `x` may also be a tuple of arrays with the same n (e.g. heatmaps and exemplar features):
        each is padded and split, and passed as ``fn(*args, *x)``.
        """
        *args, x = args_and_x
        xs = x if isinstance(x, tuple) else (x,)
        n = len(xs[0])
        sharding = parallel.data_sharded(self.mesh)
        xbs = [
            jax.device_put(pad_batch(np.asarray(a, np.float32), self.batch), sharding) for a in xs
        ]
        return np.asarray(parallel.fetch(self.fn(*args, *xbs)), np.float32)[:n]  # all processes

    def over(self, *args_and_x) -> np.ndarray:
        """Like calling it, for any number of entries (in chunks of ``batch``)."""
        *args, x = args_and_x
        xs = x if isinstance(x, tuple) else (x,)
        chunks = [
            self(*args, tuple(a[i : i + self.batch] for a in xs))
            for i in range(0, len(xs[0]), self.batch)
        ]
        return np.concatenate(chunks)
