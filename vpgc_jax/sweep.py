"""Sweep launcher: one `vpgc_jax.train` run per point of a grid of config overrides, one table.

  python -m vpgc_jax.sweep --config configs/codebook.py:cpu128 --root runs/sweep_r \
      --set model.r=2,4,8 --set model.K_c=32,64 \
      --override dataset_dir=runs/macron128 --override num_steps=500

Flags:

* ``--set KEY=V1,V2,...`` (repeatable): a swept axis; the runs are the cartesian product of all
  axes. Values are split on commas outside brackets and quotes, so
  ``--set 'model.ch_mult=(1, 2),(1, 2, 2)'`` is two values.
* ``--override KEY=VALUE`` (repeatable): a fixed override applied to every run.
* ``--config SPEC`` given more than once: the configs are one more axis (swept key ``config``,
  first), e.g. ``--config configs/codebook.py:cpu128 --config configs/codebook.py:cpu128+vanilla``
  compares the presets (``model.codebook=vanilla`` alone keeps the grid preset's ``loss.beta``).
* Keys may carry a ``config.`` prefix. Each pair reaches the trainer verbatim as
  ``--config.KEY=VALUE`` (ml_collections parses it with the field's type; tuples as ``(1, 2)``).
  Keys are checked against the config before anything starts.

Each run is ``python -m vpgc_jax.train --config CONFIG --workdir ROOT/NAME --config.KEY=VALUE ...``
in a subprocess (same working directory as the launcher). NAME is built from the swept pairs:
the last component of each key (the whole key where two would clash), ``-``, the value (for
``config``, its variant) with characters outside ``[A-Za-z0-9.+-]`` replaced by ``-``, pairs
joined by ``_``; e.g. ``model.r=2, model.codebook=vanilla`` -> ``r-2_codebook-vanilla``. Names
that still collide get a short hash of their exact values appended.

Devices:

* GPU hosts: the GPUs are found without importing JAX (``--gpus``: ``auto`` reads
  ``CUDA_VISIBLE_DEVICES`` when set, else counts the lines of ``nvidia-smi -L``; or an explicit
  id list ``0,1,2,3``). They are split into groups of ``--devices-per-run`` and each run gets one
  group as its ``CUDA_VISIBLE_DEVICES``; runs beyond the number of groups wait until a group is
  free. ``--parallel`` can lower the number of concurrent runs further.
* CPU (no GPU found, or ``--gpus none``, which also hides the GPUs from the runs): ``--parallel``
  runs at once (default 1). With ``--devices-per-run N > 1`` each run gets
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (N virtual CPU devices).

Per run, ``ROOT/NAME/`` holds the trainer's files, ``sweep.log`` (the run's stdout and stderr,
appended on every attempt) and ``sweep_run.json`` (its swept values, command, and each attempt's
exit code and wall time). A run whose ``eval.json`` exists is skipped, so re-running the same
command finishes what is missing; an unfinished run resumes from its latest checkpoint. A failing
run is reported (name, exit code, the end of its log) and does not stop the others. Ctrl-C or
SIGTERM sends SIGTERM to the active runs (the trainer saves a checkpoint and exits) and stops.

At the end ``collect`` gathers every run's ``eval.json`` into ``ROOT/sweep.json`` and
``ROOT/sweep.md`` (the command line, then a markdown table: run, swept values, step, psnr, ssim,
lpips, the other top-level scalar metrics all finished runs share, wall time, status), and the
table is printed. ``--collect-only --root ROOT`` rebuilds the table without running anything;
``--dry-run`` prints the commands. Exit status: 0 when every run has its eval.json, 1 when some run
failed or ended without one, 2 for bad arguments or when started inside a multi-process job (the
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` / ``VPGC_DISTRIBUTED=1``
environment of `vpgc_jax.train`: every run would try to join it), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = "sweep_run.json"
LOG = "sweep.log"
EVAL = "eval.json"
CONFIG_AXIS = "config"  # the swept key of several --config
# Metrics shown first in the table; then other top-level scalars every finished run has, except
# the bookkeeping ones below (they stay in sweep.json).
MAIN_METRICS = ("step", "psnr", "ssim", "lpips")
BOOKKEEPING = ("num_frames", "resolution", "eval_seconds", "codebook_step")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_POLL_SECONDS = 0.5
_TAIL_LINES = 20


@dataclasses.dataclass
class Run:
    """One point of the sweep.

    Attributes:
      index: position in the sweep (table order).
      name: directory name under the sweep root.
      params: the swept KEY -> VALUE pairs of this run (values as given).
      command: the trainer's argv.
    """

    index: int
    name: str
    params: dict[str, str]
    command: list[str]


# ---------------------------------------------------------------------------------------------
# Parsing and planning.


def split_values(text: str) -> list[str]:
    """Splits 'a,b,(1, 2)' on commas outside brackets and quotes; strips each value.

    Raises:
      ValueError: unbalanced brackets or quotes.
    """
    values, current, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in {text!r}")
        elif ch == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    values.append("".join(current).strip())
    return values


def parse_pair(text: str) -> tuple[str, str]:
    """'config.model.r=2' -> ('model.r', '2') (the optional 'config.' prefix dropped).

    Raises:
      ValueError: no '=' or a malformed key.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    key = key.removeprefix("config.")
    if not sep or not _KEY.match(key):
        raise ValueError(f"expected KEY=VALUE with a dotted config key, got {text!r}")
    return key, value


