"""vpgc_jax run directories <-> parameters, for the export and import tools (needs JAX).

A run directory (``python -m vpgc_jax.train --config configs/{codebook,driver}.py:...``) holds
``config.json`` and orbax checkpoints ``checkpoints/<step>/{state,data}`` of its trainer's
TrainState; `vpgc_jax.runs` restores the parts export needs. :func:`write_run` writes the same
layout from imported parameters as a weights-only checkpoint at step 0 (``step``, ``params`` and,
for stage 1, maybe the discriminator's; no optimizer states, no data position): ``train`` starts
from it with fresh optimizer states. A stage-2 run names its stage-1 run in
``config.codebook_workdir``.
"""

import contextlib
import importlib.util
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections

from vpgc_jax import checkpointing, outputs, writers
from vpgc_jax import runs as vpgc_runs

IMPORT_RECORD = "imported_from.json"
DISC_FIELDS = ("disc_params", "disc_batch_stats")


def stage1_parts(config: ml_collections.ConfigDict):
    """(VQModel, abstract fields) of a stage-1 config (no allocation).

    The fields are the TrainState's ``params``, ``disc_params`` and ``disc_batch_stats``, as
    pytrees of `jax.ShapeDtypeStruct`. The model computes in float32 on every backend: interop
    compares it with PyTorch.
    """
    model = vpgc_runs.build_model(config, compute_dtype="float32")
    disc = vpgc_runs.build_discriminator(config)
    (x,) = vpgc_runs.model_inputs(model)
    disc_vars = vpgc_runs.abstract_variables(disc, (x,), train=False)
    return model, {
        "params": vpgc_runs.abstract_variables(model, (x,))["params"],
        "disc_params": disc_vars["params"],
        "disc_batch_stats": disc_vars["batch_stats"],
    }


def read_stage1_run(workdir: str, step: int | None = None, with_disc: bool = False):
    """Restores a stage-1 run's config and parameters (and discriminator), on the first device.

    Args:
      workdir: the run directory.
      step: checkpoint step (default: the latest).
      with_disc: also restore ``disc_params`` and ``disc_batch_stats``.

    Returns:
      (config, step, {'params', and with `with_disc` 'disc_params', 'disc_batch_stats'}).

    Raises:
      FileNotFoundError: no config.json, a run of another stage, or no checkpoint (at ``step``).
      ValueError: `with_disc` on a checkpoint without a discriminator (an imported one).
    """
    config = vpgc_runs.load_run_config(workdir, "codebook")
    _, abstract = stage1_parts(config)
    names = ("params", *DISC_FIELDS) if with_disc else ("params",)
    step, fields = vpgc_runs.restore_fields(workdir, {k: abstract[k] for k in names}, step)
    return config, step, fields


def repo_config(stage: str, variant: str) -> ml_collections.ConfigDict:
    """``configs/<stage>.py:<variant>`` from the repository's configs/ directory.

    Args:
      stage: 'codebook' or 'driver'.
      variant: a variant name of that file (e.g. 'reference').
    """
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", f"{stage}.py")
    spec = importlib.util.spec_from_file_location(f"_vpgc_{stage}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def driver_parts(config: ml_collections.ConfigDict, cb_config: ml_collections.ConfigDict):
    """(PriorGuidedDriver, abstract params) of a stage-2 config (no allocation).

    The driver computes in float32 on every backend: interop compares it with PyTorch.
    """
    driver = vpgc_runs.build_driver(config, cb_config, compute_dtype="float32")
    return driver, vpgc_runs.abstract_variables(driver, vpgc_runs.driver_inputs(driver))["params"]


def read_driver_run(workdir: str, cb_config: ml_collections.ConfigDict, step: int | None = None):
    """Restores a stage-2 run's config, its float32 driver and parameters (first device).

    Args:
      workdir: the stage-2 run directory.
      cb_config: the config of the stage-1 run it drives (shapes the driver).
      step: checkpoint step (default: the latest).

    Returns:
      `vpgc_jax.runs.Restored` (config, PriorGuidedDriver, params, step).

    Raises:
      FileNotFoundError: no config.json, a run of another stage, or no checkpoint (at ``step``).
      ValueError: the checkpoint does not fit the driver that ``cb_config`` shapes.
    """
    return vpgc_runs.load_driver(workdir, cb_config, step, compute_dtype="float32")


def _check_like(tree, like, what: str) -> None:
    """Raises ValueError unless ``tree`` has ``like``'s structure, shapes and dtypes."""
    if jax.tree.structure(tree) != jax.tree.structure(like):
        raise ValueError(f"{what}: tree structure differs from the model's")
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(like), strict=True
    ):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"{what}{jax.tree_util.keystr(path)}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
            )


