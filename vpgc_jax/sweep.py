"""Sweep launcher: one `vpgc_jax.train` run per point of a grid of config overrides, one table.

  python -m vpgc_jax.sweep --config configs/codebook.py:cpu128 --root runs/sweep_r \
      --set model.codebook.r=2,4,8 --set model.codebook.K_c=32,64 \
      --override dataset_dir=runs/macron128 --override num_steps=500
  python -m vpgc_jax.sweep --sweep configs/sweeps/window.py --root runs/sw

``--set KEY=V1,V2,...`` is a swept axis (split on commas outside brackets and quotes), ``--override
KEY=VALUE`` applies to every run, several ``--config`` are one more axis (key ``config``);
``--sweep FILE.py[:ARG]`` reads them from the file's ``get_sweep()`` (flags replace its entries).
Each run is ``python -m vpgc_jax.train --config CONFIG --workdir ROOT/NAME --config.KEY=VALUE ...``
(NAME from its swept values, e.g. ``r-2_K_c-32``), launched as a submitit job: SLURM where ``srun``
exists, else the local executor (``--cluster``; ``--executor PARAM=VALUE`` for submitit parameters).
Locally each run gets one group of ``--devices-per-run`` GPUs, or shares the CPU with ``--parallel``
others; on SLURM each job asks for ``--devices-per-run`` GPUs. ROOT/NAME holds the trainer's files,
``sweep.log`` and ``sweep_run.json`` (attempts: job id, exit code, wall time). Runs with eval.json
are skipped, unfinished ones resume; failures are reported at the end without stopping the others.
A job's SIGTERM, SLURM's time-limit / preemption signal (the job is requeued) and Ctrl-C of the
launcher reach the trainer as SIGTERM: it saves a checkpoint and exits. ROOT/sweep.md and
ROOT/sweep.json tabulate the runs; ``--collect-only`` rebuilds them; ``--dry-run`` prints the
commands. Exit status: 0 when every run has eval.json, 1 otherwise, 2 on bad flags, 130 when
interrupted.

The sweep and each of its runs are one process: it refuses (status 2, one line) to start in a
multi-process job's environment (``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID`` / ``VPGC_DISTRIBUTED=1``, which every run would inherit and try to join, or a
task of a multi-task ``srun`` / ``mpirun``, where every task would launch every run), and refuses
``--executor`` parameters that give a job several tasks (each would train in the same workdir).
"""

from __future__ import annotations

import argparse
import ast
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import submitit

REPO = Path(__file__).resolve().parents[1]
RECORD, LOG, EVAL = "sweep_run.json", "sweep.log", "eval.json"
CONFIG_AXIS = "config"  # the swept key of several --config
# Table columns: these metrics, then the other scalars every finished run has but these.
MAIN_METRICS = ("step", "psnr", "ssim", "lpips")
BOOKKEEPING = ("num_frames", "resolution", "eval_seconds", "codebook_step", "exit_code", "wall_s")
# submitit's local executor stops a job after timeout_min (default 2); a workstation has no limit.
DEFAULT_TIMEOUT_MIN = {"local": 365 * 24 * 60, "slurm": 24 * 60}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ---------------------------------------------------------------------------------------------
# Planning.


def split_values(text: str) -> list[str]:
    """Splits 'a,b,(1, 2)' on commas outside brackets and quotes; strips each value.

    Raises:
      ValueError: unbalanced brackets or quotes.
    """
    values, current, depth, quote = [], "", 0, None
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
            values.append(current.strip())
            current = ""
            continue
        current += ch
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    return [*values, current.strip()]


def parse_pairs(specs: Sequence[str], flag: str) -> dict[str, str]:
    """['config.model.codebook.r=2', ...] -> {'model.codebook.r': '2', ...} (the optional
    'config.' prefix dropped).

    Raises:
      ValueError: no '=', a malformed dotted key, or a key given twice.
    """
    pairs: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip().removeprefix("config.")
        if not sep or not _KEY.match(key) or key in pairs:
            raise ValueError(f"{flag} {spec!r}: expected KEY=VALUE, one per dotted config key")
        pairs[key] = value
    return pairs