def parse_axes(specs: Sequence[str]) -> dict[str, list[str]]:
    """`--set` specs -> {key: [values]} in the order given.

    Raises:
      ValueError: a malformed spec, an empty value, a repeated key or value.
    """
    axes: dict[str, list[str]] = {}
    for spec in specs:
        key, raw = parse_pair(spec)
        values = split_values(raw)
        if any(v == "" for v in values):
            raise ValueError(f"--set {spec!r}: empty value")
        if key in axes:
            raise ValueError(f"--set {key} given twice; list all its values in one --set")
        if len(set(values)) != len(values):
            raise ValueError(f"--set {spec!r}: a value is repeated")
        axes[key] = values
    return axes


def parse_overrides(specs: Sequence[str]) -> dict[str, str]:
    """`--override` specs -> {key: value}.

    Raises:
      ValueError: a malformed spec or a repeated key.
    """
    overrides: dict[str, str] = {}
    for spec in specs:
        key, value = parse_pair(spec)
        if key in overrides:
            raise ValueError(f"--override {key} given twice")
        overrides[key] = value
    return overrides


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:limit] or "empty"


def run_names(keys: Sequence[str], points: Sequence[Sequence[str]]) -> list[str]:
    """Deterministic, unique, filesystem-safe names for the points of a sweep over `keys`.

    Args:
      keys: the swept keys.
      points: one value per key for each run.

    Returns:
      One name per point, e.g. 'r-2_codebook-vanilla'; 'run' when nothing is swept.
    """
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [k if leaves.count(leaf) > 1 else leaf for k, leaf in zip(keys, leaves, strict=True)]
    names = [
        "_".join(f"{label}-{_slug(v)}" for label, v in zip(labels, point, strict=True)) or "run"
        for point in points
    ]
    counts = collections.Counter(names)
    for i, point in enumerate(points):
        if counts[names[i]] > 1:
            digest = hashlib.sha1(json.dumps(list(point)).encode()).hexdigest()[:8]
            names[i] = f"{names[i]}_{digest}"
    return names


def config_labels(configs: Sequence[str]) -> list[str]:
    """Short labels of config specs for run names.

    Returns:
      The variants ('cpu128+vanilla') when all specs name one file, else 'FILESTEM-VARIANT'.
    """
    parts = [c.partition(":") for c in configs]
    if len({p[0] for p in parts}) == 1:
        return [p[2] or "default" for p in parts]
    return [Path(p[0]).stem + (f"-{p[2]}" if p[2] else "") for p in parts]