def stage1_weights(config: ml_collections.ConfigDict, params, disc_vars=None) -> dict:
    """The weights-only state of an imported stage-1 run (what `write_run` saves).

    The stage-1 trainer starts from it with fresh optimizer states and, without ``disc_vars``,
    a freshly initialised discriminator (`vpgc_jax.trainers.common.restore_or_init`).

    Returns:
      {'step': 0, 'params': ..., and with `disc_vars` 'disc_params', 'disc_batch_stats'}.

    Raises:
      ValueError: params or discriminator variables that do not fit the config's model.
    """
    _, abstract = stage1_parts(config)
    weights = {"step": jnp.int32(0), "params": jax.tree.map(jnp.asarray, params)}
    _check_like(weights["params"], abstract["params"], "params")
    if disc_vars is not None:
        weights["disc_params"] = jax.tree.map(jnp.asarray, disc_vars["params"])
        weights["disc_batch_stats"] = jax.tree.map(jnp.asarray, disc_vars["batch_stats"])
        for k in DISC_FIELDS:
            _check_like(weights[k], abstract[k], k.replace("disc_", "discriminator "))
    return weights


def driver_weights(config, cb_config, params) -> dict:
    """The weights-only state {'step': 0, 'params': ...} of an imported stage-2 run.

    Raises:
      ValueError: params that do not fit the config's driver.
    """
    _, abstract = driver_parts(config, cb_config)
    params = jax.tree.map(jnp.asarray, params)
    _check_like(params, abstract, "driver params")
    return {"step": jnp.int32(0), "params": params}


@contextlib.contextmanager
def atomic_directory(out: str):
    """Yields a temporary sibling of ``out`` that is renamed to ``out`` if the block succeeds.

    On any error the temporary directory is removed, so nothing is left at ``out``.

    Raises:
      FileExistsError: ``out`` exists.
      vpgc_jax.outputs.OutputError: ``out`` cannot be written, or another process writes it.
    """
    out = outputs.resolve(out)
    with outputs.claim(out) as exists:
        if exists:
            raise FileExistsError(f"{out}: exists; choose a new --out")
        tmp = outputs.make_temp_dir(out)
        try:
            yield tmp
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def write_run(directory: str, config: ml_collections.ConfigDict, weights: dict, record: dict):
    """Writes a run directory: config.json, checkpoints/0 (orbax) and imported_from.json.

    Args:
      directory: a path that does not exist yet (use :func:`atomic_directory` around it).
      config: the run config.
      weights: the weights-only state to save as step 0 (`stage1_weights`, `driver_weights`).
      record: JSON-able provenance written to imported_from.json.
    """
    os.makedirs(directory)
    writers.write_json(os.path.join(directory, vpgc_runs.CONFIG_FILE), config.to_dict())
    manager = checkpointing.make_manager(os.path.join(directory, vpgc_runs.CHECKPOINTS))
    checkpointing.save(manager, 0, weights, None)
    checkpointing.finish(manager)
    manager.close()
    writers.write_json(os.path.join(directory, IMPORT_RECORD), record)
