"""Orbax checkpoints of the training state and the grain data-iterator position (house style #12).

Layout: ``workdir/checkpoints/<step>/{state,data}``. Orbax writes each step into a temporary
directory and renames it when complete, so an interrupted save never looks like a checkpoint.
State is restored into the shardings of the abstract state it is given, so a run saved on N devices
restores on M. The data position is saved by every process (grain writes
``data/process_<i>-of-<n>.json``); the pipelines make it the same on all of them (the number of
global batches read, `vpgc_jax.data.pipeline`), so a run saved by n processes resumes in m.

Orbax keeps no checksums, so bytes changed inside a data file without changing its length would
restore silently. Once a step has committed, process 0 writes ``<step>/vpgc_sha256.json`` (the
size and SHA-256 of every file of the step; `write_manifests`, run before the next save and when
the trainer waits for its saves) and every restore checks it first (`verify_manifest`). A step
without one (killed between its commit and the manifest, or written before manifests existed) is
restored unchecked.
"""

import hashlib
import json
import os

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from vpgc_jax import writers

# The content manifest of a committed step, inside its directory (deleted and moved with it).
MANIFEST = "vpgc_sha256.json"


class CheckpointCorruptError(ValueError):
    """A step's files differ from the manifest written when it was saved."""


def _absolute(directory) -> str:
    """Orbax needs absolute paths: ``~`` expanded, relative paths made absolute."""
    return os.path.abspath(os.path.expanduser(os.fspath(directory)))


def make_manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """A CheckpointManager with items ``state`` (a pytree) and ``data`` (a grain iterator).

    The temporary directory of a save that was killed before it committed
    (``<step>.orbax-checkpoint-tmp-*``) is removed when the manager is created.
    """
    directory = _absolute(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
    """Saves `state` and the iterator position at `step` (async: call `finish` before exiting).

    Orbax waits for the previous save first; its manifest is written then (`finish`).
    """
    finish(manager)
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    manager.save(step, args=ocp.args.Composite(**args), force=True)


def finish(manager: ocp.CheckpointManager) -> None:
    """Waits for the manager's saves to commit, then writes the missing manifests (process 0)."""
    manager.wait_until_finished()
    if jax.process_index() == 0:
        for step in manager.all_steps():
            step_dir = os.path.join(str(manager.directory), str(step))
            if not os.path.exists(os.path.join(step_dir, MANIFEST)):
                writers.write_json(os.path.join(step_dir, MANIFEST), _file_digests(step_dir))


def _file_digests(step_dir: str) -> dict:
    """{relative path: {'size': bytes, 'sha256': hex}} of every file under `step_dir`."""
    out = {}
    for root, _, files in os.walk(step_dir):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel == MANIFEST:
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            out[rel] = {"size": os.path.getsize(path), "sha256": digest.hexdigest()}
    return dict(sorted(out.items()))


def verify_manifest(step_dir) -> bool:
    """Checks a step's files against its manifest (`MANIFEST`).

    Args:
      step_dir: ``checkpoints/<step>``.

    Returns:
      True when the manifest matches, False when the step has none (restored unchecked).

    Raises:
      CheckpointCorruptError: a listed file is missing or its size or SHA-256 differs (the first
        such file is named), or the manifest itself cannot be read.
    """
    step_dir = os.fspath(step_dir)
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            expected = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointCorruptError(f"{path}: unreadable manifest ({e})") from e
    actual = _file_digests(step_dir)
    for rel, want in expected.items():
        got = actual.get(rel)
        if got is None:
            why = "missing"
        elif got["size"] != want["size"]:
            why = f"{got['size']} bytes, {want['size']} when saved"
        elif got["sha256"] != want["sha256"]:
            why = "SHA-256 differs from the one recorded after the save (same length)"
        else:
            continue
        raise CheckpointCorruptError(f"{os.path.join(step_dir, rel)}: {why}")
    return True


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
      CheckpointCorruptError: the step's files differ from its manifest (`verify_manifest`).
      ValueError: the saved processes disagree on the data position (not written by vpgc_jax's
        pipelines), or no state file.
      Exception: orbax's and tensorstore's errors for a damaged step (see
        `vpgc_jax.trainers.resume.restore_intact`).
    """
    verify_manifest(manager.directory / str(step))
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
      CheckpointCorruptError: the step's files differ from its manifest (`verify_manifest`).
      ValueError: a field is missing or its shapes differ from the checkpoint's.
    """
    directory = _absolute(directory)
    step = _checkpoint_step(directory, step)
    verify_manifest(os.path.join(directory, str(step)))
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
