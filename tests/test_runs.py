"""vpgc_jax.runs: run directories written before the nested model configs still restore and render
the same; weights-only checkpoints start training; the flat <-> nested conversion round-trips
every config variant; the padded batch helper.

tests/data/old_config/{codebook,driver}.json are the config.json files that the code before the
nesting (commit 6d3d9b9) wrote for 1-step runs of the tiny models of conftest.py
(`tests/data/old_config/README.md`); they are swapped into copies of the tiny runs.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import codebook as codebook_config
from configs import driver as driver_config
from vpgc_jax import checkpointing, runs
from vpgc_jax.inference import load_reenactor
from vpgc_jax.interop import runs as interop_runs
from vpgc_jax.trainers import codebook as codebook_trainer
from vpgc_jax.trainers import common

OLD = Path(__file__).resolve().parent / "data" / "old_config"


def old_run(run: Path, dest: Path, fixture: str, **paths) -> Path:
    """A copy of `run` whose config.json is the old-format fixture (paths filled in)."""
    shutil.copytree(run, dest)
    text = (OLD / fixture).read_text()
    for placeholder, path in paths.items():
        text = text.replace(placeholder, str(path))
    (dest / "config.json").write_text(text)
    return dest


def test_old_flat_configs_restore_and_render_the_same(
    tiny_codebook_run, tiny_driver_run, tiny_dataset, tmp_path
):
    old_cb = old_run(tiny_codebook_run, tmp_path / "cb", "codebook.json", DATASET_DIR=tiny_dataset)
    assert "K_c" in json.loads((old_cb / "config.json").read_text())["model"]  # really flat
    new_config, old_config = (runs.load_run_config(str(d)) for d in (tiny_codebook_run, old_cb))
    assert old_config.model.to_dict() == new_config.model.to_dict()
    assert runs.build_model(old_config) == runs.build_model(new_config)
    new, old = (runs.load_codebook(str(d)) for d in (tiny_codebook_run, old_cb))
    assert old.step == new.step == 2
    jax.tree.map(np.testing.assert_array_equal, old.params, new.params)

    # A stage-2 run of the old format, trained against an old-format stage-1 run: its recorded
    # stage-1 model (flat) is checked against the stage-1 run, and it renders the same frames.
    paths = {"CODEBOOK_WORKDIR": old_cb, "DATASET_DIR": tiny_dataset}
    old_drv = old_run(tiny_driver_run, tmp_path / "drv", "driver.json", **paths)
    recorded = json.loads((old_drv / "config.json").read_text())["codebook_model"]
    assert "z_channels" in recorded and "encoder" not in recorded
    heatmaps = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 7)).astype(np.float32)
    frames = [load_reenactor(str(d), batch=4).drive(heatmaps) for d in (tiny_driver_run, old_drv)]
    np.testing.assert_array_equal(frames[0], frames[1])


def test_training_starts_from_a_weights_only_checkpoint(tiny_codebook_run, tmp_path):
    """An imported run's checkpoint holds step and params only (`vpgc_jax.interop.runs`): the
    trainer starts from those weights with fresh optimizer states and a new discriminator."""
    config = runs.load_run_config(str(tiny_codebook_run))
    trained = runs.load_codebook(str(tiny_codebook_run)).params
    run = tmp_path / "imported"
    interop_runs.write_run(str(run), config, interop_runs.stage1_weights(config, trained), {})
    assert checkpointing.saved_fields(str(run / "checkpoints"), 0) == {"step", "params"}

    model, disc = runs.build_model(config), runs.build_discriminator(config)
    init = codebook_trainer.make_init(model, disc, *codebook_trainer.make_optimizers(config), 32)
    manager = checkpointing.make_manager(str(run / "checkpoints"))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    key = jax.random.PRNGKey(config.seed)
    step, state, _ = common.restore_or_init(manager, init, key, sharding, None, "stage 1", "run")
    shardings = jax.tree.map(lambda _: sharding, jax.eval_shape(init, key))
    fresh = jax.jit(init, out_shardings=shardings)(key)  # as restore_or_init: compiled once
    assert step == 0 and int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, state.params, trained)
    for field in ("opt_state", "disc_params", "disc_opt_state", "rng"):
        jax.tree.map(np.testing.assert_array_equal, getattr(state, field), getattr(fresh, field))


@pytest.mark.parametrize("variant", ["paper512", "reference", "vanilla", "cpu128+vanilla"])
def test_flat_and_nested_stage1_models_round_trip(variant):
    config = codebook_config.get_config(variant)
    flat = runs.flat_stage1_model(config)
    assert flat["grid_h"] == flat["grid_w"] == 16 and flat["resolution"] == config.resolution
    assert runs.nested_stage1_model(flat) == config.model.to_dict()
    upgraded = runs.upgrade_config({"stage": "codebook", "model": flat})
    assert upgraded["model"] == config.model.to_dict()
    assert runs.upgrade_config(upgraded) == upgraded  # the current format is left alone


def test_flat_driver_models_nest():
    config = driver_config.get_config("cpu128+reference")
    m = config.model.to_dict()
    flat = {k: v for k, v in m.items() if not isinstance(v, dict)}
    flat.update(**m["encoder"], **m["transformer"], in_channels=7)
    assert runs.nested_driver_model(flat) == m


def test_pad_batch():
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(runs.pad_batch(x, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert runs.pad_batch(x, 3) is x
    with pytest.raises(ValueError, match="1 to 2 entries, got 3"):
        runs.pad_batch(x, 2)