def load_python(spec: str, function: str):
    """Returns `function(ARG)` (or `function()`) of the file named by 'path/file.py[:ARG]'.

    Raises:
      ValueError: the file is missing, or loading it or the call fails.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"file {path!r} not found (relative to {os.getcwd()})")
    module_spec = importlib.util.spec_from_file_location(f"_vpgc_sweep_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return getattr(module, function)(*([arg] if arg else []))
    except Exception as e:  # any failure here means a bad file
        raise ValueError(f"cannot load {spec!r} ({function}): {e}") from e


def resolve_config(spec: str) -> str:
    """A trainer config 'path/file.py[:ARG]' as given when the file exists from the working
    directory, else the project's own: sweep files (configs/sweeps/) name their configs relative to
    the repository root, so a sweep started elsewhere still finds 'configs/codebook.py'."""
    path, sep, arg = spec.partition(":")
    path = os.path.expanduser(path)
    own = REPO / path
    if not os.path.isfile(path) and not os.path.isabs(path) and own.is_file():
        path = str(own)
    return path + sep + arg


def load_sweep(spec: str) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """(configs, swept key -> values, fixed key -> value) of a sweep file's `get_sweep()`.

    `get_sweep()` returns {'config': spec or [specs], 'set': {key: [values]}, 'override': {key:
    value}} with Python values; they become flag text as given ('vanilla') or as repr ('(1, 2)').

    Raises:
      ValueError: the file fails to load, or returns unknown fields or a swept value not a list.
    """
    sweep = dict(load_python(spec, "get_sweep"))
    if set(sweep) - {"config", "set", "override"}:
        raise ValueError(f"{spec}: get_sweep() may return only 'config', 'set', 'override'")
    if not all(isinstance(v, (list, tuple)) for v in sweep.get("set", {}).values()):
        raise ValueError(f"{spec}: each 'set' entry must be a list of values")
    configs = sweep.get("config", [])
    return (
        [configs] if isinstance(configs, str) else list(configs),
        {k: [_flag_text(v) for v in values] for k, values in sweep.get("set", {}).items()},
        {k: _flag_text(v) for k, v in sweep.get("override", {}).items()},
    )


def _flag_text(value) -> str:
    return value if isinstance(value, str) else repr(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:40] or "empty"


def run_names(keys: Sequence[str], points: Sequence[Sequence[str]]) -> list[str]:
    """Unique, filesystem-safe names: the last component of each key (the whole key where two
    would clash), '-', the value; pairs joined by '_'; 'run' when nothing is swept. Names that
    still collide get a short hash of their exact values."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [k if leaves.count(leaf) > 1 else leaf for k, leaf in zip(keys, leaves, strict=True)]
    names = ["_".join(f"{a}-{_slug(v)}" for a, v in zip(labels, p, strict=True)) for p in points]
    names = [n or "run" for n in names]
    counts = collections.Counter(names)
    for i, point in enumerate(points):
        if counts[names[i]] > 1:
            names[i] += "_" + hashlib.sha1(json.dumps(list(point)).encode()).hexdigest()[:8]
    return names


def check_keys(config: str, keys: Sequence[str]) -> None:
    """Checks that every dotted key names a field of the config 'path.py[:arg]' (no JAX import).

    Raises:
      ValueError: the config fails to load or lacks a key.
    """
    cfg = load_python(config, "get_config")
    for key in keys:
        node = cfg
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise ValueError(f"config {config!r} has no field {key!r}")
            node = node[part]


# ---------------------------------------------------------------------------------------------
# A run, as a submitit job.


