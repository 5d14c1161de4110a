"""SIGKILL while orbax saves a checkpoint: the run resumes from the newest intact step (issue 17).

A copy of the session's tiny stage-1 run (`tiny_codebook_run`, finished at step 2) is trained on
to step 4 in a subprocess that saves every step. The subprocess runs the trainer through a small
wrapper that makes orbax's commit of step 3 (`AtomicRenameTemporaryPath.finalize`, the rename of
the finished temporary directory) touch a marker file and sleep: the test kills it with SIGKILL
at that moment, so the kill lands deterministically after step 3's files are written and before
they commit. The wrapper patches a private orbax class; if orbax renames it, no marker appears
and the test fails on its timeout rather than passing unchecked.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Metrics that measure time, not training (they differ between any two runs).
TIMING = {"steps_per_sec", "images_per_sec", "data_wait_fraction"}

WRAPPER = """
import os, sys, time
from orbax.checkpoint._src.path import atomicity
from vpgc_jax import runs, train

original = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self):
    if self.get_final().name == os.environ["PAUSE_STEP"]:
        open(os.environ["PAUSE_MARKER"], "w").close()
        time.sleep(600)
    await original(self)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
workdir = sys.argv[1]
config = runs.load_run_config(workdir)
with config.unlocked():
    config.num_steps, config.checkpoint_every, config.final_eval = 4, 1, False
train.train_and_evaluate(config, workdir)
"""


def step_records(run: Path) -> dict[int, list[dict]]:
    """{step: [metrics.jsonl records of that step, timing removed]}, in file order."""
    out: dict[int, list[dict]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record.pop("step"), []).append(
            {k: v for k, v in record.items() if k not in TIMING}
        )
    return out


def test_sigkill_during_a_save_resumes_from_the_newest_intact_step(
    tiny_codebook_run, tmp_path, capsys
):

    from vpgc_jax import checkpointing, runs, train

    run = tmp_path / "run"
    shutil.copytree(tiny_codebook_run, run)
    marker = tmp_path / "paused"
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    env = {**os.environ, "PAUSE_STEP": "3", "PAUSE_MARKER": str(marker), "PYTHONPATH": str(REPO)}
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "wrapper.py"), str(run)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 1200  # a loaded 2-core machine; ~20 s when idle
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    checkpoints = run / "checkpoints"
    leftovers = [n for n in os.listdir(checkpoints) if n.startswith("3.")]
    assert sorted(n for n in os.listdir(checkpoints) if n.isdigit()) == ["2"]
    assert leftovers, os.listdir(checkpoints)  # step 3 was written, not committed
    killed = step_records(run)
    assert len(killed[3]) == 1  # the killed process trained and logged step 3

    config = runs.load_run_config(str(run))
    with config.unlocked():
        config.num_steps, config.final_eval = 3, False
    capsys.readouterr()
    train.train_and_evaluate(config, str(run))
    assert "resumed from step 2" in capsys.readouterr().out
    assert sorted(n for n in os.listdir(checkpoints) if not n.startswith(".")) == ["2", "3"]
    assert checkpointing.verify_manifest(checkpoints / "3")
    # The resumed step 3 is the killed run's step 3: same batch, same state, same losses.
    assert step_records(run)[3] == [killed[3][0], killed[3][0]]