def plan(
    configs: Sequence[str], root: str, axes: dict[str, list[str]], overrides: dict[str, str]
) -> list[Run]:
    """The runs of a sweep: the cartesian product of the configs and `axes`, with `overrides`.

    Args:
      configs: trainer config specs ('configs/codebook.py:cpu128'); several form the first axis
        (swept key 'config').
      root: the sweep root.
      axes: swept key -> values.
      overrides: fixed key -> value.

    Raises:
      ValueError: a repeated config, or a key both swept and overridden.
    """
    if len(set(configs)) != len(configs):
        raise ValueError(f"a --config is repeated: {list(configs)}")
    both = sorted(set(axes) & set(overrides))
    if both:
        raise ValueError(f"keys both swept (--set) and fixed (--override): {both}")
    if len(configs) > 1:
        axes = {CONFIG_AXIS: list(configs), **axes}
    keys = list(axes)
    points = list(itertools.product(*axes.values()))
    labels = dict(zip(configs, config_labels(configs), strict=True))
    shown = [
        tuple(labels.get(v, v) if k == CONFIG_AXIS else v for k, v in zip(keys, p, strict=True))
        for p in points
    ]
    runs = []
    for i, (name, point) in enumerate(zip(run_names(keys, shown), points, strict=True)):
        params = dict(zip(keys, point, strict=True))
        fields = {k: v for k, v in {**overrides, **params}.items() if k != CONFIG_AXIS}
        command = [
            sys.executable,
            "-m",
            "vpgc_jax.train",
            f"--config={params.get(CONFIG_AXIS, configs[0])}",
            f"--workdir={os.path.join(root, name)}",
            *(f"--config.{k}={v}" for k, v in fields.items()),
        ]
        runs.append(Run(i, name, params, command))
    return runs