@dataclasses.dataclass
class Run:
    """One point of the sweep; calling it (in a submitit job) trains it.

    The trainer runs in a subprocess, its output appended to WORKDIR/sweep.log, each attempt
    recorded in WORKDIR/sweep_run.json. Not submitit.helpers.CommandFunction: that one keeps all
    output in memory, and its subprocess cannot be told to save. Here SIGTERM / SIGINT of the job
    reach the trainer as SIGTERM (it saves a checkpoint and exits) and the job waits for it. The
    trainer ignores submitit's time-limit / preemption signal (USR2; SLURM sends it to every
    process of the job); submitit calls `checkpoint` on it, then requeues the job.

    Attributes:
      index: position in the sweep (table order).
      name: directory name under the sweep root.
      params: the swept KEY -> VALUE pairs (values as given).
      command: the trainer's argv.
      workdir: the run's directory (ROOT/NAME).
      env: variables the trainer gets on top of the job's.
      sweep_command: the launching command line, for the record.
      cwd: where the trainer runs (the launcher's working directory).
    """

    index: int
    name: str
    params: dict[str, str]
    command: list[str]
    workdir: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    sweep_command: str = ""
    cwd: str = dataclasses.field(default_factory=os.getcwd)

    def __call__(self) -> int:
        """Returns the trainer's exit code (0 at once when eval.json exists)."""
        workdir = Path(self.cwd, self.workdir)
        if (workdir / EVAL).is_file():  # finished just before a requeue
            return 0
        workdir.mkdir(parents=True, exist_ok=True)
        record = {**(_read_json(workdir / RECORD) or {}), **dataclasses.asdict(self)}
        job_id = submitit.JobEnvironment().job_id
        attempt = dict(started=datetime.datetime.now().isoformat(timespec="seconds"), job_id=job_id)
        attempt.update(devices=os.getenv("CUDA_VISIBLE_DEVICES") or None, exit_code=None)
        record["attempts"] = [*record.get("attempts", []), attempt]
        _write_json(workdir / RECORD, record)
        preempt = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        started = time.monotonic()
        with open(workdir / LOG, "a") as log:
            shown = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
            log.write(f"\n=== sweep attempt {attempt['started']}, job {job_id}\n=== ")
            log.write(" ".join([*shown, shlex.join(self.command)]) + "\n")
            log.flush()
            self._trainer = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                preexec_fn=lambda: signal.signal(preempt, signal.SIG_IGN),  # no threads here
            )
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._trainer.send_signal(signal.SIGTERM))
            try:
                self._trainer.wait()
            finally:  # also on the SystemExit of a requeue: the trainer finishes saving first
                attempt.update(exit_code=self._trainer.wait())
                attempt.update(wall_s=round(time.monotonic() - started, 1))
                _write_json(workdir / RECORD, record)
        return self._trainer.returncode

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """submitit's time-limit / preemption hook: the trainer saves and stops, and submitit
        requeues a fresh copy of this run, which resumes from that checkpoint."""
        if getattr(self, "_trainer", None) is not None:
            self._trainer.send_signal(signal.SIGTERM)
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self))


def plan(
    configs: Sequence[str], root: str, axes: dict[str, list[str]], overrides: dict[str, str]
) -> list[Run]:
    """The runs: the cartesian product of the configs (an axis when several) and `axes`.

    Raises:
      ValueError: no config, an empty or repeated value, or a key both swept and overridden.
    """
    if not configs:
        raise ValueError("no config: give --config, or 'config' in the sweep file")
    both = sorted(set(axes) & set(overrides))
    if both:
        raise ValueError(f"keys both swept (--set) and fixed (--override): {both}")
    for key, values in {CONFIG_AXIS: list(configs), **axes}.items():
        if not values or "" in values or len(set(values)) != len(values):
            raise ValueError(f"{key}: need distinct, non-empty values, got {values}")
    parts = [c.partition(":") for c in configs]  # labels: the variants, or FILESTEM-VARIANT
    labels = [p[2] or "default" for p in parts]
    if len({p[0] for p in parts}) > 1:
        labels = [Path(p[0]).stem + (f"-{p[2]}" if p[2] else "") for p in parts]
    if len(configs) > 1:
        axes = {CONFIG_AXIS: list(configs), **axes}
    keys, points = list(axes), list(itertools.product(*axes.values()))
    label = dict(zip(configs, labels, strict=True))
    shown = [
        [label[v] if k == CONFIG_AXIS else v for k, v in zip(keys, p, strict=True)] for p in points
    ]
    runs = []
    for i, (name, point) in enumerate(zip(run_names(keys, shown), points, strict=True)):
        params = dict(zip(keys, point, strict=True))
        fields = {k: v for k, v in {**overrides, **params}.items() if k != CONFIG_AXIS}
        command = [sys.executable, "-m", "vpgc_jax.train"]
        command += [f"--config={params.get(CONFIG_AXIS, configs[0])}"]
        command += [f"--workdir={os.path.join(root, name)}"]
        command += [f"--config.{k}={v}" for k, v in fields.items()]
        runs.append(Run(i, name, params, command, os.path.join(root, name)))
    return runs


