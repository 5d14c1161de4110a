"""Sweep launcher: a real 3-run sweep of the tiny stage-1 model (one run fails), resume, helpers.

One CLI sweep over model.codebook.r = 1, 2, 99 with 2 runs at once (submitit's local executor): r=1
and r=2 train and evaluate, r=99 (larger than the 16x16 grid) fails without stopping them and makes
the exit status nonzero. The same sweep declared in a file (get_sweep(), r = 1, 2) plans the same
commands, finds both runs finished and starts nothing. A stand-in trainer checks the signal path of
a job: submitit's time-limit signal and SIGTERM both end in a checkpoint, then a requeue.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from conftest import TINY_CODEBOOK

from vpgc_jax import sweep

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(dataset: Path) -> dict:
    overrides = {k: v for k, v in TINY_CODEBOOK.items() if k != "model.codebook.r"}
    overrides.update(dataset_dir=str(dataset), num_steps=1, num_eval_frames=4)
    return overrides


def sweep_cmd(root: Path, dataset: Path, values: str) -> list[str]:
    overrides = tiny_overrides(dataset)
    return [
        sys.executable,
        "-m",
        "vpgc_jax.sweep",
        "--config=configs/codebook.py:cpu128",
        f"--root={root}",
        f"--set=model.codebook.r={values}",
        *(f"--override={k}={v}" for k, v in overrides.items()),  # tuples as '(1, 2)'
        "--parallel=2",
        "--cluster=local",  # also where SLURM's srun exists
    ]


def run_cli(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def swept(tiny_dataset, tmp_path_factory):
    """(root, completed process) of the r = 1, 2, 99 sweep."""
    root = tmp_path_factory.mktemp("sweep") / "root"
    proc = run_cli(sweep_cmd(root, tiny_dataset, "1,2,99"), timeout=900)
    return root, proc


def test_sweep_runs_reports_the_failure_and_tabulates(swept):
    root, proc = swept
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    names = ["r-1", "r-2", "r-99"]
    for name in names[:2]:
        assert (root / name / "eval.json").is_file(), (root / name / "sweep.log").read_text()
    for name in names:  # each run really got its own value
        config = json.loads((root / name / "config.json").read_text())
        assert config["model"]["codebook"]["r"] == int(name[2:])
    assert "FAILED r-99" in out and "--- r-99: failed (exit code 2)" in out
    assert "square window r=99" in out  # the end of its log is printed

    table = json.loads((root / "sweep.json").read_text())
    rows = table["rows"]
    assert [r["name"] for r in rows] == names
    assert [r["params"] for r in rows] == [{"model.codebook.r": v} for v in ("1", "2", "99")]
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    assert [r["exit_code"] for r in rows] == [0, 0, 2]
    for r in rows[:2]:
        assert r["step"] == 1 and math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1
        assert r["wall_s"] > 0
    assert rows[0]["psnr"] != rows[1]["psnr"]  # different models
    assert "--set=model.codebook.r=1,2,99" in table["command"]

    md = (root / "sweep.md").read_text()
    assert md.startswith("# Sweep") and table["command"] in md
    header = "| run | model.codebook.r | step | psnr | ssim | lpips | wall | status |"
    assert header in md and header in proc.stdout
    assert "| r-99 | 99 |" in md and "failed (2)" in md

    rows_again = sweep.collect(root)  # on its own: every run under root, in sweep order
    assert [r["name"] for r in rows_again] == names
    assert rows_again[1]["psnr"] == rows[1]["psnr"]
    record = json.loads((root / "r-1" / "sweep_run.json").read_text())
    assert record["attempts"][0]["job_id"] and (root / "submitit").is_dir()  # a submitit job


def test_sweep_file_plans_the_same_runs_and_skips_finished_ones(
    swept, tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO)
    root, _ = swept
    sweep_file = tmp_path / "tiny_r.py"
    declared = {
        "config": "configs/codebook.py:cpu128",
        "set": {"model.codebook.r": [1, 2]},
        "override": tiny_overrides(tiny_dataset),  # Python values: tuples, ints
    }
    sweep_file.write_text(f"def get_sweep():\n    return {declared!r}\n")
    from_file = [sys.executable, "-m", "vpgc_jax.sweep", f"--sweep={sweep_file}", f"--root={root}"]

    def dry_run(cmd):
        proc = run_cli([*cmd, "--dry-run"], timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [x for x in proc.stdout.splitlines() if "vpgc_jax.train" in x]

    commands = dry_run(from_file)
    assert commands == dry_run(sweep_cmd(root, tiny_dataset, "1,2")) and len(commands) == 2
    assert all(x.endswith("# skipped: eval.json exists") for x in commands)

    proc = run_cli([*from_file, "--parallel=2", "--cluster=local"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skip   r-1" in proc.stdout and "skip   r-2" in proc.stdout
    assert "start" not in proc.stdout  # no trainer started
    record = json.loads((root / "r-1" / "sweep_run.json").read_text())
    assert len(record["attempts"]) == 1
    table = json.loads((root / "sweep.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["r-1", "r-2"]
    assert f"--sweep={sweep_file}" in table["command"]

    # The command line replaces the file's entries; the file is checked like the flags.
    assert (
        sweep.main(
            [f"--sweep={sweep_file}", f"--root={root}", "--set=model.codebook.r=3,4", "--dry-run"]
        )
        == 0
    )
    sweep_file.write_text("def get_sweep():\n    return {'set': {'model.codebook.r': 2}}\n")
    assert sweep.main([f"--sweep={sweep_file}", f"--root={root}", "--dry-run"]) == 2


# A stand-in trainer: on SIGTERM it "saves" (writes `saved`) and exits 0; started again after a
# save it "finishes" (writes eval.json). A signal it does not handle or ignore kills it instead.
STAND_IN = """
import os, pathlib, signal, sys, time
workdir = pathlib.Path(sys.argv[1])
if (workdir / "saved").exists():
    (workdir / "eval.json").write_text('{"step": 2}')
    sys.exit(0)
