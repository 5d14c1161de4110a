"""Resuming a run: its config is frozen, a damaged latest checkpoint falls back (issue 17).

Damage: a truncated data file, a missing metadata file, and bytes flipped without changing the
file's length (caught by the content manifest, `checkpointing.verify_manifest`).

Works on copies of the session's tiny stage-1 run (`tiny_codebook_run`, one checkpoint at step 2).
For the fallback cases its step 2 is copied to step 1 (the same trainer's save, intact) before
step 2 is damaged.
"""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from vpgc_jax import checkpointing, runs
from vpgc_jax.trainers import codebook as codebook_trainer
from vpgc_jax.trainers import common, resume


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_changed_model_on_resume_is_refused_before_writing(tiny_codebook_run, tmp_path):
    from vpgc_jax import train

    run = copy_run(tiny_codebook_run, tmp_path / "run")
    config = runs.load_run_config(str(run))
    stored = (run / "config.json").read_bytes()
    listing = sorted(os.listdir(run))
    with config.unlocked():
        config.model.codebook.K_c = 32
        config.optim.lr = 1e-3
        config.num_steps = 5  # may change
    with pytest.raises(resume.ConfigChangedError) as e:
        train.train_and_evaluate(config, str(run))
    msg = str(e.value)
    assert "\n" not in msg and str(run) in msg
    assert "model.codebook.K_c: 8 -> 32" in msg and "optim.lr" in msg and "num_steps:" not in msg
    assert (run / "config.json").read_bytes() == stored and sorted(os.listdir(run)) == listing


def test_resumable_fields_and_paths_pass(tiny_codebook_run, tmp_path):
    run = copy_run(tiny_codebook_run, tmp_path / "run")
    stored = json.loads((run / "config.json").read_text())
    config = runs.load_run_config(str(run))
    with config.unlocked():
        config.num_steps, config.log_every, config.strict_resume = 9, 3, True
        # The same dataset by another path form (a symlink).
        os.symlink(config.dataset_dir, tmp_path / "link")
        config.dataset_dir = str(tmp_path / "link")
    resume.start_run(config, str(run))
    assert json.loads((run / "config.json").read_text()) == stored  # written once, at the start


@pytest.fixture
def run_with_two_steps(tiny_codebook_run, tmp_path):
    run = copy_run(tiny_codebook_run, tmp_path / "run")
    shutil.copytree(run / "checkpoints" / "2", run / "checkpoints" / "1")
    return run


def restore(run, strict=False):
    config = runs.load_run_config(str(run))
    model, disc = runs.build_model(config), runs.build_discriminator(config)
    init = codebook_trainer.make_init(model, disc, *codebook_trainer.make_optimizers(config), 32)
    manager = checkpointing.make_manager(str(run / "checkpoints"))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    key = jax.random.PRNGKey(config.seed)
    try:
        step, state, _ = common.restore_or_init(
            manager, init, key, sharding, None, "stage 1", str(run), strict=strict
        )
        return step, state, manager.all_steps()
    finally:
        manager.close()


def biggest_data_file(step_dir):
    files = glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True)
    return max(files, key=os.path.getsize)


def truncate_data_file(step_dir):
    biggest = biggest_data_file(step_dir)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)


def flip_bytes(step_dir):
    """Inverts 64 bytes in the middle of the biggest data file; its length stays the same."""
    biggest = biggest_data_file(step_dir)
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(64)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    assert os.path.getsize(biggest) == size


DAMAGES = {
    "truncated data file": truncate_data_file,
    "missing metadata file": lambda step_dir: os.remove(step_dir / "state" / "_METADATA"),
    "bytes flipped, same length": flip_bytes,
}


def test_saved_steps_have_a_content_manifest(tiny_codebook_run):
    step_dir = tiny_codebook_run / "checkpoints" / "2"
    manifest = json.loads((step_dir / checkpointing.MANIFEST).read_text())
    assert os.path.relpath(biggest_data_file(step_dir), step_dir) in manifest
    assert checkpointing.verify_manifest(step_dir)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_latest_checkpoint_falls_back(run_with_two_steps, damage, capsys):
    run = run_with_two_steps
    intact = runs.load_codebook(str(run), 1).params
    DAMAGES[damage](run / "checkpoints" / "2")
    step, state, steps = restore(run)
    assert step == 1 and list(steps) == [1]
    jax.tree.map(np.testing.assert_array_equal, state.params, intact)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "checkpoint step 2" in warnings[0], warnings
    assert (run / "damaged_checkpoints" / "2").is_dir()  # kept, out of the manager's way


@pytest.mark.parametrize("damage", ["truncated data file", "bytes flipped, same length"])
def test_strict_resume_makes_a_damaged_checkpoint_an_error(run_with_two_steps, damage):
    DAMAGES[damage](run_with_two_steps / "checkpoints" / "2")
    with pytest.raises(resume.CheckpointRestoreError, match="checkpoints/2: cannot be restored"):
        restore(run_with_two_steps, strict=True)
    assert (run_with_two_steps / "checkpoints" / "2").is_dir()  # nothing moved


def test_flipped_bytes_stop_loading_a_run_for_inference(tiny_codebook_run, tmp_path):
    run = copy_run(tiny_codebook_run, tmp_path / "run")
    flip_bytes(run / "checkpoints" / "2")
    with pytest.raises(checkpointing.CheckpointCorruptError, match="same length"):
        runs.load_codebook(str(run), 2)
