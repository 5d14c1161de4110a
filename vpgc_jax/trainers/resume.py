"""Starting and resuming a run safely: a workdir that is ours, a frozen config, intact checkpoints.

* `start_run` (called by both trainers before they write anything): a ``--workdir`` that exists
  must be empty, a run directory (``config.json``) or a sweep's run directory before its first
  start; anything else is refused. A run that has checkpoints keeps the config it started with:
  the requested config is compared with ``config.json`` and any difference outside `RESUMABLE`
  stops with one line naming the fields, before anything is written. ``config.json`` is written
  once (atomically) when the run starts; a resume never rewrites it, except to record a field the
  stored config left empty (an imported run's ``dataset_dir``).
* `restore_intact` restores the newest checkpoint that restores: a damaged latest step (a
  truncated or corrupt data file, a missing metadata file, files that differ from the step's
  content manifest, `checkpointing.verify_manifest`) is reported in one line, moved aside to
  ``workdir/damaged_checkpoints/<step>`` and the next older step is tried;
  ``--config.strict_resume=True`` makes a damaged step an error instead.
"""

import json
import os
import shutil

import jax
from jax.experimental import multihost_utils

from vpgc_jax import outputs, runs, writers

# Fields that may change when a run resumes: how long it trains, how often it logs, samples,
# evaluates and saves, how it computes (not what). Every other field is frozen at the start.
RESUMABLE = frozenset(
    {
        "num_steps",
        "log_every",
        "sample_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "num_eval_frames",
        "eval_batch_size",
        "num_sample_frames",
        "final_eval",
        "num_workers",
        "compute_dtype",
        "remat",
        "strict_resume",
    }
)
# Fields holding paths: equal when they name the same file.
PATH_FIELDS = ("dataset_dir", "codebook_workdir")
# Entries a run directory holds (a sweep writes its two files before the trainer starts).
RUN_ENTRIES = {
    runs.CONFIG_FILE,
    runs.CHECKPOINTS,
    runs.BASIS_FILE,
    "metrics.jsonl",
    "tensorboard",
    "samples",
    "eval.json",
    "damaged_checkpoints",
} | outputs.SWEEP_FILES


class ConfigChangedError(ValueError):
    """A resumed run asked for a config that differs from the one it started with."""


class CheckpointRestoreError(ValueError):
    """No checkpoint of a run restores (or, with ``strict_resume``, the latest does not)."""


def _flat(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}, JSON-normalised (tuples as lists)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(v, default=writers._jsonable))
    return out


def _unset(key: str, value) -> bool:
    """Whether a stored value records nothing (filled on the next start)."""
    return value is None or value == "" or (key == "codebook_step" and value < 0)


def _same(key: str, stored, requested) -> bool:
    if key in PATH_FIELDS and isinstance(stored, str) and isinstance(requested, str):
        return outputs.same_path(stored, requested)
    return stored == requested


def check_workdir(workdir: str) -> None:
    """Refuses a ``--workdir`` that exists and is neither empty nor a run directory.

    Raises:
      outputs.OutputError: a file, or a directory holding anything but a run's files.
    """
    if not os.path.lexists(workdir):
        return
    if not os.path.isdir(workdir):
        raise outputs.OutputError(workdir, "exists and is not a directory; choose another")
    entries = set(os.listdir(workdir))
    if runs.CONFIG_FILE in entries or entries <= RUN_ENTRIES:
        return
    extra = ", ".join(sorted(entries - RUN_ENTRIES)[:3])
    raise outputs.OutputError(
        workdir,
        f"exists and is not a run directory (no {runs.CONFIG_FILE}; holds {extra}); "
        "choose an empty or new --workdir",
    )


def frozen_differences(stored: dict, requested: dict) -> list[str]:
    """'field: stored -> requested' for each frozen field that differs (`RESUMABLE` excluded).

    Fields only one side has (runs written before a field existed) are not compared, nor stored
    fields that record nothing (`_unset`).
    """
    old, new = _flat(runs.upgrade_config(stored)), _flat(requested)
    diffs = []
    for key in sorted(old.keys() & new.keys()):
        if key.split(".")[0] in RESUMABLE or _unset(key, old[key]):
            continue
        if not _same(key, old[key], new[key]):
            diffs.append(f"{key}: {old[key]} -> {new[key]}")
    return diffs