def check_keys(config: str, keys: Sequence[str]) -> None:
    """Checks that every dotted key names a field of the config (loaded without JAX).

    Args:
      config: 'path/to/config.py[:arg]', as given to the trainer.
      keys: dotted keys to look up.

    Raises:
      ValueError: the config file is missing, fails to load, or lacks a key.
    """
    path, _, arg = config.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} not found (relative to {os.getcwd()})")
    spec = importlib.util.spec_from_file_location("_vpgc_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        cfg = module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # any failure here means a bad --config
        raise ValueError(f"cannot load config {config!r}: {e}") from e
    for key in keys:
        node = cfg
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise ValueError(f"config {config!r} has no field {key!r}")
            node = node[part]


# ---------------------------------------------------------------------------------------------
# Devices.


# What makes `vpgc_jax.train` join a multi-process job (vpgc_jax.parallel); a sweep's runs must not.
JOB_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def check_not_in_a_job(environ) -> None:
    """Raises ValueError when the environment describes a multi-process job.

    The sweep starts independent single-process runs on this host; with these variables inherited,
    all of them would try to join one job.
    """
    found = [k for k in JOB_VARS if environ.get(k)]
    if environ.get("VPGC_DISTRIBUTED") == "1":
        found.append("VPGC_DISTRIBUTED=1")
    if found:
        raise ValueError(
            f"{', '.join(found)} set: the sweep starts single-process runs on this host, which "
            "would all try to join one multi-process job; unset them and start the sweep once "
            "(not under srun)"
        )


def detect_gpus(spec: str = "auto") -> list[str]:
    """GPU ids to hand out, found without importing JAX.

    Args:
      spec: 'auto' (``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``), 'none', or an
        explicit comma-separated id list.

    Returns:
      The ids (strings, as ``CUDA_VISIBLE_DEVICES`` takes them); empty on a CPU host.
    """
    if spec == "none":
        return []
    if spec != "auto":
        return [s.strip() for s in spec.split(",") if s.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [s.strip() for s in visible.split(",") if s.strip()]
        return [] if ids in ([], ["-1"]) else ids
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    n = sum(line.startswith("GPU ") for line in out.splitlines())
    return [str(i) for i in range(n)]


def device_slots(
    gpus: list[str], devices_per_run: int, parallel: int | None
) -> list[list[str] | None]:
    """The concurrent slots: GPU id groups, or `parallel` CPU slots (None) without GPUs.

    Raises:
      ValueError: fewer GPUs than `devices_per_run`, or a non-positive count.
    """
    if devices_per_run < 1 or (parallel is not None and parallel < 1):
        raise ValueError("--devices-per-run and --parallel must be >= 1")
    if not gpus:
        return [None] * (parallel or 1)
    n_groups = len(gpus) // devices_per_run
    if n_groups == 0:
        raise ValueError(f"--devices-per-run {devices_per_run} > the {len(gpus)} GPU(s) {gpus}")
    if len(gpus) % devices_per_run:
        unused = gpus[n_groups * devices_per_run :]
        print(f"note: GPU(s) {','.join(unused)} left unused (not a whole group)", flush=True)
    groups = [gpus[i * devices_per_run : (i + 1) * devices_per_run] for i in range(n_groups)]
    return groups[: parallel or n_groups]


def run_env(slot: list[str] | None, devices_per_run: int, hide_gpus: bool) -> dict[str, str]:
    """The variables a run's process gets on top of the launcher's environment.

    Args:
      slot: the run's GPU ids, or None on CPU.
      devices_per_run: devices per run (CPU: forced host devices when > 1).
      hide_gpus: CPU mode chosen with ``--gpus none``: hide the GPUs from the run.
    """
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
        return env
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if devices_per_run > 1:
        flags = re.sub(
            r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")
        ).split()
        flags.append(f"--xla_force_host_platform_device_count={devices_per_run}")
        env["XLA_FLAGS"] = " ".join(flags)
    return env


# ---------------------------------------------------------------------------------------------
# Records and collection.


def _read_json(path: str | Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str | Path, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _scalar(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def collect(root: str | os.PathLike, names: Sequence[str] | None = None) -> list[dict]:
    """One row per run directory under `root` (those with a sweep record or an eval.json).

    Args:
      root: the sweep root.
      names: only these runs, in this order (missing ones get status 'missing'); default: every
        run under `root`, in sweep order.

    Returns:
      Dicts with 'name', 'params' (swept key -> value as given), 'status' ('done': eval.json
      exists; 'failed': the last attempt exited nonzero; 'incomplete': it exited 0, or never
      finished, without eval.json; 'missing': never started), 'exit_code' (of the last attempt),
      'wall_s' (summed over attempts), then the run's eval.json entries as they are (psnr, ssim,
      lpips, step, ... and nested dicts such as 'baseline_thumbnail32').
    """
    root = Path(root)
    if names is None:
        dirs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
        dirs = [d for d in dirs if (d / RECORD).is_file() or (d / EVAL).is_file()]
        records = {d.name: _read_json(d / RECORD) or {} for d in dirs}
        names = sorted(records, key=lambda n: (records[n].get("index", math.inf), n))
    rows = []
    for name in names:
        record = _read_json(root / name / RECORD) or {}
        scores = _read_json(root / name / EVAL)
        attempts = record.get("attempts", [])
        exit_code = attempts[-1].get("exit_code") if attempts else None
        if scores is not None:
            status = "done"
        elif not attempts:
            status = "missing"
        elif exit_code not in (0, None):
            status = "failed"
        else:
            status = "incomplete"
        wall = [a["wall_s"] for a in attempts if a.get("wall_s") is not None]
        row = {
            "name": name,
            "params": record.get("params", {}),
            "status": status,
            "exit_code": exit_code,
            "wall_s": sum(wall) if wall else None,
        }
        row.update(scores or {})
        rows.append(row)
    return rows


def _fmt(key: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.2f}" if key == "psnr" else f"{value:.4g}"
    return str(value)


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return str(datetime.timedelta(seconds=round(seconds)))


def table_columns(rows: Sequence[dict]) -> tuple[list[str], list[str]]:
    """(swept keys, metric keys) shown in the markdown table of `rows`."""
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    done = [r for r in rows if r["status"] == "done"]
    shared = [k for k, v in done[0].items() if _scalar(v)] if done else []
    shared = [k for k in shared if all(_scalar(r.get(k)) for r in done)]
    extra = [k for k in shared if k not in MAIN_METRICS and k not in BOOKKEEPING]
    extra = [k for k in extra if k not in ("exit_code", "wall_s")]
    return params, [*MAIN_METRICS, *extra]


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table: run, swept values, metrics, wall time, status."""
    params, metrics = table_columns(rows)
    header = ["run", *params, *metrics, "wall", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["name"],
            *(str(r["params"].get(k, "")).replace("|", "\\|") for k in params),
            *(_fmt(k, r.get(k)) for k in metrics),
            _fmt_seconds(r["wall_s"]),
            r["status"] if r["exit_code"] in (0, None) else f"{r['status']} ({r['exit_code']})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(root: str | os.PathLike, rows: list[dict], command: str) -> str:
    """Writes ROOT/sweep.json and ROOT/sweep.md; returns the markdown table."""
    table = markdown_table(rows)
    os.makedirs(root, exist_ok=True)
    _write_json(Path(root) / "sweep.json", {"command": command, "rows": rows})
    Path(root, "sweep.md").write_text(f"# Sweep\n\n```bash\n{command}\n```\n\n{table}\n")
    return table


# ---------------------------------------------------------------------------------------------
# Running.


class _Clock:
    def __init__(self):
        self.t0 = time.monotonic()

    def stamp(self) -> str:
        return f"[{_fmt_seconds(time.monotonic() - self.t0):>8}]"


def _tail(path: Path, n: int = _TAIL_LINES) -> str:
    """The last `n` lines of a log, each as a terminal shows it (progress-bar redraws collapsed)."""
    try:
        lines = path.read_text(errors="replace").split("\n")
    except OSError:
        return "(no log)"
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines]
    return "\n".join([line for line in lines if line.strip()][-n:])


@dataclasses.dataclass
class _Active:
    run: Run
    proc: subprocess.Popen
    log: object
    started: float
    record: dict


def _start(run: Run, root: Path, env: dict[str, str], slot, sweep_command: str) -> _Active:
    workdir = root / run.name
    workdir.mkdir(parents=True, exist_ok=True)
    record = _read_json(workdir / RECORD) or {}
    record.update(index=run.index, name=run.name, params=run.params, command=run.command)
    record["sweep_command"] = sweep_command
    record.setdefault("attempts", []).append(
        {
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "devices": slot,
            "exit_code": None,
            "wall_s": None,
        }
    )
    _write_json(workdir / RECORD, record)
    log = open(workdir / LOG, "a")  # closed in _finish
    log.write(f"\n=== sweep attempt {record['attempts'][-1]['started']}\n")
    shown = [f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "PYTHONPATH"]
    log.write("=== " + " ".join([*shown, shlex.join(run.command)]) + "\n")
    log.flush()
    proc = subprocess.Popen(
        run.command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,  # the launcher forwards Ctrl-C as SIGTERM (checkpoint + exit)
    )
    return _Active(run, proc, log, time.monotonic(), record)


def _finish(active: _Active, root: Path) -> int:
    code = active.proc.returncode
    active.log.close()
    attempt = active.record["attempts"][-1]
    attempt["exit_code"] = code
    attempt["wall_s"] = round(time.monotonic() - active.started, 1)
    _write_json(root / active.run.name / RECORD, active.record)
    return code


def execute(
    runs: Sequence[Run],
    root: str | os.PathLike,
    slots: Sequence[list[str] | None],
    devices_per_run: int,
    hide_gpus: bool = False,
    sweep_command: str = "",
) -> bool:
    """Runs `runs` (skipping those with eval.json) on `slots`; prints one line per start/finish.

    Returns:
      False when interrupted (Ctrl-C / SIGTERM; the active runs got SIGTERM and were waited for).
    """
    root = Path(root)
    clock = _Clock()
    todo = collections.deque()
    for run in runs:
        if (root / run.name / EVAL).is_file():
            print(f"{clock.stamp()} skip   {run.name}: {EVAL} exists", flush=True)
        else:
            todo.append(run)
    total, free = len(todo), collections.deque(range(len(slots)))
    active: dict[int, _Active] = {}
    started = 0
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while todo or active:
            while todo and free:
                slot_id, run = free.popleft(), todo.popleft()
                slot = slots[slot_id]
                env = run_env(slot, devices_per_run, hide_gpus)
                started += 1
                where = f"GPU {','.join(slot)}" if slot is not None else "CPU"
                print(f"{clock.stamp()} start  {run.name} ({started}/{total}, {where})", flush=True)
                active[slot_id] = _start(run, root, env, slot, sweep_command)
            time.sleep(_POLL_SECONDS)
            for slot_id, a in list(active.items()):
                if a.proc.poll() is None:
                    continue
                code = _finish(a, root)
                del active[slot_id]
                free.append(slot_id)
                took = _fmt_seconds(a.record["attempts"][-1]["wall_s"])
                has_eval = (root / a.run.name / EVAL).is_file()
                verdict = "done  " if code == 0 and has_eval else "FAILED" if code else "ended "
                note = "" if code or has_eval else f", no {EVAL}"
                print(
                    f"{clock.stamp()} {verdict} {a.run.name} in {took} (exit {code}{note})",
                    flush=True,
                )
    except KeyboardInterrupt:
        print(f"\ninterrupted: SIGTERM to {len(active)} active run(s); they save and exit")
        for a in active.values():
            a.proc.send_signal(signal.SIGTERM)
        for a in active.values():
            try:
                a.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
            _finish(a, root)
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    return True


def report_failures(rows: Sequence[dict], root: str | os.PathLike) -> None:
    """Prints each run that is not done: name, status, exit code and the end of its log."""
    for r in rows:
        if r["status"] == "done":
            continue
        log = Path(root) / r["name"] / LOG
        if r["status"] == "missing":
            print(f"\n--- {r['name']}: missing (never started)")
            continue
        print(f"\n--- {r['name']}: {r['status']} (exit code {r['exit_code']}), {log}:")
        print(_tail(log) if log.is_file() else "(no log)")


# ---------------------------------------------------------------------------------------------
# CLI.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vpgc_jax.sweep",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        help="trainer config, e.g. configs/codebook.py:cpu128; repeat it to sweep configs",
    )
    p.add_argument("--root", required=True, help="sweep directory (one subdirectory per run)")
    p.add_argument(
        "--set",
        dest="axes",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a swept config field (repeatable; runs are the cartesian product)",
    )
    p.add_argument(
        "--override",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run (repeatable)",
    )
    p.add_argument("--devices-per-run", type=int, default=1, help="GPUs (or CPU devices) per run")
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="concurrent runs (CPU: default 1; GPU: default and at most one per device group)",
    )
    p.add_argument(
        "--gpus", default="auto", help="'auto' (CUDA_VISIBLE_DEVICES or nvidia-smi), 'none', or ids"
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--collect-only", action="store_true", help="only rebuild sweep.md/.json from ROOT"
    )
    args = p.parse_args(argv)
    if not args.collect_only and not args.config:
        p.error("--config is required (unless --collect-only)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "vpgc_jax.sweep", *argv])
    root = Path(args.root)
    if args.collect_only:
        rows = collect(root)
        print(write_table(root, rows, command))
        return 0 if rows and all(r["status"] == "done" for r in rows) else 1
    try:
        check_not_in_a_job(os.environ)
        axes, overrides = parse_axes(args.axes), parse_overrides(args.overrides)
        runs = plan(args.config, args.root, axes, overrides)
        for config in args.config:
            check_keys(config, [*axes, *overrides])
        gpus = detect_gpus(args.gpus)
        slots = device_slots(gpus, args.devices_per_run, args.parallel)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    hide = args.gpus == "none"
    where = (
        f"{len(slots)} group(s) of {args.devices_per_run} GPU(s): "
        + " | ".join(",".join(s) for s in slots)
        if gpus
        else f"CPU, {len(slots)} at once, {args.devices_per_run} device(s) each"
    )
    print(f"sweep: {len(runs)} run(s) in {root}; {where}", flush=True)
    if args.dry_run:
        for run in runs:
            env = run_env(slots[0], args.devices_per_run, hide)
            env.pop("PYTHONPATH")
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = "<group>"
            done = " # skipped: eval.json exists" if (root / run.name / EVAL).is_file() else ""
            prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            print(f"{prefix} {shlex.join(run.command)}{done}".strip())
        return 0
    completed = execute(runs, root, slots, args.devices_per_run, hide, command)
    rows = collect(root, [r.name for r in runs])
    for row, run in zip(rows, runs, strict=True):
        row["params"] = row["params"] or run.params  # runs never started have no record
    print()
    print(write_table(root, rows, command))
    print(f"\nwrote {root / 'sweep.md'} and {root / 'sweep.json'}")
    report_failures(rows, root)
    if not completed:
        return 130
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