# ---------------------------------------------------------------------------------------------
# One process.

# What makes `vpgc_jax.train` join a multi-process job (vpgc_jax.parallel).
JOB_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Task counts set by a launcher that starts the command once per task (srun, mpirun).
TASK_COUNT_VARS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")
# submitit parameters that would start a run's job as several tasks.
TASK_PARAMS = ("nodes", "tasks_per_node", "slurm_nodes", "slurm_ntasks_per_node")


def check_one_process(environ: Mapping[str, str], params: Mapping) -> None:
    """Checks that neither the sweep nor its runs would run as several processes.

    A run inherits the sweep's environment (locally, and through sbatch on SLURM), so with the
    variables of a multi-process `vpgc_jax.train` job set every run would try to join that job; in
    a task of a multi-task ``srun`` / ``mpirun`` step every task would launch every run; a submitit
    job of several tasks (`params`) would start the trainer once per task in one workdir.

    Args:
      environ: the launcher's environment (``os.environ``).
      params: the ``--executor`` parameters, parsed.

    Raises:
      ValueError: one of these holds; one line naming the variables or parameters.
    """
    found = [k for k in JOB_VARS if environ.get(k)]
    found += ["VPGC_DISTRIBUTED=1"] if environ.get("VPGC_DISTRIBUTED") == "1" else []
    found += [f"{k}={environ[k]}" for k in TASK_COUNT_VARS if environ.get(k, "1") not in ("", "1")]
    if found:
        raise ValueError(
            f"{', '.join(found)} set: the sweep would start in every process of a multi-process "
            "job, and each run would try to join that job; start the sweep once, outside srun / "
            "mpirun and without these variables"
        )
    tasks = [f"{k}={v}" for k, v in params.items() if k in TASK_PARAMS and v != 1]
    if tasks:
        raise ValueError(
            f"--executor {', '.join(tasks)}: every task would train the run in the same workdir; "
            "a sweep run is one process (for multi-host runs, submit one job per setting)"
        )


# ---------------------------------------------------------------------------------------------
# Devices.


def detect_gpus(spec: str = "auto") -> list[int]:
    """GPU ids for submitit's `visible_gpus`, found without importing JAX.

    Args:
      spec: 'auto' (``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``), 'none', or ids
        such as '0,1'.

    Raises:
      ValueError: an id is not an integer (e.g. a GPU UUID).
    """
    if spec == "auto" and "CUDA_VISIBLE_DEVICES" not in os.environ:
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        except OSError:
            out = ""
        return list(range(sum(line.startswith("GPU ") for line in out.splitlines())))
    spec = os.environ["CUDA_VISIBLE_DEVICES"] if spec == "auto" else spec
    ids = [s.strip() for s in spec.split(",") if s.strip() not in ("", "-1", "none")]
    if not all(s.isdigit() for s in ids):
        raise ValueError(f"GPU ids must be integers, got {spec!r}; pass --gpus 0,1,...")
    return [int(s) for s in ids]


def device_slots(gpus: list[int], devices_per_run: int, parallel: int | None) -> list:
    """The concurrent slots: GPU id groups of `devices_per_run`, or `parallel` CPU slots (None).

    Raises:
      ValueError: fewer GPUs than `devices_per_run`, or a non-positive count.
    """
    if devices_per_run < 1 or (parallel is not None and parallel < 1):
        raise ValueError("--devices-per-run and --parallel must be >= 1")
    if not gpus:
        return [None] * (parallel or 1)
    if len(gpus) < devices_per_run:
        raise ValueError(f"--devices-per-run {devices_per_run} > the {len(gpus)} GPU(s) {gpus}")
    groups = [gpus[i : i + devices_per_run] for i in range(0, len(gpus), devices_per_run)]
    groups = [g for g in groups if len(g) == devices_per_run]  # a partial group stays unused
    return groups[: parallel or len(groups)]


