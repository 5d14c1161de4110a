"""Every path form works on every CLI and Python entry point the README shows (issue 17, item 6).

The forms (`PathForms`): relative to the working directory, absolute, ``~/...`` (HOME is set to a
directory of the test), through a symlinked directory, and with spaces in a directory name. Each
CLI is called in-process (``main(argv)``) with its path arguments in these forms, spread over its
arguments so that every form reaches every CLI in as few calls as possible, on the session's tiny
dataset and runs; each call either does its real (tiny) work or, where that is the expensive part,
stops at the first real work (a prepare that finds its dataset already there, a training run that
resumes at its last step, a quickstart whose video is not a video). The README's own commands, with
their relative paths, run in `tests/test_readme_commands.py`.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY_CODEBOOK, TINY_DRIVER, TINY_FRAMES, TINY_TEST
from test_readme_commands import run_module

REPO = Path(__file__).resolve().parents[1]
FORMS = ("relative", "absolute", "~", "symlink", "spaces")


class PathForms:
    """Arguments naming a path in each form; the working directory is `cwd`, HOME is `home`.

    Inputs are reached through a link to their parent directory for the ``~``, symlink and spaces
    forms (fixtures stay where they are); outputs land in a real directory of that form.
    """

    def __init__(self, base: Path, monkeypatch):
        self.base, self.n = base, 0
        self.cwd, self.home = base / "cwd", base / "home"
        for d in (self.cwd, self.home, base / "real", base / "out put"):
            d.mkdir()
        (base / "outlink").symlink_to(base / "real")
        monkeypatch.chdir(self.cwd)
        monkeypatch.setenv("HOME", str(self.home))

    def input(self, form: str, target: Path) -> str:
        """`target` (it exists) named in `form`."""
        self.n += 1
        if form == "absolute":
            return str(target)
        if form == "relative":
            return os.path.relpath(target, self.cwd)
        link = {
            "~": self.home / f"in{self.n}",
            "symlink": self.base / f"link{self.n}",
            "spaces": self.base / f"in put {self.n}",
        }[form]
        link.symlink_to(target.parent)
        return f"~/in{self.n}/{target.name}" if form == "~" else str(link / target.name)

    def output(self, form: str, name: str) -> tuple[str, Path]:
        """(argument, where it lands) for a new output `name` in `form`."""
        arg, real = {
            "absolute": (str(self.base / "real" / name), self.base / "real" / name),
            "relative": (f"out/{name}", self.cwd / "out" / name),
            "~": (f"~/out/{name}", self.home / "out" / name),
            "symlink": (str(self.base / "outlink" / name), self.base / "real" / name),
            "spaces": (str(self.base / "out put" / name), self.base / "out put" / name),
        }[form]
        real.parent.mkdir(parents=True, exist_ok=True)
        return arg, real

    def check_no_stray_tilde(self):
        assert not (self.cwd / "~").exists(), "a literal '~' directory was created"


@pytest.fixture
def forms(tmp_path, monkeypatch) -> PathForms:
    return PathForms(tmp_path, monkeypatch)


def rotations(n_args: int) -> list[tuple[str, ...]]:
    """Form tuples for a CLI with `n_args` path arguments: every form at least once overall."""
    calls = -(-len(FORMS) // n_args)
    return [
        tuple(FORMS[(c * n_args + i) % len(FORMS)] for i in range(n_args)) for c in range(calls)
    ]


def expected(arg: str) -> str:
    """How a message names a path given as `arg`: as given, or with ``~`` expanded."""
    return os.path.expanduser(arg)


@pytest.mark.parametrize("form", FORMS)
def test_prepare(forms, form, macron_video, tiny_dataset, capsys):
    from data_prep import prepare

    out, real = forms.output(form, "ds")
    shutil.copytree(tiny_dataset, real)  # what this command wrote before: a rerun is a no-op
    video = forms.input(form, macron_video)
    argv = ["--video", video, "--out", out, "--size=128", f"--max-frames={TINY_FRAMES}"]
    assert prepare.main([*argv, f"--test-frames={TINY_TEST}"]) == 0
    assert f"{os.path.abspath(expected(out))}: already prepared" in capsys.readouterr().out
    forms.check_no_stray_tilde()


def config_flags(config: str, table: dict) -> list[str]:
    return ["--config", str(REPO / "configs" / config)] + [
        f"--config.{k}={v}" for k, v in table.items()
    ]


@pytest.mark.parametrize("workdir_form, data_form", rotations(2))
def test_train_resumes(forms, workdir_form, data_form, tiny_codebook_run, tiny_dataset, capsys):
    workdir, real = forms.output(workdir_form, "cb")
    shutil.copytree(tiny_codebook_run, real)
    args = config_flags(
        "codebook.py:cpu128", {**TINY_CODEBOOK, "num_steps": 2, "final_eval": False}
    )
    args += ["--workdir", workdir, f"--config.dataset_dir={forms.input(data_form, tiny_dataset)}"]
    assert run_module("vpgc_jax.train", args) == 0
    assert "stage 1: resumed from step 2" in capsys.readouterr().out
    forms.check_no_stray_tilde()


@pytest.mark.parametrize("workdir_form, codebook_form", rotations(2))
def test_train_driver_resumes(
    forms, workdir_form, codebook_form, tiny_driver_run, tiny_codebook_run, capsys
):
    workdir, real = forms.output(workdir_form, "drv")
    shutil.copytree(tiny_driver_run, real)
    codebook = forms.input(codebook_form, tiny_codebook_run)  # the same run, in another form
    args = config_flags("driver.py:cpu128", {**TINY_DRIVER, "num_steps": 1, "final_eval": False})
    args += ["--workdir", workdir, f"--config.codebook_workdir={codebook}"]
    assert run_module("vpgc_jax.train", args) == 0
    assert "resumed from step 1" in capsys.readouterr().out
    forms.check_no_stray_tilde()


def test_reenact(forms, tiny_driver_run, tiny_codebook_run, tiny_dataset):
    from vpgc_jax import reenact

    out, real = forms.output(FORMS[4], "self.mp4")
    argv = [
        *("--driver", forms.input(FORMS[0], tiny_driver_run)),
        *("--codebook", forms.input(FORMS[1], tiny_codebook_run)),
        *("--target", forms.input(FORMS[2], tiny_dataset)),
        # The target in another form: still self-reenactment (its test split drives).
        *("--driving", forms.input(FORMS[3], tiny_dataset)),
        *("--out", out, "--max-frames=2"),
    ]
    assert reenact.main(argv) == 0
    assert real.stat().st_size > 0
    forms.check_no_stray_tilde()


@pytest.mark.parametrize("cb_form, drv_form, data_form, out_form, runs_form", rotations(5))
def test_evaluate(
    forms,
    cb_form,
    drv_form,
    data_form,
    out_form,
    runs_form,
    tiny_codebook_run,
    tiny_driver_run,
    tiny_dataset,
):
    from eval import evaluate

    out, real = forms.output(out_form, "report")
    argv = [
        *("--codebook", forms.input(cb_form, tiny_codebook_run)),
        *("--driver", forms.input(drv_form, tiny_driver_run)),
        *("--dataset", forms.input(data_form, tiny_dataset)),
        *("--out", out, "--max-frames=2"),
        # The same stage-1 run again as a comparison row: the five forms in one call.
        f"--codebook-runs={forms.input(runs_form, tiny_codebook_run)}",
    ]
    assert evaluate.main(argv) == 0
    report = (real / "report.md").read_text()
    assert "was trained on" not in report  # the run's own dataset, in another form
    rows = json.loads((real / "metrics.json").read_text())["rows"]
    assert rows["reconstruction_1"]["psnr"] == rows["reconstruction"]["psnr"]
    forms.check_no_stray_tilde()


@pytest.mark.parametrize("workdir_form, data_form", rotations(2))
def test_evaluate_checkpoint(forms, workdir_form, data_form, tiny_codebook_run, tiny_dataset):
    from eval.evaluators import evaluate_checkpoint

    workdir = forms.input(workdir_form, tiny_codebook_run)
    scores = evaluate_checkpoint(workdir, step=2, dataset_dir=forms.input(data_form, tiny_dataset))
    assert scores["step"] == 2 and scores["psnr"] > 0


@pytest.fixture(scope="module")
def reference_stage1(tmp_path_factory) -> Path:
    """A reference-format ``stage1.ckpt`` (zero weights) written by export_torch: the reference's
    quantizer (16x16 grid, 256 channels, knn window) on a small autoencoder at 32 px."""
    import jax
    import numpy as np

    from vpgc_jax import export_torch
    from vpgc_jax.interop import runs as interop_runs

    config = interop_runs.repo_config("codebook", "reference")
    config.model.encoder.update(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=())
    config.resolution, config.disc.ndf = 32, 8
    _, abstract = interop_runs.stage1_parts(config)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    disc = {"params": zeros["disc_params"], "batch_stats": zeros["disc_batch_stats"]}
    base = tmp_path_factory.mktemp("reference")
    weights = interop_runs.stage1_weights(config, zeros["params"], disc)
    interop_runs.write_run(str(base / "run"), config, weights, {})
    assert export_torch.main(["--codebook", str(base / "run"), "--out", str(base / "exp")]) == 0
    return base / "exp" / "stage1.ckpt"


@pytest.mark.parametrize("cb_form, drv_form, out_form", rotations(3))
def test_export_torch(forms, cb_form, drv_form, out_form, tiny_codebook_run, tiny_driver_run):
    from vpgc_jax import export_torch

    out, real = forms.output(out_form, "exported")
    argv = [
        *("--codebook", forms.input(cb_form, tiny_codebook_run)),
        *("--driver", forms.input(drv_form, tiny_driver_run)),
        *("--out", out),
    ]
    assert export_torch.main(argv) == 0
    assert (real / "vpgc_jax.json").is_file()
    forms.check_no_stray_tilde()


@pytest.mark.parametrize("file_form, out_form, data_form", rotations(3))
def test_import_torch(
    forms, file_form, out_form, data_form, reference_stage1, tiny_dataset, capsys
):
    from vpgc_jax import import_torch

    out, real = forms.output(out_form, "imported")
    argv = [
        *("--stage1", forms.input(file_form, reference_stage1)),
        *("--out", out, "--dataset-dir", forms.input(data_form, tiny_dataset)),
    ]
    assert import_torch.main(argv) == 0, capsys.readouterr().err
    assert (real / "codebook" / "checkpoints" / "0").is_dir()
    forms.check_no_stray_tilde()


@pytest.mark.parametrize("root_form, file_form", rotations(2))
def test_sweep_dry_run(forms, root_form, file_form, capsys):
    from vpgc_jax import sweep

    root, real = forms.output(root_form, "sw")
    sweep_file = forms.input(file_form, REPO / "configs" / "sweeps" / "window.py")
    assert sweep.main(["--sweep", sweep_file, "--root", root, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"--workdir={expected(root)}/" in printed or f"--workdir {expected(root)}/" in printed
    forms.check_no_stray_tilde()


@pytest.mark.parametrize("video_form, out_form", rotations(2))
def test_quickstart_reaches_its_first_phase(forms, video_form, out_form, tmp_path, capsys):
    """The first real work, preparing the subject, gets the video and the output by their forms:
    a file that is not a video stops it there with data_prep's one line about that file."""
    from vpgc_jax import quickstart

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "clip.mp4").write_text("not a video")
    out, real = forms.output(out_form, "qs")
    argv = ["--video", forms.input(video_form, tmp_path / "clips" / "clip.mp4"), "--out", out]
    with pytest.raises(SystemExit) as e:
        quickstart.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "clip.mp4: not a readable video container" in err, err
    assert not os.path.exists(real / "data" / "subject")
    forms.check_no_stray_tilde()
