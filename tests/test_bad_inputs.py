"""Bad inputs and unsafe outputs on every CLI: exit status 2, one line naming the path and the
problem, and nothing written or deleted (issue 17).

Each case snapshots the directory tree it works in (every path with its size and mtime) before the
command and compares after it. The inputs are the real sample clip (or files made from it) and the
session's tiny dataset and runs; every command is called in-process through its ``main``.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep import prepare
from vpgc_jax import outputs

ROOT = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict:
    """{relative path: (size, mtime_ns)} of everything under `root`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def one_line_error(capsys, *needles: str) -> str:
    """The command's stderr, asserted to be one 'error: ...' line holding every needle."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def clip_dir(tmp_path, macron_video) -> Path:
    """DIR holding the user's clip (a hard link to the sample) and a notes file."""
    d = tmp_path / "my videos"
    d.mkdir()
    try:
        os.link(macron_video, d / "clip.mp4")
    except OSError:  # another filesystem
        shutil.copy(macron_video, d / "clip.mp4")
    (d / "notes.txt").write_text("mine")
    return d


# --- prepare ---------------------------------------------------------------------------------
def test_prepare_never_deletes_the_input_or_foreign_files(clip_dir, tmp_path, capsys):
    before = snapshot(tmp_path)
    argv = [f"--video={clip_dir / 'clip.mp4'}", f"--out={clip_dir}", "--overwrite"]
    assert prepare.main(argv) == 2
    one_line_error(capsys, str(clip_dir), "holds the input", "never replaced")
    assert snapshot(tmp_path) == before

    other = tmp_path / "other"  # a foreign directory, with and without --overwrite
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert prepare.main([f"--video={clip_dir / 'clip.mp4'}", f"--out={other}", *extra]) == 2
        one_line_error(capsys, str(other), "not a dataset written by vpgc_jax")
    assert snapshot(tmp_path) == before

    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    before = snapshot(tmp_path)
    assert prepare.main([f"--video={clip_dir / 'clip.mp4'}", f"--out={a_file}", "--overwrite"]) == 2
    one_line_error(capsys, str(a_file), "is a file")
    assert snapshot(tmp_path) == before


def test_prepare_keeps_a_dataset_the_user_added_files_to(tiny_dataset, clip_dir, tmp_path, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    assert outputs.check_replaceable(str(ds), "dataset")  # ours as written: replaceable
    (ds / "my_edit.png").write_bytes(b"x")
    before = snapshot(tmp_path)
    assert prepare.main([f"--video={clip_dir / 'clip.mp4'}", f"--out={ds}", "--overwrite"]) == 2
    one_line_error(capsys, str(ds), "my_edit.png", "never replaced")
    assert snapshot(tmp_path) == before


def test_prepare_bad_videos_and_unwritable_out(tmp_path, clip_dir, capsys):
    out = tmp_path / "ds"
    garbage = tmp_path / "random.mp4"
    garbage.write_bytes(os.urandom(4096))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        ([f"--video={tmp_path / 'missing.mp4'}", f"--out={out}"], ("missing.mp4", "not found")),
        ([f"--video={garbage}", f"--out={out}"], ("random.mp4", "not a readable video")),
        ([f"--video={clip_dir}", f"--out={out}"], (str(clip_dir), "not a file")),
        (
            [f"--video={clip_dir / 'clip.mp4'}", f"--out={blocker / 'ds'}"],
            (str(blocker / "ds"), "cannot create"),
        ),
    ]
    for argv, needles in cases:
        before = snapshot(tmp_path)
        assert prepare.main(argv) == 2, argv
        one_line_error(capsys, *needles)
        assert snapshot(tmp_path) == before