def save(signum, frame):
    (workdir / "saved").write_text(str(signum))
    sys.exit(0)
signal.signal(signal.SIGTERM, save)
print("training", os.getpid(), flush=True)
time.sleep(120)
"""


def test_job_signals_reach_the_trainer_as_sigterm(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the job process unpickles sweep.Run
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    runs = {
        name: sweep.Run(0, name, {}, [sys.executable, "stand_in.py", name], name, cwd=str(tmp_path))
        for name in ("timeout", "stopped")
    }
    executor = submitit.LocalExecutor(tmp_path / "submitit" / "%j")
    # submitit's time-limit signal (USR2) 10 s after the start, as SLURM's before a time limit.
    executor.update_parameters(timeout_min=0.25, signal_delay_s=5)
    timeout_job = executor.submit(runs["timeout"])
    executor.update_parameters(timeout_min=60)
    stopped_job = executor.submit(runs["stopped"])
    try:
        check_signals(tmp_path, timeout_job, stopped_job)
    finally:  # leave no job behind when an assertion fails
        for job in (timeout_job, stopped_job):
            if not job.done():
                os.kill(int(job.job_id), signal.SIGTERM)


def check_signals(tmp_path: Path, timeout_job, stopped_job) -> None:
    log, deadline = tmp_path / "stopped" / "sweep.log", time.monotonic() + 60
    while not (log.is_file() and "training" in log.read_text()):
        assert time.monotonic() < deadline, "the stand-in trainer did not start"
        time.sleep(0.2)
    # SLURM sends the time-limit signal to every process of a job: the trainer ignores it.
    os.kill(int(log.read_text().split("training")[1].split()[0]), signal.SIGUSR2)
    time.sleep(0.5)
    os.kill(int(stopped_job.job_id), signal.SIGTERM)  # what the launcher does on Ctrl-C

    assert stopped_job.result() == 0  # the job waited for the trainer, which saved and exited
    assert (tmp_path / "stopped" / "saved").read_text() == str(int(signal.SIGTERM))
    assert timeout_job.result() == 0  # checkpoint (SIGTERM, save), requeue, resume, eval.json
    assert (tmp_path / "timeout" / "saved").read_text() == str(int(signal.SIGTERM))
    rows = sweep.collect(tmp_path, ["timeout", "stopped"])
    assert [r["status"] for r in rows] == ["done", "incomplete"]
    record = json.loads((tmp_path / "timeout" / "sweep_run.json").read_text())
    assert [a["exit_code"] for a in record["attempts"]] == [0, 0]
    assert (tmp_path / "timeout" / "sweep.log").read_text().count("=== sweep attempt") == 2


def test_executors_take_the_sweep_parameters(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"  # an `srun` on PATH is what makes submitit pick SLURM
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    assert submitit.AutoExecutor.which() == "slurm"
    params = {"slurm_partition": "gpu", "gpus_per_node": 2, "cpus_per_task": 8}
    executor = sweep.make_executor(tmp_path, "slurm", params)  # AutoExecutor checks the names
    assert executor.cluster == "slurm"
    executor = sweep.make_executor(tmp_path, "local", params)  # slurm_* ignored on a workstation
    assert isinstance(executor, submitit.LocalExecutor)
    assert executor.parameters["timeout_min"] == sweep.DEFAULT_TIMEOUT_MIN["local"]


def test_dry_run_prints_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = [
        "--config=configs/codebook.py:cpu128",
        f"--root={tmp_path}",
        "--set=model.codebook.r=2,4",
        "--set",
        "config.model.encoder.ch_mult=(1, 2),(1,2,2)",
        "--override=num_steps=3",
        "--devices-per-run=2",
        "--gpus=none",
        "--dry-run",
    ]
    assert sweep.main(argv) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "vpgc_jax.train" in x]
    assert len(lines) == 4
    assert all("XLA_FLAGS=" in x and "--xla_force_host_platform_device_count=2" in x for x in lines)
    assert f"--workdir={tmp_path}/r-4_ch_mult-1-2-2" in lines[3]
    assert (
        "'--config.model.encoder.ch_mult=(1,2,2)'" in lines[3]
        and "--config.num_steps=3" in lines[3]
    )
    assert not any(tmp_path.iterdir())
    assert sweep.main([*argv[:2], "--set=model.no_such_field=1", "--dry-run"]) == 2
    assert (
        sweep.main(
            [*argv[:2], "--set=model.codebook.r=2", "--override=model.codebook.r=3", "--dry-run"]
        )
        == 2
    )
    assert sweep.main([*argv[:2], "--set=model.codebook.r=2,2", "--dry-run"]) == 2


def test_refuses_to_run_as_several_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    for key in (*sweep.JOB_VARS, *sweep.TASK_COUNT_VARS, "VPGC_DISTRIBUTED"):
        monkeypatch.delenv(key, raising=False)
    argv = [
        "--config=configs/codebook.py:cpu128",
        f"--root={tmp_path}",
        "--set=model.codebook.r=2,4",
    ]
    argv += ["--cluster=local", "--dry-run"]

    def refused(extra=(), **environ) -> str:
        with monkeypatch.context() as m:
            for key, value in environ.items():
                m.setenv(key, value)
            capsys.readouterr()
            assert sweep.main([*argv, *extra]) == 2
            out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1, err
        return err

    # Inherited from a multi-process train job (or a SLURM script's export): runs would join it.
    err = refused(JAX_COORDINATOR_ADDRESS="host0:1234", VPGC_DISTRIBUTED="1")
    assert err.startswith("error: JAX_COORDINATOR_ADDRESS, VPGC_DISTRIBUTED=1 set: the sweep")
    # One task of `srun --ntasks=4 python -m vpgc_jax.sweep ...`: 4 sweeps of the same runs.
    assert refused(SLURM_STEP_NUM_TASKS="4").startswith("error: SLURM_STEP_NUM_TASKS=4 set:")
    err = refused(["--executor=tasks_per_node=2"])
    assert err.startswith("error: --executor tasks_per_node=2: every task would train the run")
    assert not any(tmp_path.iterdir())
    # A single-task step (e.g. the sweep started with `srun -n1` inside an allocation) is fine.
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert sweep.main([*argv, "--executor=tasks_per_node=1"]) == 0


def test_example_sweep_files_plan_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    for path in sorted((REPO / "configs" / "sweeps").glob("*.py")):
        argv = [f"--sweep={path.relative_to(REPO)}", f"--root={tmp_path}", "--dry-run"]
        assert sweep.main(argv) == 0, path  # loads, and every key exists in its configs
        assert "vpgc_jax.train" in capsys.readouterr().out


def test_values_names_and_devices(monkeypatch):
    assert sweep.split_values("grid, vanilla") == ["grid", "vanilla"]
    assert sweep.split_values("(1, 2),(1, 2, 2),()") == ["(1, 2)", "(1, 2, 2)", "()"]
    assert sweep.split_values("'a,b',c") == ["'a,b'", "c"]
    with pytest.raises(ValueError):
        sweep.split_values("(1, 2")
    # Clashing leaves use the whole key; values that slug alike get a hash.
    names = sweep.run_names(["model.lr", "optim.lr"], [("1", "2"), ("3", "4")])
    assert names == ["model.lr-1_optim.lr-2", "model.lr-3_optim.lr-4"]
    names = sweep.run_names(["seed"], [("-1",), ("1",)])
    assert len(set(names)) == 2 and all(n.startswith("seed-1_") for n in names)
    assert sweep.run_names([], [()]) == ["run"]
    runs = sweep.plan(["c.py:a", "c.py:a+b"], "R", {"model.codebook.r": ["1"]}, {"seed": "3"})
    assert [r.name for r in sweep.plan(["a.py", "b.py:x"], "R", {}, {})] == [
        "config-a",
        "config-b-x",
    ]
    assert [r.name for r in runs] == ["config-a_r-1", "config-a+b_r-1"]
    assert runs[1].params == {"config": "c.py:a+b", "model.codebook.r": "1"}
    assert runs[1].command[3:] == [
        "--config=c.py:a+b",
        "--workdir=R/config-a+b_r-1",
        "--config.seed=3",
        "--config.model.codebook.r=1",
    ]

    assert sweep.device_slots([0, 1, 2, 3, 4], 2, None) == [[0, 1], [2, 3]]
    assert sweep.device_slots([0, 1, 2, 3], 1, 2) == [[0], [1]]
    assert sweep.device_slots([], 4, 3) == [None, None, None]
    with pytest.raises(ValueError):
        sweep.device_slots([0], 2, None)
    assert sweep.run_env(2, on_cpu=False, hide_gpus=False) == {}  # submitit sets the GPUs
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --foo")
    env = sweep.run_env(4, on_cpu=True, hide_gpus=True)
    assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=4"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "XLA_FLAGS" not in sweep.run_env(1, on_cpu=True, hide_gpus=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert sweep.detect_gpus() == [4, 5]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep.detect_gpus() == []
    assert sweep.detect_gpus("none") == [] and sweep.detect_gpus("0,1") == [0, 1]
    with pytest.raises(ValueError, match="integers"):
        sweep.detect_gpus("GPU-8e2c")
