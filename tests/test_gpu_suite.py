"""The GPU suite (benchmarks/gpu_suite.py) end to end at --tiny shapes on the CPU, and its carry."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_carry  # noqa: E402
import gpu_suite  # noqa: E402

SUITE = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py")]


@pytest.fixture(scope="module")
def carried(tiny_dataset, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny dataset (70 + 20 frames at 128 px) in the carried format."""
    out = tmp_path_factory.mktemp("carry") / "macron128"
    return out, gpu_carry.write_dataset(str(tiny_dataset), str(out))


def test_carried_frames_read_back(carried, tiny_dataset):
    out, meta = carried
    frames = gpu_carry.read_dataset(str(out), 128)
    assert frames["train"].shape == (70, 128, 128, 3) and frames["test"].shape == (20, 128, 128, 3)
    assert frames["train"].dtype == np.uint8
    # H.264 at crf 12 measured 40.8 dB against these 128 px frames (44.0 dB at 512 px).
    assert 38.0 < meta["carry"]["psnr_db"] < 60.0
    assert gpu_carry.read_dataset(str(out), 32)["test"].shape == (20, 32, 32, 3)


def test_read_dataset_without_meta_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpu_carry.py --dataset"):
        gpu_carry.read_dataset(str(tmp_path), 32)


def test_largest_batch_prediction():
    gib = 2**30
    # One point: memory proportional to the batch (an over-estimate), rounded down to 4s.
    assert gpu_suite._largest_batch([(4, 1 * gib)], 10 * gib, 512) == 40
    # Two points: the line through them (2 GiB fixed + 0.25 GiB per image).
    assert gpu_suite._largest_batch([(4, 3 * gib), (8, 4 * gib)], 10 * gib, 512) == 32
    assert gpu_suite._largest_batch([(4, 3 * gib), (8, 4 * gib)], 10 * gib, 16) == 16
    assert gpu_suite._largest_batch([(4, 3 * gib)], 1 * gib, 512) == 4


def test_tiny_suite_end_to_end(carried, tmp_path):
    out = tmp_path / "out"
    cmd = [*SUITE, str(out), "--tiny", "--data", str(carried[0]), "--peak-tflops", "0.1"]
    # Generous budgets: the suite's own time limits must not fail the test on a shared machine.
    cmd += ["--budget-s", "3000", "--budget-scale", "20"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    sections = report["sections"]
    assert list(sections) == list(gpu_suite.NAMES)
    assert {n: e["status"] for n, e in sections.items()} == dict.fromkeys(gpu_suite.NAMES, "ok")

    lookup = sections["lookup"]["rows"]
    assert len(lookup) == 7 and all(r["time_s"] > 0 and r["peak_bytes"] > 0 for r in lookup)
    for dtype in ("bfloat16", "float32"):
        rows = sections[f"inference_{dtype}"]["rows"]
        assert [r["shape"] for r in rows] == ["32 px, batch 1", "32 px, batch 2"]
        assert all(r["dtype"] == dtype and r["items_per_s"] > 0 and r["flops"] > 0 for r in rows)
    assert sections["stage2"]["rows"][0]["items_per_s"] > 0

    stage1 = sections["stage1"]["rows"]
    # --tiny: remat off only; the proportional guess from batch 4 within 0.5 GiB, capped at 8.
    assert [(r["batch"], r["remat"]) for r in stage1] == [(4, False), (8, False)]
    assert not stage1[0].get("largest") and stage1[1]["largest"] and stage1[1]["fits_budget"]
    assert stage1[1]["peak_bytes"] > stage1[0]["peak_bytes"]
    # Model FLOPs per image come from the batch-4 step for every row.
    assert math.isclose(stage1[1]["model_tflop_per_step"], 2 * stage1[0]["model_tflop_per_step"])
    assert all(0 < r["mfu"] for r in stage1)

    run = sections["stage1"]
    assert run["settings"]["batch_size"] == 4 and run["settings"]["disc_start"] == 2
    steps = [p["step"] for p in run["curve"]]
    assert steps[0] == 0 and len(steps) >= 2 and steps == sorted(steps) and steps[-1] > 0
    for p in run["curve"] + [run["baseline"]]:
        assert 5.0 < p["psnr"] < 60.0 and 0.0 < p["lpips"] < 1.5
    assert math.isfinite(run["curve"][-1]["loss"])

    md = (out / "gpu_suite.md").read_text()
    assert all(s.title in md for s in gpu_suite.SECTIONS)
    assert "train run: {'step': 0" in (out / "gpu_suite.log").read_text()


def test_sections_over_the_total_are_skipped_and_recorded(carried, tmp_path):
    out = tmp_path / "out"
    cmd = [*SUITE, str(out), "--tiny", "--data", str(carried[0]), "--budget-s", "10"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    report = json.loads((out / "gpu_suite.json").read_text())
    assert {e["status"] for e in report["sections"].values()} == {"skipped"}
    assert "skipped" in (out / "gpu_suite.md").read_text()


def test_unknown_section_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [*SUITE, str(tmp_path), "--only", "lookup,gpu"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown sections ['gpu']" in proc.stderr.strip().splitlines()[-1]