def test_one_writer_per_out_and_stale_temps_cleaned(clip_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    with outputs.lock(str(out)):  # another writer holds --out
        assert prepare.main([f"--video={clip_dir / 'clip.mp4'}", f"--out={out}"]) == 2
        one_line_error(capsys, str(out), f"another process (pid {os.getpid()})")
    assert not out.exists()
    # An interrupted run left its temporary directories; the next writer removes them.
    (tmp_path / "ds.tmp-abc123").mkdir()
    (tmp_path / "ds.old-xyz").mkdir()
    out.mkdir()
    (out / "foreign.txt").write_text("x")
    assert prepare.main([f"--video={clip_dir / 'clip.mp4'}", f"--out={out}"]) == 2
    one_line_error(capsys, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "my videos"]


# --- eval, export, import, reenact ------------------------------------------------------------
def test_evaluate_refuses_foreign_out_and_the_dataset(tiny_dataset, tmp_path, capsys):
    from eval import evaluate

    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "paper.pdf").write_bytes(b"x")
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    before = snapshot(tmp_path)
    for out, needle in ((foreign, "not a report"), (ds, "holds the input")):
        argv = ["--codebook", str(tmp_path / "cb"), "--dataset", str(ds), "--out", str(out)]
        assert evaluate.main(argv) == 2
        one_line_error(capsys, str(out), needle)
    assert snapshot(tmp_path) == before


def test_export_and_import_errors(tmp_path, capsys):
    pytest.importorskip("torch")
    import torch

    from vpgc_jax import export_torch, import_torch

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    garbage = tmp_path / "random.ckpt"
    garbage.write_bytes(os.urandom(4096))
    pickled = tmp_path / "objects.ckpt"  # a class reference, which weights_only refuses
    torch.save({"state_dict": {"w": torch.zeros(2)}, "callbacks": {object: 1}}, pickled)
    before = snapshot(tmp_path)
    assert export_torch.main(["--codebook", str(tmp_path), "--out", str(blocker / "x")]) == 2
    one_line_error(capsys, str(blocker / "x"), "cannot create")
    assert import_torch.main(["--stage1", str(garbage), "--out", str(blocker / "x")]) == 2
    one_line_error(capsys, str(blocker / "x"), "cannot create")
    assert import_torch.main(["--stage1", str(garbage), "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys, str(garbage), "not a PyTorch checkpoint")
    assert "weights_only=False" not in line  # no advice to unpickle a file that is not one
    assert import_torch.main(["--stage1", str(pickled), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(pickled), "pickles Python objects", "RUNS CODE FROM THE FILE")
    assert snapshot(tmp_path) == before


def test_reenact_never_overwrites_its_driving_video(clip_dir, tiny_dataset, tmp_path, capsys):
    from vpgc_jax import reenact

    clip = clip_dir / "clip.mp4"
    before = snapshot(tmp_path)
    argv = ["--driver", str(tmp_path / "drv"), "--target", str(tiny_dataset)]
    assert reenact.main([*argv, "--driving", str(clip), "--out", str(clip)]) == 2
    one_line_error(capsys, str(clip), "is the input")
    assert snapshot(tmp_path) == before


# --- train ------------------------------------------------------------------------------------
def test_train_misspelt_field_is_one_line_with_the_suggestion(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "vpgc_jax.train",
        "--config",
        "configs/codebook.py:cpu128",
        f"--workdir={tmp_path / 'run'}",
        "--config.num_stepz=5",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: --config.num_stepz: the config has no field 'num_stepz' "
        "(did you mean --config.num_steps?)"
    ]
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_foreign_workdir(tiny_dataset, tmp_path):
    from conftest import TINY_CODEBOOK, apply_overrides

    from configs import codebook as codebook_config
    from vpgc_jax import train

    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "main.py").write_text("x")
    config = codebook_config.get_config("cpu128")
    apply_overrides(config, {**TINY_CODEBOOK, "dataset_dir": str(tiny_dataset), "num_steps": 1})
    before = snapshot(tmp_path)
    with pytest.raises(outputs.OutputError, match="not a run directory.*main.py"):
        train.train_and_evaluate(config, str(workdir))
    assert snapshot(tmp_path) == before
