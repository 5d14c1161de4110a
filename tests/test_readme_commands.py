"""The README's commands as written (issue 17): every `python -m ...` command in its bash blocks
parses with the current CLIs, and the reenactment command runs with its relative paths.

Parsing is cheap and catches renamed or removed flags. The run uses the session's tiny runs under
the README's names, made relative by running from a temporary directory: `runs/drv128` and
`runs/macron128` are symlinks to `tiny_driver_run` and `tiny_dataset`, and `--max-frames 4` is
appended (substitution table: README path -> tiny fixture, plus that flag).
"""

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
ARGPARSE_CLIS = {
    "data_prep.prepare": "data_prep.prepare",
    "vpgc_jax.reenact": "vpgc_jax.reenact",
    "vpgc_jax.export_torch": "vpgc_jax.export_torch",
    "vpgc_jax.import_torch": "vpgc_jax.import_torch",
    "vpgc_jax.sweep": "vpgc_jax.sweep",
    "eval.evaluate": "eval.evaluate",
    "vpgc_jax.app": "vpgc_jax.app.__main__",
}


def readme_commands() -> list[list[str]]:
    """Each `python -m MODULE ...` command of the README's bash blocks, as argv after `-m`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = []
    for block in blocks:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" # ")[0].split("&& python", 1)[-1]
            if "python -m " not in line and not line.strip().startswith("-m "):
                continue
            line = line[line.index("-m ") :]
            while re.search(r"\[[^\[\]]*\]", line):  # optional [...] parts, innermost first
                line = re.sub(r"\[[^\[\]']*\]", "", line)
            argv = shlex.split(line, comments=True)[1:]
            if argv[0] != "pytest":
                commands.append(argv)
    return commands


def test_readme_has_the_commands():
    modules = {c[0] for c in readme_commands()}
    assert {
        "data_prep.prepare",
        "vpgc_jax.train",
        "vpgc_jax.reenact",
        "eval.evaluate",
    } - modules <= {"eval.evaluate"}  # eval.evaluate is documented in its module docstring


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    import importlib

    module, *args = argv
    args = [a for a in args if a != "&"]
    if module in ARGPARSE_CLIS:
        cli = importlib.import_module(ARGPARSE_CLIS[module])
        parse = getattr(cli, "parse_args", None)
        assert parse is not None, module
        parse(args)
    elif module == "vpgc_jax.train":
        config_arg = args[args.index("--config") + 1]
        path, _, variant = config_arg.partition(":")
        stage = Path(path).stem
        config = importlib.import_module(f"configs.{stage}").get_config(variant)
        for a in args:
            if a.startswith("--config."):
                key = a[len("--config.") :].split("=")[0]
                node = config
                for part in key.split("."):
                    node = node[part]  # KeyError for a field the config lacks
    elif module != "vpgc_jax.quickstart":
        pytest.fail(f"README command of an unknown module: {module}")


def test_readme_reenact_command_runs_with_relative_paths(
    tiny_driver_run, tiny_dataset, tmp_path, monkeypatch
):
    from vpgc_jax import reenact

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "drv128").symlink_to(tiny_driver_run)
    (tmp_path / "runs" / "macron128").symlink_to(tiny_dataset)
    command = next(c for c in readme_commands() if c[0] == "vpgc_jax.reenact")
    assert "runs/drv128" in command and "self.mp4" in command  # the README's self-reenactment
    monkeypatch.chdir(tmp_path)
    assert reenact.main([*command[1:], "--max-frames", "4"]) == 0
    assert (tmp_path / "self.mp4").stat().st_size > 0
