"""The training options beyond the paper (issue 16): LPIPS on the face box, the cosine learning-rate
schedule, the mouth- and eye-weighted feature loss, and the stage-1 step without its GAN branch.
Real landmarks from the tiny macron dataset; one compiled tiny stage-1 step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CODEBOOK, apply_overrides

from configs import codebook as codebook_config
from configs import driver as driver_config
from eval import regions
from vpgc_jax import runs
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import pipeline
from vpgc_jax.losses import lpips as lpips_lib
from vpgc_jax.trainers import codebook as cb_trainer
from vpgc_jax.trainers import common
from vpgc_jax.trainers import driver as drv_trainer


def mean_landmarks(dataset, resolution: int) -> np.ndarray:
    meta = frames_lib.load_meta(dataset)
    lms = frames_lib.load_landmarks(dataset, "train")["landmarks"]
    return lms.mean(0) * (resolution / float(meta["size"]))  # [68, 2] (x, y)


@pytest.mark.parametrize("resolution, side", [(128, 64), (32, 16), (128, 128)])
def test_face_box_holds_the_mean_face_inside_the_frame(tiny_dataset, resolution, side):
    y0, x0 = cb_trainer.face_box(str(tiny_dataset), resolution, side)
    assert 0 <= y0 <= resolution - side and 0 <= x0 <= resolution - side
    inner = mean_landmarks(tiny_dataset, resolution)[27:68]  # nose, eyes and mouth
    assert (inner[:, 0] >= x0).all() and (inner[:, 0] < x0 + side).all()
    assert (inner[:, 1] >= y0).all() and (inner[:, 1] < y0 + side).all()
    with pytest.raises(ValueError, match="lpips_crop"):
        cb_trainer.face_box(str(tiny_dataset), resolution, resolution + 1)


def test_learning_rate_schedules():
    config = codebook_config.get_config("cpu128")
    assert common.learning_rate(2e-4, config) == 2e-4  # paper / reference: constant
    config.optim.update(dict(schedule="cosine", warmup_steps=10, final_lr_fraction=0.05))
    config.num_steps = 100
    lr = common.learning_rate(2e-4, config)
    assert float(lr(0)) == 0.0
    assert float(lr(10)) == pytest.approx(2e-4)
    assert float(lr(55)) == pytest.approx(0.5 * (2e-4 + 1e-5), rel=1e-4)  # half-way down
    assert float(lr(100)) == pytest.approx(1e-5)
    config.optim.schedule = "linear"
    with pytest.raises(ValueError, match="schedule"):
        common.learning_rate(2e-4, config)


def test_region_weights_cover_the_mean_mouth_and_eyes(tiny_dataset):
    w = drv_trainer.region_weights(str(tiny_dataset), 128, 16, 2.0)
    assert w.shape == (16, 16) and set(np.unique(w)) == {1.0, 3.0}
    mean = mean_landmarks(tiny_dataset, 128)
    for first, last in regions.REGIONS.values():
        cells = (mean[first:last] // 8).astype(int)  # 8 px per cell
        assert (w[cells[:, 1], cells[:, 0]] == 3.0).all()
    assert (w[:4] == 1).all() and (w[-2:] == 1).all()  # hair above, torso below: plain weight
    assert driver_config.get_config("paper512").loss.region_weight == 0  # paper: Eq. 8 as is


def test_step_without_gan_leaves_the_discriminator_and_scores_the_face_box(tiny_dataset):
    overrides = {**TINY_CODEBOOK, "dataset_dir": str(tiny_dataset), "frames_per_group": 1}
    config = apply_overrides(codebook_config.get_config("cpu128"), overrides)
    config.batch_size, config.num_steps, config.loss.disc_start = 2, 5, 5  # GAN never on
    config.loss.lpips_crop = 16
    box = cb_trainer.face_box(str(tiny_dataset), 32, 16)
    model, disc = runs.build_model(config), runs.build_discriminator(config)
    step, ae_tx, d_tx = cb_trainer.make_train_step(model, disc, config, box)
    state = jax.jit(cb_trainer.make_init(model, disc, ae_tx, d_tx, 32))(jax.random.PRNGKey(0))
    test = frames_lib.open_split(tiny_dataset, "test")
    x = jnp.asarray(pipeline.load_frames(test, np.arange(2), 32))
    lpips_params = lpips_lib.load_lpips_params()
    new, out = jax.jit(step)(state, {"image": x}, lpips_params)
    assert np.isfinite(float(out["loss"])) and float(out["d_loss"]) == 0.0
    old_disc = jax.tree.leaves(state.disc_params)
    for a, b in zip(jax.tree.leaves(new.disc_params), old_disc, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True)
    )
    # The logged LPIPS is that of the 16 x 16 face box of the initial model's reconstruction.
    x_rec, _ = model.apply({"params": state.params}, x, train=True, rngs={"dropout": state.rng})
    (y0, x0), s = box, 16
    crop = lpips_lib.lpips(
        lpips_params, x[:, y0 : y0 + s, x0 : x0 + s], x_rec[:, y0 : y0 + s, x0 : x0 + s]
    )
    assert float(out["lpips"]) == pytest.approx(float(jnp.mean(crop)), rel=1e-4)
