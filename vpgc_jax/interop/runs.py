"""vpgc_jax run directories <-> parameters, for the export and import tools (needs JAX).

A run directory (``python -m vpgc_jax.train --config configs/{codebook,driver}.py:...``) holds
``config.json`` and orbax checkpoints ``checkpoints/<step>/{state,data}`` of its trainer's
TrainState. :func:`write_run` writes the same layout from imported parameters (a TrainState at
step 0 with fresh optimizer states, no data position), so ``train`` resumes from it; a stage-2 run
names its stage-1 run in ``config.codebook_workdir``.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vpgc_jax import checkpointing
from vpgc_jax.models.discriminator import MultiscaleDiscriminator
from vpgc_jax.trainers import codebook as codebook_trainer
from vpgc_jax.trainers import common
from vpgc_jax.trainers import driver as driver_trainer

IMPORT_RECORD = "imported_from.json"
load_run_config = codebook_trainer.load_run_config  # config.json of a run of either stage


def _first_device():
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def stage1_parts(config: ml_collections.ConfigDict):
    """(VQModel, discriminator, abstract TrainState) of a stage-1 config (no allocation).

    The model computes in float32 on every backend: interop compares it with PyTorch.
    """
    model = codebook_trainer.build_model(config, compute_dtype="float32")
    disc = MultiscaleDiscriminator(ndf=config.disc.ndf)
    ae_tx, d_tx = codebook_trainer.make_optimizers(config)
    init = codebook_trainer.make_init(model, disc, ae_tx, d_tx, config.resolution)
    return model, disc, jax.eval_shape(init, jax.random.PRNGKey(config.seed))


def read_stage1_run(workdir: str, step: int | None = None):
    """Restores a stage-1 run's config and TrainState (on the first device).

    Args:
      workdir: the run directory.
      step: checkpoint step (default: the latest).

    Returns:
      (config, step, TrainState).

    Raises:
      FileNotFoundError: no config.json, a run of another stage, or no checkpoint (at ``step``).
    """
    config, _, step, state = codebook_trainer.restore_run(workdir, step)
    return config, step, state


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
    """(PriorGuidedDriver, optimizer, abstract TrainState) of a stage-2 config (no allocation).

    The driver computes in float32 on every backend: interop compares it with PyTorch.
    """
    driver = driver_trainer.build_driver(config, cb_config, compute_dtype="float32")
    tx = driver_trainer.make_optimizer(config)
    prior_shape = (driver.grid_h, driver.grid_w, driver.d_c)
    init = driver_trainer.make_init(driver, tx, cb_config.resolution, prior_shape)
    return driver, tx, jax.eval_shape(init, jax.random.PRNGKey(config.seed))


def read_driver_run(workdir: str, cb_config: ml_collections.ConfigDict, step: int | None = None):
    """Restores a stage-2 run's config, its driver module and TrainState (first device).

    Args:
      workdir: the stage-2 run directory.
      cb_config: the config of the stage-1 run it drives (shapes the driver).
      step: checkpoint step (default: the latest).

    Returns:
      (config, PriorGuidedDriver, step, TrainState).

    Raises:
      FileNotFoundError: no config.json, a run of another stage, or no checkpoint (at ``step``).
      ValueError: the checkpoint does not fit the driver that ``cb_config`` shapes.
    """
    return driver_trainer.restore_run(workdir, cb_config, step, compute_dtype="float32")


def build_driver_state(config, cb_config, params):
    """A step-0 stage-2 TrainState holding ``params`` (rng split as ``make_init``; fresh Adam).

    Raises:
      ValueError: params that do not fit the config's driver.
    """
    _, tx, abstract = driver_parts(config, cb_config)
    _, k_state = jax.random.split(jax.random.PRNGKey(config.seed))
    params = jax.tree.map(jnp.asarray, params)
    _check_like(params, abstract.params, "driver params")
    state = driver_trainer.TrainState(
        step=jnp.int32(0), params=params, opt_state=tx.init(params), rng=k_state
    )
    _check_like(state, abstract, "TrainState")
    return state


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


def build_stage1_state(config: ml_collections.ConfigDict, params, disc_vars=None):
    """A step-0 TrainState holding ``params`` (and ``disc_vars``), as the trainer's init would.

    The rng splits follow ``make_init`` (model, discriminator, state); the optimizer states are
    fresh; without ``disc_vars`` the discriminator is freshly initialised.

    Raises:
      ValueError: params or discriminator variables that do not fit the config's model.
    """
    _, disc, abstract = stage1_parts(config)
    ae_tx, d_tx = codebook_trainer.make_optimizers(config)
    _, k_disc, k_state = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    params = jax.tree.map(jnp.asarray, params)
    _check_like(params, abstract.params, "params")
    if disc_vars is None:
        x = jnp.zeros((1, config.resolution, config.resolution, 3), jnp.float32)
        disc_vars = jax.jit(lambda k: disc.init(k, x, train=False))(k_disc)
    disc_vars = jax.tree.map(jnp.asarray, disc_vars)
    _check_like(disc_vars["params"], abstract.disc_params, "discriminator params")
    _check_like(disc_vars["batch_stats"], abstract.disc_batch_stats, "discriminator batch_stats")
    state = codebook_trainer.TrainState(
        step=jnp.int32(0),
        params=params,
        opt_state=ae_tx.init(params),
        disc_params=disc_vars["params"],
        disc_batch_stats=disc_vars["batch_stats"],
        disc_opt_state=d_tx.init(disc_vars["params"]),
        rng=k_state,
    )
    _check_like(state, abstract, "TrainState")
    return state


@contextlib.contextmanager
def atomic_directory(out: str):
    """Yields a temporary sibling of ``out`` that is renamed to ``out`` if the block succeeds.

    On any error the temporary directory is removed, so nothing is left at ``out``.

    Raises:
      FileExistsError: ``out`` exists.
    """
    out = os.path.abspath(out.rstrip("/"))
    if os.path.lexists(out):
        raise FileExistsError(f"{out}: exists; choose a new --out")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_run(directory: str, config: ml_collections.ConfigDict, state, record: dict) -> None:
    """Writes a run directory: config.json, checkpoints/0 (orbax) and imported_from.json.

    Args:
      directory: a path that does not exist yet (use :func:`atomic_directory` around it).
      config: the run config.
      state: the TrainState to save as step 0.
      record: JSON-able provenance written to imported_from.json.
    """
    os.makedirs(directory)
    common.write_json(os.path.join(directory, "config.json"), config.to_dict())
    manager = checkpointing.make_manager(os.path.join(directory, "checkpoints"))
    checkpointing.save(manager, 0, state, None)
    manager.wait_until_finished()
    manager.close()
    with open(os.path.join(directory, IMPORT_RECORD), "w") as f:
        json.dump(record, f, indent=2, default=_jsonable)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return str(x)