def run_env(devices_per_run: int, on_cpu: bool, hide_gpus: bool) -> dict[str, str]:
    """The trainer's extra variables: on CPU, `devices_per_run` forced host devices (when > 1);
    with ``--gpus none``, no visible GPU."""
    env = {"CUDA_VISIBLE_DEVICES": ""} if hide_gpus else {}
    if on_cpu and devices_per_run > 1:
        flags = re.sub(
            r"--xla_force_host_platform_device_count=\S+", "", os.getenv("XLA_FLAGS", "")
        )
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_run}"
        env["XLA_FLAGS"] = " ".join(env["XLA_FLAGS"].split())
    return env


# ---------------------------------------------------------------------------------------------
# Records and the table.


def _read_json(path: str | Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: str | Path, obj) -> None:
    Path(f"{path}.tmp").write_text(json.dumps(obj, indent=2))
    os.replace(f"{path}.tmp", path)


def collect(root: str | os.PathLike, names: Sequence[str] | None = None) -> list[dict]:
    """One row per run: `names` in order, or every run directory under `root` in sweep order.

    Returns:
      Dicts with 'name', 'params' (swept key -> value as given), 'status' ('done': eval.json
      exists; 'failed': the last attempt exited nonzero; 'incomplete': it exited 0, or never
      finished, without eval.json; 'missing': never started), 'exit_code' (of the last attempt),
      'wall_s' (summed over attempts), then the run's eval.json entries as they are.
    """
    root = Path(root)
    if names is None:
        dirs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
        records = {d.name: _read_json(d / RECORD) or {} for d in dirs}
        names = [n for n in records if records[n] or (root / n / EVAL).is_file()]
        names.sort(key=lambda n: (records[n].get("index", math.inf), n))
    rows = []
    for name in names:
        record = _read_json(root / name / RECORD) or {}
        scores = _read_json(root / name / EVAL)
        attempts = record.get("attempts", [])
        exit_code = attempts[-1].get("exit_code") if attempts else None
        if scores is not None or not attempts:
            status = "missing" if scores is None else "done"
        else:
            status = "failed" if exit_code not in (0, None) else "incomplete"
        wall = [a["wall_s"] for a in attempts if a.get("wall_s") is not None]
        row = {"name": name, "params": record.get("params", {}), "status": status}
        rows.append({**row, "exit_code": exit_code, "wall_s": sum(wall) if wall else None})
        rows[-1].update(scores or {})
    return rows


def _fmt(key: str, value) -> str:
    if key == "wall_s" and value is not None:
        return str(datetime.timedelta(seconds=round(value)))
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.2f}" if key == "psnr" else f"{value:.4g}"
    return "" if value is None else str(value)


