"""The README's commands run as written (issue 17), on the session's tiny data, in-process.

Every command of the bash blocks of the README's command sections (`RUN_SECTIONS`) is executed:
``python -m MODULE ARGS`` as ``MODULE.main(ARGS)`` (``vpgc_jax.train`` through its absl flag
parser), ``python -c CODE`` with `exec`, with the working directory at a stand-in repository root
(`readme_root`) where the README's relative paths name tiny things:

* ``configs/`` is the repository's; ``../shared/data/portraits/`` holds the macron clip and the
  first 24 frames of the news-anchor clip (a cross-reenactment driving video prepared in seconds);
* ``runs/macron128``, ``runs/me``, ``runs/mine`` are copies of `tiny_dataset`, ``my_clip.mp4``
  the macron clip; ``runs/cb128`` and ``runs/drv128`` are copies of `tiny_codebook_run` and
  `tiny_driver_run` whose ``config.json`` names the copies (``dataset_dir``, ``codebook_workdir``),
  as if the README's commands had made them; ``runs/cbref`` and ``runs/drvref`` are symlinks to
  the runs themselves (only read); ``N-Step-Checkpoint_19_120000.ckpt`` is the ``stage1.ckpt``
  the README's export of an untrained reference run writes.

Nothing is trained twice: the only text changes are flags appended to the end of a command
(`TINY_FLAGS`, `train_flags`) and ``step=500`` -> ``step=2`` in the ``evaluate_checkpoint`` line.
So ``prepare`` (with the tiny dataset's ``--size``, ``--max-frames`` and ``--test-frames``) finds
the dataset it would write and does nothing, ``train`` of a finished run resumes at its last step,
the sweeps are ``--dry-run``, reenactment renders 4 frames, and the untrained reference runs
(``num_steps=0``) are built at 32 px. The commands of the other sections (the quickstart's
half-hour job, the multi-process launches, which `tests/test_multihost.py` runs) are only parsed.
"""

import contextlib
import importlib
import io
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from conftest import (
    SHARED_DATA,
    TINY_AUDIO,
    TINY_CODEBOOK,
    TINY_DRIVER,
    TINY_FRAMES,
    TINY_SIZE,
    TINY_TEST,
    write_media,
)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Sections whose commands run here; the commands of every other section are parsed only.
RUN_SECTIONS = (
    "Preparing your own video",
    "Training stage 1 (the grid codebook)",
    "Sweeps",
    "Training stage 2 (the landmark-driven module)",
    "Reenactment",
    "Full-frame output",
    "Audio driving",
    "Evaluation",
    "PyTorch interop",
)
# The web app serves until stopped: its command is parsed here, tests/test_app.py runs it.
PARSE_ONLY_SECTIONS = ("Quick start", "Web app", "Several processes (multi-host)")
# Flags appended to a README command of each module.
TINY_FLAGS = {
    "data_prep.prepare": [
        f"--size={TINY_SIZE}",
        f"--max-frames={TINY_FRAMES}",
        f"--test-frames={TINY_TEST}",
    ],
    "vpgc_jax.reenact": ["--max-frames=4"],
    "vpgc_jax.sweep": ["--dry-run"],
    "eval.evaluate": ["--max-frames=4", "--driving-frames=4"],
}
# The untrained reference run at 32 px: the tiny encoder widths, the reference's latent and
# codebook shapes (256 channels, knn window on a 16x16 grid), so it exports in the reference's
# own format and that export imports.
TINY_REFERENCE = {
    k: v
    for k, v in TINY_CODEBOOK.items()
    if not k.startswith(("model.codebook", "model.embed_dim", "model.encoder.z_channels"))
}
CROSS_FRAMES = 24  # of the news-anchor clip, the stand-in cross-reenactment driving video


