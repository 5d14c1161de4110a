"""eval.evaluate on real frames at tiny size: a report for the tiny 2-step stage-1 run, a second
stage-1 run and a 1-step driver on the tiny macron dataset (32 px models, 128 px frames); the
stage-1-only path; the F-LMD landmark convention; bad input.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval import evaluate as ev
from eval import face_landmarks, metrics
from vpgc_jax import images, writers
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import pipeline

REPO = Path(__file__).resolve().parents[1]
MAX_FRAMES = 10  # of the 20 test frames: a full batch of 8 and a padded one of 2
METRICS = ("psnr", "ssim", "lpips", "flmd")
DRIVING_FRAMES = 10  # of the news anchor's 40: a full batch of 8 and a padded one


@pytest.fixture(scope="module")
def driver_run(tiny_driver_run) -> Path:
    """The shared finished 1-step tiny driver on `tiny_codebook_run`."""
    return tiny_driver_run


# Periodic evaluations written into the copied run's metrics.jsonl (a null PSNR is skipped).
EXTRA_EVALS = [
    {"step": 1, "eval_psnr": 11.5, "eval_lpips": 0.75, "eval_num_frames": 4.0},
    {"step": 3, "eval_psnr": None, "eval_lpips": None},
]


@pytest.fixture(scope="module")
def second_run(tiny_codebook_run, tmp_path_factory) -> Path:
    """A copy of the tiny stage-1 run whose log has two more evaluation records."""
    run = tmp_path_factory.mktemp("eval_cb2") / "copy"
    shutil.copytree(tiny_codebook_run, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in EXTRA_EVALS)
    return run


@pytest.fixture(scope="module")
def report(
    tiny_codebook_run, second_run, driver_run, tiny_dataset, anchor_dataset, tmp_path_factory
) -> Path:
    out = tmp_path_factory.mktemp("eval_out") / "report"
    argv = [
        f"--codebook={tiny_codebook_run}",
        f"--codebook-runs={second_run}",
        f"--driver={driver_run}",
        f"--dataset={tiny_dataset}",
        f"--out={out}",
        f"--max-frames={MAX_FRAMES}",
        f"--driving={anchor_dataset}",
        f"--driving-frames={DRIVING_FRAMES}",
    ]
    assert ev.main(argv) == 0
    return out


def test_metrics_rows_are_finite(report):
    result = json.loads((report / "metrics.json").read_text())
    rows = result["rows"]
    assert list(rows) == [
        "reenactment",
        "reconstruction",
        "reconstruction_1",
        "retrieval",
        "mean_frame",
        "thumbnail",
    ]
    for name, row in rows.items():
        for m in METRICS:
            assert isinstance(row[m], float) and np.isfinite(row[m]), (name, m)
        assert row["flmd_frames"] == MAX_FRAMES  # dlib finds the face in every 32-px test frame
        assert 0 <= row["face_found"] <= 1 and row["flmd"] > 0
    # The driver's stage-1 path (Reenactor) and the stage-1-only path restore the same weights.
    for m in METRICS:
        assert rows["reconstruction"][m] == pytest.approx(rows["reconstruction_1"][m], rel=1e-5)
    assert rows["retrieval"]["psnr"] > rows["thumbnail"]["psnr"]  # real frames beat 8x8 blur
    assert rows["thumbnail"]["side"] == 8  # 32 px would be the identity at 32 px
    # Mouth and eye regions (eval.regions) in every row; an 8x8 thumbnail blurs them away, real
    # training frames keep their detail.
    for name, row in rows.items():
        for region in ("mouth", "eyes"):
            for m in ("psnr", "lpips", "sharpness"):
                assert np.isfinite(row[f"{region}_{m}"]), (name, region, m)
    for region in ("mouth", "eyes"):
        assert rows["thumbnail"][f"{region}_sharpness"] < rows["retrieval"][f"{region}_sharpness"]
        assert rows["reconstruction"][f"{region}_psnr"] == pytest.approx(
            rows["reconstruction_1"][f"{region}_psnr"], rel=1e-5
        )
    assert result["resolution"] == 32 and result["flmd"]["scale"] == 16
    assert result["dataset"]["test_frames"] == 20
    assert result["dataset"]["evaluated_frames"] == MAX_FRAMES
    assert [r["step"] for r in result["runs"]["codebook"]] == [2, 2]
    assert result["runs"]["driver"]["step"] == 1
    assert result["example_frames"] == [0, 3, 6, 9]
    assert result["wall_seconds"] > 0

    # Cross-reenactment by the news anchor (eval.follow): retrieval returns real macron frames,
    # so dlib finds a face in each and its mouth follows the retargeted driving mouth somewhat.
    clip = result["follow"]["news_anchor_de_512"]
    assert clip["frames"] == DRIVING_FRAMES and clip["driving_opening_px"] > 0
    retrieval = clip["retrieval"]
    assert retrieval["frames"] == DRIVING_FRAMES and 0 < retrieval["mouth_lmd"] < 40
    assert set(clip["model"]) == set(retrieval)  # a 1-step model: scores may be None (no face)


def test_report_tables_and_figures(report, second_run):
    text = (report / "report.md").read_text()
    result = json.loads((report / "metrics.json").read_text())
    assert "| Method | PSNR ↑ | SSIM ↑ | LPIPS ↓ | F-LMD ↓ | face found |" in text
    assert "| Ground truth | N/A | 1.000 | 0 | 0 | 100% |" in text
    for row in result["rows"].values():
        assert f"| {row['label']} | {row['psnr']:.2f} | {row['ssim']:.3f} |" in text
    for needed in ("20 held-out test frames", "32 x 32 px", "512 x 512", "Wall time", "step 1"):
        assert needed in text, needed
    assert "`match='shape'`" in text
    assert "## Mouth and eyes" in text
    assert "## Cross-reenactment: does the output follow the driver?" in text
    assert "| news_anchor_de_512 (10 frames, driving opening sd" in text
    for row in result["rows"].values():
        assert f"| {row['label']} | {row['mouth_psnr']:.2f} | {row['mouth_lpips']:.3f} |" in text
    assert not any(p.name.startswith("report.") for p in report.parent.iterdir())  # no temp dirs

    # examples.png: ground truth | reconstruction | reenactment, 4 frames enlarged to 128 px.
    strip = np.asarray(Image.open(report / "examples.png"))
    assert strip.shape == (24 + 4 * 130 + 2, 3 * 130 + 2, 3)

    # Table 4 from the runs' metrics.jsonl: the copy has an extra evaluation at step 1.
    conv = result["convergence"]
    assert list(conv) == ["run", "copy"]
    real = [r for r in writers.read_metrics(second_run) if r["step"] == 2 and "eval_psnr" in r]
    assert conv["copy"]["step"] == [1, 2] and conv["run"]["step"] == [2]
    assert conv["copy"]["eval_psnr"] == [11.5, pytest.approx(real[0]["eval_psnr"])]
    assert conv["copy"]["eval_num_frames"] == [4, 20]
    assert "| Stage-1 run | 1 | 2 |" in text
    assert f"| copy | 11.50 | {real[0]['eval_psnr']:.2f} |" in text
    assert "| run | – |" in text
    plot = np.asarray(Image.open(report / "convergence.png"))
    assert plot.ndim == 3 and (plot != 255).any()


def test_stage1_only_replaces_a_previous_report(report, tiny_codebook_run, tiny_dataset, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(report, out)
    result = ev.evaluate(tiny_codebook_run, tiny_dataset, out, max_frames=3, progress=False)
    assert list(result["rows"]) == ["reconstruction", "mean_frame", "thumbnail"]
    assert result["runs"]["driver"] is None and result["convergence"] is None
    assert sorted(os.listdir(out)) == ["examples.png", "metrics.json", "report.md"]
    assert json.loads((out / "metrics.json").read_text()) == result
    assert "Stage-2 run" not in (out / "report.md").read_text()
    assert all(np.isfinite(result["rows"]["reconstruction"][m]) for m in METRICS)


def test_face_landmarks_find_the_dataset_landmarks_and_fall_back(tiny_dataset):
    test = frames_lib.open_split(tiny_dataset, "test")
    gt = images.to_uint8(pipeline.load_frames(test, range(0, 20, 5), 32))  # [4, 32, 32, 3]
    landmarker = face_landmarks.FaceLandmarks()
    pts, boxes, found = landmarker(gt)
    # data_prep's landmarks of the same frames (256-px crops of the source), at 32 px.
    stored = frames_lib.load_landmarks(tiny_dataset, "test")["landmarks"][0:20:5] * (32 / 128)
    # 11.1 px measured at 512 scale (32-px frames lose detail); a misplaced rescale gives 10x.
    assert found.all() and metrics.flmd(pts, stored, 32) < 15
    # A frame without a face: zeros alone; the ground truth's box gives it landmarks to score.
    blank = np.full_like(gt, 128)
    none, _, found = landmarker(blank)
    assert not found.any() and not none.any()
    boxed, used, found = landmarker(blank, fallback=boxes)
    assert not found.any() and (used == boxes).all()
    assert np.isfinite(metrics.flmd(boxed, pts, 32)) and np.abs(boxed).sum() > 0


def assert_rejected(argv, capsys, out: Path, match: str):
    assert ev.main([*argv, f"--out={out}"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and match in errors[0] and "Traceback" not in err, err
    assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name + ".")]


def test_bad_inputs(tiny_codebook_run, driver_run, tiny_dataset, tmp_path, capsys):
    ds = f"--dataset={tiny_dataset}"
    out = tmp_path / "report"
    assert_rejected([f"--codebook={driver_run}", ds], capsys, out, "not a stage-1 run")
    assert_rejected(
        [f"--codebook={tiny_codebook_run}", f"--driver={tiny_codebook_run}", ds],
        capsys,
        out,
        "not a stage-2 (driver) run",
    )
    missing = [f"--codebook={tiny_codebook_run}", f"--dataset={tmp_path / 'nope'}"]
    assert_rejected(missing, capsys, out, "no such dataset directory")
    runs = [f"--codebook={tiny_codebook_run}", f"--codebook-runs={tmp_path / 'nope'}", ds]
    assert_rejected(runs, capsys, out, "not a stage-1 run directory")
    assert not out.exists()
    with_driver = [f"--codebook={tiny_codebook_run}", f"--driver={driver_run}", ds]
    assert_rejected(with_driver + [f"--driving={tiny_dataset}"], capsys, out, "the subject itself")
    nowhere = tmp_path / "nope.mp4"
    assert_rejected(with_driver + [f"--driving={nowhere}"], capsys, out, "not found")
    assert not out.exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    argv = [f"--codebook={tiny_codebook_run}", ds]
    assert_rejected(argv, capsys, occupied, "not a report written by vpgc_jax")
    assert (occupied / "keep.txt").read_text() == "x"

    # The module entry point: `python -m eval.evaluate`.
    cmd = [sys.executable, "-m", "eval.evaluate", *missing, f"--out={out}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists()


def test_time_to_quality_figure(tiny_codebook_run, second_run, tmp_path, capsys):
    """`python -m eval.report`: held-out LPIPS against the runs' logged wall time."""
    from eval import report as report_lib

    png = tmp_path / "tq.png"
    argv = ["--out", str(png), f"run={tiny_codebook_run}", f"copy={second_run}"]
    assert report_lib.main(argv) == 0
    text = capsys.readouterr().out
    assert "| Run | step | wall time (min) | LPIPS | mouth LPIPS |" in text
    conv = report_lib.read_convergence(str(second_run))
    assert conv["step"] == [1, 2] and conv["minutes"][0] <= conv["minutes"][1]
    records = writers.read_metrics(second_run)
    logged = [r for r in records if r.get("steps_per_sec")]
    total = sum(1 / r["steps_per_sec"] for r in logged)  # log_every 1: one step per record
    assert conv["minutes"][1] == pytest.approx(total / 60)
    assert conv["eval_mouth_lpips"][1] is None  # only periodic evaluations score the mouth box
    plot = np.asarray(Image.open(png))
    assert plot.ndim == 3 and (plot != 255).any()
    assert report_lib.main(["--out", str(png), f"x={tmp_path / 'nope'}"]) == 2
    assert "error: " in capsys.readouterr().err