def _scalar(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table: run, swept values, metrics, wall time, status."""
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    done = [r for r in rows if r["status"] == "done"]
    shared = [k for k in (done[0] if done else {}) if all(_scalar(r.get(k)) for r in done)]
    metrics = [*MAIN_METRICS, *(k for k in shared if k not in MAIN_METRICS + BOOKKEEPING)]
    lines = ["| " + " | ".join(["run", *params, *metrics, "wall", "status"]) + " |"]
    lines.append("|" + "---|" * (len(params) + len(metrics) + 3))
    for r in rows:
        cells = [r["name"], *(str(r["params"].get(k, "")).replace("|", "\\|") for k in params)]
        cells += [_fmt(k, r.get(k)) for k in [*metrics, "wall_s"]]
        cells += [r["status"] + (f" ({r['exit_code']})" if r["exit_code"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(root: str | os.PathLike, rows: list[dict], command: str) -> str:
    """Writes ROOT/sweep.json and ROOT/sweep.md; returns the markdown table."""
    table = markdown_table(rows)
    os.makedirs(root, exist_ok=True)
    _write_json(Path(root) / "sweep.json", {"command": command, "rows": rows})
    Path(root, "sweep.md").write_text(f"# Sweep\n\n```bash\n{command}\n```\n\n{table}\n")
    return table


def report_failures(rows: Sequence[dict], root: str | os.PathLike, n_lines: int = 20) -> None:
    """Prints each run that is not done: status, exit code, the end of its log (each line as a
    terminal shows it: progress-bar redraws collapsed)."""
    for r in [r for r in rows if r["status"] != "done"]:
        log = Path(root) / r["name"] / LOG
        if r["status"] == "missing":
            print(f"\n--- {r['name']}: missing (never started)")
            continue
        print(f"\n--- {r['name']}: {r['status']} (exit code {r['exit_code']}), {log}:")
        text = log.read_text(errors="replace") if log.is_file() else "(no log)"
        lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
        print("\n".join([line for line in lines if line.strip()][-n_lines:]))


# ---------------------------------------------------------------------------------------------
# Launching.


def make_executor(root: Path, cluster: str, params: dict) -> submitit.Executor:
    """A submitit executor for 'local' or 'slurm' writing to ROOT/submitit/."""
    folder = root / "submitit" / "%j"
    if cluster == "local":  # AutoExecutor does not pass visible_gpus on (submitit issue #1696)
        executor = submitit.LocalExecutor(folder)
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    else:
        executor = submitit.AutoExecutor(folder, cluster=cluster)
    timeout = DEFAULT_TIMEOUT_MIN.get(cluster, 60)
    executor.update_parameters(**{"timeout_min": timeout, "stderr_to_stdout": True, **params})
    return executor


def execute(runs: Sequence[Run], root: Path, executor: submitit.Executor, slots: Sequence) -> bool:
    """Submits the runs without eval.json, one per free slot (a local GPU id group, or None: CPU,
    or SLURM, where the job asks for its GPUs); prints a line per start and end.

    Returns:
      False when interrupted (Ctrl-C / SIGTERM): the running jobs were stopped (their trainers
      save and exit) and waited for.
    """
    local, t0 = isinstance(executor, submitit.LocalExecutor), time.monotonic()

    def say(text: str) -> None:
        print(f"[{_fmt('wall_s', time.monotonic() - t0):>8}] {text}", flush=True)

    todo = collections.deque()
    for run in runs:
        if (root / run.name / EVAL).is_file():
            say(f"skip   {run.name}: {EVAL} exists")
        else:
            todo.append(run)
    total, free, running = len(todo), collections.deque(slots), {}
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while todo or running:
            while todo and free:
                slot, run = free.popleft(), todo.popleft()
                executor.update_parameters(name=f"sweep-{run.name}")
                if local:
                    executor.update_parameters(
                        gpus_per_node=len(slot or ()), visible_gpus=slot or ()
                    )
                # SIGINT ignored while submitting: no half-submitted job, and a local job's
                # controller inherits it ignored (it would kill the job 1 s after the terminal's
                # Ctrl-C); the launcher stops the jobs with SIGTERM instead (below).
                sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    job = executor.submit(run)
                finally:
                    signal.signal(signal.SIGINT, sigint)
                running[job] = run, slot
                where = ("CPU" if slot is None else f"GPU {slot}") if local else "SLURM"
                say(f"start  {run.name} ({total - len(todo)}/{total}, {where}, job {job.job_id})")
            job = next(submitit.helpers.as_completed(list(running), poll_frequency=0.2))
            run, slot = running.pop(job)
            free.append(slot)
            try:
                code, note = job.result(), ""
            except Exception as e:  # the job itself failed: show why
                code, note = None, f"\n{e}"
            row = collect(root, [run.name])[0]
            verdict = "done  " if row["status"] == "done" else "ended " if code == 0 else "FAILED"
            note = ("" if code or row["status"] == "done" else f", no {EVAL}") + note
            say(f"{verdict} {run.name} in {_fmt('wall_s', row['wall_s'])} (exit {code}{note})")
    except KeyboardInterrupt:
        print(f"\ninterrupted: SIGTERM to {len(running)} run(s); they save and exit", flush=True)
        for job in running:
            if local:  # the job's id is its controller's pid, which forwards SIGTERM to the job
                os.kill(int(job.job_id), signal.SIGTERM)
            else:
                job.cancel(check=False)  # scancel: SIGTERM to every process of the job
        for job in running:
            job.wait()
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    return True


# ---------------------------------------------------------------------------------------------
# CLI.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vpgc_jax.sweep", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add = p.add_argument
    add("--config", action="append", default=[], help="trainer config (repeat: one more axis)")
    add("--sweep", help="a sweep file 'configs/sweeps/NAME.py[:ARG]' with get_sweep()")
    add("--root", required=True, help="sweep directory (one subdirectory per run)")
    add("--set", dest="axes", action="append", default=[], metavar="KEY=V1,V2,...")
    add("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add("--devices-per-run", type=int, default=1, help="GPUs (or CPU devices) per run")
    add("--parallel", type=int, help="concurrent runs (CPU: default 1; GPU: one per group)")
    add("--gpus", default="auto", help="'auto' (CUDA_VISIBLE_DEVICES or nvidia-smi), 'none', ids")
    add("--cluster", choices=("auto", "local", "slurm"), default="auto", help="submitit executor")
    add("--executor", action="append", default=[], metavar="PARAM=VALUE", help="e.g. mem_gb=64")
    add("--dry-run", action="store_true", help="print the commands, run nothing")
    add("--collect-only", action="store_true", help="only rebuild sweep.md/.json from ROOT")
    args = p.parse_args(argv)
    if not (args.collect_only or args.config or args.sweep):
        p.error("--config or --sweep is required (unless --collect-only)")
    args.root = os.path.expanduser(args.root)  # '~/sweeps/x' as the shell would expand it
    if args.sweep:
        args.sweep = os.path.expanduser(args.sweep)
    return args


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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
        configs, axes, overrides = load_sweep(args.sweep) if args.sweep else ([], {}, {})
        cli_axes = {k: split_values(v) for k, v in parse_pairs(args.axes, "--set").items()}
        cli_overrides = parse_pairs(args.overrides, "--override")
        both = sorted(set(cli_axes) & set(cli_overrides))
        if both:
            raise ValueError(f"keys both swept (--set) and fixed (--override): {both}")
        # The command line replaces the file's entries of the same keys.
        axes = {k: v for k, v in axes.items() if k not in cli_overrides} | cli_axes
        overrides = {k: v for k, v in overrides.items() if k not in cli_axes} | cli_overrides
        configs = [resolve_config(c) for c in (args.config or configs)]
        runs = plan(configs, args.root, axes, overrides)
        for config in configs:
            check_keys(config, [*axes, *overrides])
        params = {k: _literal(v) for k, v in parse_pairs(args.executor, "--executor").items()}
        check_one_process(os.environ, params)
        cluster = submitit.AutoExecutor.which() if args.cluster == "auto" else args.cluster
        gpus = detect_gpus(args.gpus) if cluster == "local" else []
        slots = device_slots(gpus, args.devices_per_run, args.parallel)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cluster != "local":  # SLURM queues the jobs and gives each its GPUs
        slots = [None] * (args.parallel or len(runs))
        params.setdefault("gpus_per_node", 0 if args.gpus == "none" else args.devices_per_run)
    on_cpu = (cluster == "local" and not gpus) or args.gpus == "none"
    env = run_env(args.devices_per_run, on_cpu, args.gpus == "none")
    where = f"GPU groups {slots}" if gpus else f"{len(slots)} at once"
    print(f"sweep: {len(runs)} run(s) in {root}; {cluster} executor, {where}", flush=True)
    if args.dry_run:
        prefix = {**env, **({"CUDA_VISIBLE_DEVICES": "<group>"} if gpus else {})}
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in prefix.items())
        for run in runs:
            done = " # skipped: eval.json exists" if (root / run.name / EVAL).is_file() else ""
            print(f"{prefix} {shlex.join(run.command)}{done}".strip())
        return 0
    # The jobs import this module, and the trainer vpgc_jax, wherever they start.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.getenv("PYTHONPATH")]))
    runs = [dataclasses.replace(r, env=env, sweep_command=command) for r in runs]
    completed = execute(runs, root, make_executor(root, cluster, params), slots)
    rows = collect(root, [r.name for r in runs])
    for row, run in zip(rows, runs, strict=True):
        row["params"] = row["params"] or run.params  # runs never started have no record
    print(f"\n{write_table(root, rows, command)}\n")
    print(f"wrote {root / 'sweep.md'} and {root / 'sweep.json'}")
    report_failures(rows, root)
    return 130 if not completed else 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    # Through the package, so that submitit pickles Run by reference rather than from __main__.
    from vpgc_jax import sweep

    sys.exit(sweep.main())