def start_run(config, workdir: str) -> None:
    """Checks `workdir` and writes or checks its ``config.json``; call before writing anything.

    A new run (no checkpoint yet) gets `config` as its config.json; a run with checkpoints must
    be asked for the same frozen fields.

    Raises:
      outputs.OutputError: `workdir` is not a run directory (`check_workdir`).
      ConfigChangedError: frozen fields differ from the stored config (all listed).
    """
    workdir = outputs.resolve(workdir)
    check_workdir(workdir)
    path = os.path.join(workdir, runs.CONFIG_FILE)
    requested = config.to_dict()
    has_checkpoints = bool(
        os.path.isdir(os.path.join(workdir, runs.CHECKPOINTS))
        and any(n.isdigit() for n in os.listdir(os.path.join(workdir, runs.CHECKPOINTS)))
    )
    if not (has_checkpoints and os.path.isfile(path)):
        os.makedirs(workdir, exist_ok=True)
        writers.write_json(path, requested)
        return
    with open(path) as f:
        stored = json.load(f)
    diffs = frozen_differences(stored, requested)
    if diffs:
        raise ConfigChangedError(
            f"{workdir} was started with another config; a resumed run keeps it ("
            + "; ".join(diffs)
            + "). Use a new --workdir, or change only "
            + ", ".join(sorted(RESUMABLE))
        )
    old = _flat(runs.upgrade_config(stored))
    if any(_unset(k, v) and k in _flat(requested) for k, v in old.items()):
        fill = {k: v for k, v in _flat(requested).items() if k in old and _unset(k, old[k])}
        merged = runs.upgrade_config(stored)
        for key, value in fill.items():
            node = merged
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        writers.write_json(path, merged)


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()).split(" See full TensorStore details")[0] or type(e).__name__
    return f"{type(e).__name__}: {text[:limit]}"


def restore_intact(manager, restore_step, strict: bool, workdir: str):
    """``restore_step(step)`` for the newest step that restores; damaged newer ones moved aside.

    Args:
      manager: the run's orbax CheckpointManager.
      restore_step: ``restore_step(step) -> result``; raises when that step cannot be restored.
      strict: raise at the first damaged step instead of falling back.
      workdir: the run directory (damaged steps go to ``workdir/damaged_checkpoints``).

    Returns:
      (step, result), or (None, None) when there is no checkpoint.

    Raises:
      CheckpointRestoreError: `strict` and the latest step is damaged, or no step restores.
    """
    directory = str(manager.directory)
    damaged = []
    result = step = None
    for candidate in sorted(manager.all_steps(), reverse=True):
        try:
            result = restore_step(candidate)
            step = candidate
            break
        except Exception as e:  # Orbax and tensorstore raise many kinds for a damaged step.
            why = _one_line(e)
            if strict:
                raise CheckpointRestoreError(
                    f"{directory}/{candidate}: cannot be restored ({why}); "
                    "--config.strict_resume=False falls back to the newest step that restores"
                ) from e
            damaged.append(candidate)
            if jax.process_index() == 0:
                print(
                    f"warning: checkpoint step {candidate} in {directory} cannot be restored "
                    f"({why}); trying an older step",
                    flush=True,
                )
    if damaged and step is None:
        raise CheckpointRestoreError(
            f"{directory}: no checkpoint restores (steps {damaged} are damaged); "
            "use a new --workdir"
        )
    if damaged:
        _move_aside(manager, damaged, workdir)
        if jax.process_index() == 0:
            print(
                f"resuming from step {step}; damaged steps {damaged} moved to "
                f"{os.path.join(workdir, 'damaged_checkpoints')}",
                flush=True,
            )
    return step, result


def _move_aside(manager, steps: list[int], workdir: str) -> None:
    """Moves damaged step directories out of the manager's directory (process 0), then reloads."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vpgc_damaged_checkpoints")
    if jax.process_index() == 0:
        target = os.path.join(outputs.resolve(workdir), "damaged_checkpoints")
        os.makedirs(target, exist_ok=True)
        for s in steps:
            dest = os.path.join(target, str(s))
            if os.path.lexists(dest):
                shutil.rmtree(dest, ignore_errors=True)
            os.rename(os.path.join(str(manager.directory), str(s)), dest)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vpgc_damaged_checkpoints_moved")
    manager.reload()
