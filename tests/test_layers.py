"""The import layering: data -> models -> losses -> runs -> trainers / inference / eval -> CLIs.

Every Python file of the repository is parsed (`ast`, nothing is imported) and each import of a
project module is checked against the layer table: a module may import its own layer and those
below, never one above. On top of that, only `vpgc_jax/train.py`, the trainers themselves and the
tests import `vpgc_jax.trainers`; the one exception is the benchmark scripts that time the trainers'
train steps (`benchmarks/run_all.py`, `benchmarks/gpu_suite.py`), which build them directly, and
`benchmarks/fullframe.py`, which trains the one-step runs it times paste-back with.
"""

import ast
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lowest first; a module belongs to the layer of its longest matching prefix.
LAYERS = {
    "base": (
        "configs",
        "vpgc_jax.checkpointing",
        "vpgc_jax.expression",
        "vpgc_jax.images",
        "vpgc_jax.memory",
        "vpgc_jax.metrics",
        "vpgc_jax.outputs",
        "vpgc_jax.parallel",
        "vpgc_jax.paste",
        "vpgc_jax.precision",
        "vpgc_jax.retarget",
        "vpgc_jax.video_out",
        "vpgc_jax.writers",
    ),
    "data": ("data_prep", "vpgc_jax.data"),
    "models": ("vpgc_jax.models",),
    "losses": ("vpgc_jax.losses",),
    "runs": ("vpgc_jax.exemplars", "vpgc_jax.runs"),
    "trainers / inference / eval": (
        "eval",
        "vpgc_jax.audio_drive",
        "vpgc_jax.fullframe",
        "vpgc_jax.inference",
        "vpgc_jax.interop",
        "vpgc_jax.trainers",
    ),
    "CLIs": (
        "benchmarks",
        "vpgc_jax.app",
        "eval.evaluate",
        "vpgc_jax.export_torch",
        "vpgc_jax.import_torch",
        "vpgc_jax.quickstart",
        "vpgc_jax.reenact",
        "vpgc_jax.sweep",
        "vpgc_jax.train",
    ),
}
RANK = {prefix: rank for rank, prefixes in enumerate(LAYERS.values()) for prefix in prefixes}
NAMES = list(LAYERS)
TRAINERS = "vpgc_jax.trainers"
MAY_IMPORT_TRAINERS = (
    "vpgc_jax.train",
    TRAINERS,
    "benchmarks.run_all",
    "benchmarks.gpu_suite",
    "benchmarks.fullframe",
)


def layer(module: str) -> int | None:
    """The rank of a project module (None: not a project module, e.g. numpy)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        rank = RANK.get(".".join(parts[:n]))
        if rank is not None:
            return rank
    return None


def source_files() -> list[Path]:
    """The repository's Python files outside the tests, hidden folders and run directories."""
    skip = {"tests", "runs", "workdirs", "__pycache__"}
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        out += [Path(root) / f for f in files if f.endswith(".py")]
    return sorted(out)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, `from a import b` as 'a.b' too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_every_project_module_has_a_layer():
    unplaced = [module_name(p) for p in source_files() if layer(module_name(p)) is None]
    unplaced = [m for m in unplaced if m not in ("vpgc_jax", "vpgc_jax.trainers")]
    assert not unplaced, f"add these modules to a layer of LAYERS: {unplaced}"


def test_no_import_reaches_a_higher_layer():
    bad = []
    for path in source_files():
        me = module_name(path)
        mine = layer(me)
        for line, target in imports(path):
            theirs = layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                where = f"{path.relative_to(REPO)}:{line}"
                bad.append(f"{where} ({NAMES[mine]}) imports {target} ({NAMES[theirs]})")
    assert not bad, "\n".join(bad)


def test_only_train_and_the_trainers_import_the_trainers():
    bad = []
    for path in source_files():
        me = module_name(path)
        if me.startswith(MAY_IMPORT_TRAINERS):
            continue
        for line, target in imports(path):
            if target == TRAINERS or target.startswith(TRAINERS + "."):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not bad, "restore runs with vpgc_jax.runs instead:\n" + "\n".join(bad)


def test_the_checks_see_a_violation():
    """The scan itself works: a trainer import and an upward import are both found."""
    assert layer("vpgc_jax.models.vqgan") < layer("vpgc_jax.runs") < layer("vpgc_jax.inference")
    assert layer("eval.evaluate") > layer("eval.metrics") and layer("numpy") is None
    found = imports(REPO / "vpgc_jax" / "train.py")
    assert any(t.startswith(TRAINERS) for _, t in found)