def readme_sections() -> dict[str, list[str]]:
    """{section title: its bash blocks' commands}, each a shell line: continuations joined,
    comments and ``[optional]`` parts removed, ``a && b`` split."""
    sections: dict[str, list[str]] = {}
    for part in re.split(r"^#{2,3} ", README.read_text(), flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        lines = []
        for block in re.findall(r"```bash\n(.*?)```", body, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*", "", line).strip()
                while re.search(r"\[[^\[\]']*\]", line):  # innermost optional parts first
                    line = re.sub(r"\[[^\[\]']*\]", "", line)
                lines += [c.strip() for c in line.split("&&") if "python" in c]
        if lines:
            sections[title.strip()] = lines
    return sections


def python_command(line: str) -> tuple[str, list[str]]:
    """('-m', [MODULE, *args]) or ('-c', [CODE]) of a line's ``python`` command (env prefix,
    trailing ``&`` dropped); ('other', argv) for ``python script.py`` and ``python3 -m venv``."""
    argv = shlex.split(line)
    start = next(i for i, a in enumerate(argv) if a in ("python", "python3"))
    argv = [a for a in argv[start + 1 :] if a != "&"]
    if argv[0] in ("-m", "-c") and argv[1:2] != ["venv"]:
        return argv[0], argv[1:]
    return "other", argv


def test_every_readme_section_with_commands_is_run_or_parsed():
    sections = readme_sections()
    assert set(sections) - {"Performance and scale"} == {*RUN_SECTIONS, *PARSE_ONLY_SECTIONS}
    assert [python_command(c)[0] for c in sections["Performance and scale"]] == ["other"] * 2


def train_flags(args: list[str]) -> list[str]:
    """The tiny-model flags appended to a README ``vpgc_jax.train`` command."""
    config = args[args.index("--config") + 1]
    given = {a.split("=")[0][len("--config.") :] for a in args if a.startswith("--config.")}
    if config.endswith("codebook.py:cpu128"):
        tiny = {**TINY_CODEBOOK, "num_steps": 2, "final_eval": False}  # tiny_codebook_run's end
    elif config.endswith("codebook.py:reference"):
        tiny = TINY_REFERENCE
    elif config.endswith("audio.py:cpu"):
        tiny = TINY_AUDIO  # tiny_audio_run's
    elif config.endswith("driver.py:cpu128"):
        tiny = {**TINY_DRIVER, "num_steps": 1, "final_eval": False}  # tiny_driver_run's end
    else:
        assert config.endswith("driver.py:reference"), config
        tiny = TINY_DRIVER
    return [f"--config.{k}={v}" for k, v in tiny.items() if k not in given]


@contextlib.contextmanager
def train_flags_parsed(args: list[str]):
    """`vpgc_jax.train`'s flags parsed from `args`, as its command line would be.

    ml_collections reads ``sys.argv`` to learn which ``--config.x`` overrides to define, so it is
    set to the command line while absl parses; afterwards the flags are reset and the overrides
    it defined are removed (a second command defines its own).
    """
    from vpgc_jax import train

    argv, sys.argv = sys.argv, ["vpgc_jax.train", *args]
    train.FLAGS.unparse_flags()
    try:
        train.parse_flags(sys.argv)
        yield train
    finally:
        sys.argv = argv
        train.FLAGS.unparse_flags()
        for name in [n for n in train.FLAGS if n.startswith("config.")]:
            delattr(train.FLAGS, name)


def run_module(module: str, args: list[str]) -> int:
    """``python -m module *args`` in this process; returns its exit status."""
    if module != "vpgc_jax.train":
        return importlib.import_module(module).main(args)
    try:
        with train_flags_parsed(args) as train:
            train.main([])
    except SystemExit as e:
        return e.code
    return 0


def trim_video(src: Path, dst: Path, frames: int) -> None:
    """The first `frames` frames of `src` as an H.264 mp4 at its frame rate (no audio)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        for i, frame in enumerate(inp.decode(stream_in)):
            if i == frames:
                break
            frame.pts = None
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def readme_root(
    tmp_path_factory, tiny_dataset, tiny_codebook_run, tiny_driver_run, tiny_audio_run
) -> Path:
    """The stand-in repository root described in the module docstring."""
    base = tmp_path_factory.mktemp("readme")
    portraits = base / "shared" / "data" / "portraits"
    portraits.mkdir(parents=True)
    macron = SHARED_DATA / "portraits" / "macron_address_512.mp4"
    (portraits / macron.name).symlink_to(macron)
    anchor = SHARED_DATA / "portraits" / "news_anchor_de_512.mp4"
    trim_video(anchor, portraits / anchor.name, CROSS_FRAMES)
    root = base / "repo"
    runs = root / "runs"
    runs.mkdir(parents=True)
    (root / "configs").symlink_to(REPO / "configs")
    (root / "my_clip.mp4").symlink_to(macron)
    write_media(root / "speech.wav", 1.0, tone=(0.2, 0.8), video=False)
    (root / "N-Step-Checkpoint_19_120000.ckpt").symlink_to(root / "exported_init" / "stage1.ckpt")
    for name in ("macron128", "me", "mine"):  # copies: prepare refuses a symlink as --out
        shutil.copytree(tiny_dataset, runs / name)
    (runs / "cbref").symlink_to(tiny_codebook_run)
    (runs / "drvref").symlink_to(tiny_driver_run)
    copies = {tiny_dataset: runs / "macron128"}
    named = (("cb128", tiny_codebook_run), ("drv128", tiny_driver_run))
    for name, run in (*named, ("audio128", tiny_audio_run)):
        shutil.copytree(run, runs / name)
        copies[run] = runs / name
    for name in ("cb128", "drv128", "audio128"):  # the copies name each other
        config = json.loads((runs / name / "config.json").read_text())
        for key, value in config.items():
            if isinstance(value, str) and Path(value) in copies:
                config[key] = str(copies[Path(value)])
        (runs / name / "config.json").write_text(json.dumps(config))
    return root


def check_outputs(module: str, args: list[str], out: str) -> None:
    """Asserts that what the command says it writes is there (and what it printed)."""
    value = {a: b for a, b in zip(args, args[1:], strict=False)}
    if module == "data_prep.prepare":
        assert "already prepared from this source with these settings" in out
    elif module == "vpgc_jax.train":
        workdir = Path(value["--workdir"])
        steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
        assert steps and (steps[-1] == 0 or "resumed from step" in out), out
    elif module == "vpgc_jax.sweep":
        assert out.count("-m vpgc_jax.train") >= 2, out
    elif module == "vpgc_jax.reenact":
        assert Path(value["--out"]).stat().st_size > 0
    elif module == "vpgc_jax.export_torch":
        assert (Path(value["--out"]) / "vpgc_jax.json").is_file()
    elif module == "vpgc_jax.import_torch":
        assert (Path(value["--out"]) / "codebook" / "checkpoints" / "0").is_dir()
    elif module == "eval.evaluate":
        report = (Path(value["--out"]) / "report.md").read_text()
        if "--audio-model" in value:
            assert "Audio-driven lips" in report and "audio-driven self-reenactment" in report
        else:
            assert "does the output follow the driver?" in report
    elif module == "eval.report":
        assert Path(value["--out"]).stat().st_size > 0 and "| Run | step |" in out
    else:
        pytest.fail(f"no output check for {module}")


@pytest.mark.parametrize("section", RUN_SECTIONS)
def test_readme_section_runs(section, readme_root, monkeypatch):
    monkeypatch.chdir(readme_root)
    for line in readme_sections()[section]:
        kind, argv = python_command(line)
        if kind == "-c":  # the evaluate_checkpoint line: what it prints is kept
            printed = []
            exec(argv[0].replace("step=500", "step=2"), {"print": printed.append})
            assert printed[0]["step"] == 2 and printed[0]["psnr"] > 0, line
            continue
        assert kind == "-m", line
        module, *args = argv
        args += train_flags(args) if module == "vpgc_jax.train" else TINY_FLAGS.get(module, [])
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            status = run_module(module, args)
        assert status == 0, f"{line}\n{stdout.getvalue()[-2000:]}"
        check_outputs(module, args, stdout.getvalue())


@pytest.mark.parametrize("section", PARSE_ONLY_SECTIONS)
def test_readme_section_parses(section):
    for line in readme_sections()[section]:
        kind, argv = python_command(line)
        if kind != "-m":
            continue
        module, *args = argv
        if module == "pytest":
            continue
        if module == "vpgc_jax.train":
            with train_flags_parsed(args):
                pass
        else:
            cli = "vpgc_jax.app.__main__" if module == "vpgc_jax.app" else module
            importlib.import_module(cli).parse_args(args)
