"""Sweep launcher: a real 3-run sweep of the tiny stage-1 model (one run fails), resume, helpers.

One CLI sweep over model.r = 1, 2, 99 with 2 runs at once: r=1 and r=2 train and evaluate, r=99
(larger than the 16x16 grid) fails without stopping them and makes the exit status nonzero. A
second command over r = 1, 2 finds both finished and starts nothing.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CODEBOOK

from vpgc_jax import sweep

REPO = Path(__file__).resolve().parents[1]


def sweep_cmd(root: Path, dataset: Path, values: str) -> list[str]:
    overrides = {k: v for k, v in TINY_CODEBOOK.items() if k != "model.r"}
    overrides.update(dataset_dir=dataset, num_steps=1, num_eval_frames=4)
    return [
        sys.executable,
        "-m",
        "vpgc_jax.sweep",
        "--config=configs/codebook.py:cpu128",
        f"--root={root}",
        f"--set=model.r={values}",
        *(f"--override={k}={v}" for k, v in overrides.items()),  # tuples as '(1, 2)'
        "--parallel=2",
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
        assert config["model"]["r"] == int(name[2:])
    assert "FAILED r-99" in out and "--- r-99: failed (exit code 2)" in out
    assert "square window r=99" in out  # the end of its log is printed

    table = json.loads((root / "sweep.json").read_text())
    rows = table["rows"]
    assert [r["name"] for r in rows] == names
    assert [r["params"] for r in rows] == [{"model.r": v} for v in ("1", "2", "99")]
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    assert [r["exit_code"] for r in rows] == [0, 0, 2]
    for r in rows[:2]:
        assert r["step"] == 1 and math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1
        assert r["wall_s"] > 0
    assert rows[0]["psnr"] != rows[1]["psnr"]  # different models
    assert "--set=model.r=1,2,99" in table["command"]

    md = (root / "sweep.md").read_text()
    assert md.startswith("# Sweep") and table["command"] in md
    header = "| run | model.r | step | psnr | ssim | lpips | wall | status |"
    assert header in md and header in proc.stdout
    assert "| r-99 | 99 |" in md and "failed (2)" in md

    rows_again = sweep.collect(root)  # on its own: every run under root, in sweep order
    assert [r["name"] for r in rows_again] == names
    assert rows_again[1]["psnr"] == rows[1]["psnr"]


def test_rerun_skips_finished_runs(swept, tiny_dataset):
    root, _ = swept
    proc = run_cli(sweep_cmd(root, tiny_dataset, "1,2"), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skip   r-1" in proc.stdout and "skip   r-2" in proc.stdout
    assert "start" not in proc.stdout  # no trainer started
    record = json.loads((root / "r-1" / "sweep_run.json").read_text())
    assert len(record["attempts"]) == 1
    rows = json.loads((root / "sweep.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["r-1", "r-2"]


def test_dry_run_prints_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = [
        "--config=configs/codebook.py:cpu128",
        f"--root={tmp_path}",
        "--set=model.r=2,4",
        "--set",
        "config.model.ch_mult=(1, 2),(1,2,2)",
        "--override=num_steps=3",
        "--devices-per-run=2",
        "--gpus=none",
        "--dry-run",
    ]
    assert sweep.main(argv) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "vpgc_jax.train" in x]
    assert len(lines) == 4
    assert all("XLA_FLAGS=--xla_force_host_platform_device_count=2" in x for x in lines)
    assert f"--workdir={tmp_path}/r-4_ch_mult-1-2-2" in lines[3]
    assert "'--config.model.ch_mult=(1,2,2)'" in lines[3] and "--config.num_steps=3" in lines[3]
    assert not any(tmp_path.iterdir())
    assert sweep.main([*argv[:2], "--set=model.no_such_field=1", "--dry-run"]) == 2
    assert sweep.main([*argv[:2], "--set=model.r=2", "--override=model.r=3", "--dry-run"]) == 2
    capsys.readouterr()
    monkeypatch.setenv("VPGC_DISTRIBUTED", "1")  # e.g. inherited from an srun job
    assert sweep.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: VPGC_DISTRIBUTED=1 set: the sweep starts")


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
    runs = sweep.plan(["c.py:a", "c.py:a+b"], "R", {"model.r": ["1"]}, {"seed": "3"})
    assert [r.name for r in runs] == ["config-a_r-1", "config-a+b_r-1"]
    assert runs[1].params == {"config": "c.py:a+b", "model.r": "1"}
    assert runs[1].command[3:] == [
        "--config=c.py:a+b",
        "--workdir=R/config-a+b_r-1",
        "--config.seed=3",
        "--config.model.r=1",
    ]

    assert sweep.device_slots(["0", "1", "2", "3", "4"], 2, None) == [["0", "1"], ["2", "3"]]
    assert sweep.device_slots(["0", "1", "2", "3"], 1, 2) == [["0"], ["1"]]
    assert sweep.device_slots([], 4, 3) == [None, None, None]
    with pytest.raises(ValueError):
        sweep.device_slots(["0"], 2, None)
    assert sweep.run_env(["2", "3"], 2, False)["CUDA_VISIBLE_DEVICES"] == "2,3"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --foo")
    env = sweep.run_env(None, 4, True)
    assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=4"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "XLA_FLAGS" not in sweep.run_env(None, 1, False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert sweep.detect_gpus() == ["4", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep.detect_gpus() == []
    assert sweep.detect_gpus("none") == [] and sweep.detect_gpus("0,1") == ["0", "1"]
