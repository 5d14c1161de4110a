"""Orbax checkpoints of the training state and the grain data-iterator position (house style #12).

Layout: ``workdir/checkpoints/<step>/{state,data}``. Orbax writes each step into a temporary
directory and renames it when complete, so an interrupted save never looks like a checkpoint.
State is restored into the shardings of the abstract state it is given, so a run saved on N devices
restores on M. The data position is saved by every process (grain writes
``data/process_<i>-of-<n>.json``); the pipelines make it the same on all of them (the number of
global batches read, `vpgc_jax.data.pipeline`), so a run saved by n processes resumes in m.
"""

import json
import os

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


def _absolute(directory) -> str:
    """Orbax needs absolute paths: ``~`` expanded, relative paths made absolute."""
    return os.path.abspath(os.path.expanduser(os.fspath(directory)))


def make_manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """A CheckpointManager with items ``state`` (a pytree) and ``data`` (a grain iterator)."""
    directory = _absolute(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
    """Saves `state` and the iterator position at `step` (async; wait before exiting)."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    manager.save(step, args=ocp.args.Composite(**args), force=True)


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
    """Restores `step` into `abstract_state`'s shapes/shardings; moves `data_iterator`.

    Args:
      step: a step of `manager`.
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with `.sharding` (e.g. from
        `jax.eval_shape` plus the target shardings).
      data_iterator: a grain iterator whose position is set in place (or None), only once the
        state has restored.

    Returns:
      The restored state. A checkpoint saved without a data position (e.g. by
      ``vpgc_jax.import_torch``) leaves the iterator at its start.

    Raises:
      ValueError: the saved processes disagree on the data position (not written by vpgc_jax's
        pipelines), or no state file.
      Exception: orbax's and tensorstore's errors for a damaged step (see
        `vpgc_jax.trainers.resume.restore_intact`).
    """
    data_dir = manager.directory / str(step) / "data"
    position = None
    if data_iterator is not None and data_dir.exists():
        position = read_data_position(data_dir)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
    if position is not None:
        data_iterator.set_state(position)
    return restored["state"]


def read_data_position(data_dir) -> dict:
    """The data-iterator state saved in ``<step>/data`` by any number of processes.

    Raises:
      ValueError: no state file, or files that disagree.
    """
    files = sorted(data_dir.glob("process_*-of-*.json"))
    states = {f.name: json.loads(f.read_text()) for f in files}
    if not states:
        raise ValueError(f"{data_dir}: no data-iterator state")
    first = next(iter(states.values()))
    if any(state != first for state in states.values()):
        raise ValueError(f"{data_dir}: the processes saved different data positions: {states}")
    return first


def _checkpoint_step(directory: str, step: int | None) -> int:
    """`step` (None: the latest) if `directory` holds its checkpoint, else FileNotFoundError."""
    directory = _absolute(directory)
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=("state", "data"),
    )
    steps = sorted(manager.all_steps())
    step = manager.latest_step() if step is None else step
    if step is None or step not in steps:
        raise FileNotFoundError(f"{directory}: no checkpoint at step {step} (have {steps})")
    return step


def saved_fields(directory: str, step: int) -> set[str]:
    """Names of the top-level fields of the state saved at `step` (e.g. {'step', 'params'}).

    A trainer's checkpoint holds its whole TrainState; ``vpgc_jax.interop`` writes weights-only
    checkpoints ({'step', 'params'}, stage 1 optionally with the discriminator's).
    """
    path = epath.Path(_absolute(directory)) / str(step) / "state"
    return set(ocp.PyTreeCheckpointHandler().metadata(path).keys())


def restore_fields(directory: str, abstract_fields: dict, step: int | None = None):
    """Restores only the named top-level fields of a saved state (orbax partial restore).

    Args:
      directory: a ``checkpoints/`` directory.
      abstract_fields: {field name: pytree of `jax.ShapeDtypeStruct` with `.sharding`}, e.g.
        ``{'params': ...}``: the rest of the state (optimizer moments, ...) is never read.
      step: the step (default: the latest).

    Returns:
      (step, {field name: restored pytree}).

    Raises:
      FileNotFoundError: no checkpoint (at that step) under `directory`.
      ValueError: a field is missing or its shapes differ from the checkpoint's.
    """
    directory = _absolute(directory)
    step = _checkpoint_step(directory, step)
    missing = set(abstract_fields) - saved_fields(directory, step)
    if missing:
        raise ValueError(f"{directory}/{step}: the checkpoint has no {sorted(missing)}")
    args = ocp.args.PyTreeRestore(
        item=abstract_fields,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_fields),
        partial_restore=True,
    )
    handler = ocp.PyTreeCheckpointHandler()
    try:
        restored = handler.restore(epath.Path(directory) / str(step) / "state", args=args)
    finally:
        handler.close()
    return step, dict(restored)


def abstract_with_shardings(tree, sharding):
    """`jax.ShapeDtypeStruct`s of `tree` (arrays or structs), all with `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
