"""The exemplar driver (``model.exemplar``, `vpgc_jax.exemplars`): the nearest-landmark lookup,
the training table's gap, the model's correction of Z_ex, and a run from training to inference."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_driver import random_inputs, tiny
from test_train_driver import tiny_config

from eval import metrics
from vpgc_jax import exemplars, export_torch, inference, runs
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib
from vpgc_jax.data import pipeline
from vpgc_jax.models.vqgan import VQModel
from vpgc_jax.trainers import driver as trainer


def test_lookup_is_the_retrieval_baseline_and_training_keeps_the_gap(tiny_dataset):
    train, test = (
        frames_lib.load_landmarks(tiny_dataset, s)["landmarks"] for s in ("train", "test")
    )
    # The lookup is the retrieval baseline's, and both are the brute-force nearest neighbour.
    brute = ((test[:, None].astype(np.float64) - train[None]) ** 2).sum((2, 3)).argmin(1)
    np.testing.assert_array_equal(exemplars.nearest(train, test), brute)
    np.testing.assert_array_equal(metrics.retrieval_baseline(train, test, "landmarks"), brute)
    np.testing.assert_array_equal(exemplars.nearest(train, test, chunk=7), brute)
    d = ((train[:, None].astype(np.float64) - train[None]) ** 2).sum((2, 3))  # [K, K]
    frames = np.arange(len(train))
    for gap in (1, 10):
        table = exemplars.training_table(train, gap)
        for t, e in enumerate(table):
            allowed = np.abs(frames - t) >= gap
            assert abs(int(e) - t) >= gap
            assert d[t, e] <= d[t, allowed].min() * (1 + 1e-9) + 1e-9
    with pytest.raises(ValueError, match="at least 1 frame"):
        exemplars.training_table(train, 0)
    with pytest.raises(ValueError, match="no exemplar 5 or more frames away"):
        exemplars.training_table(train[:5], 5)


def test_the_driver_corrects_its_exemplar():
    model = tiny(exemplar=True)
    heatmaps, prior = random_inputs()
    z_ex = jax.random.normal(jax.random.PRNGKey(3), (4, 16, 16, 16))
    v = model.init(jax.random.PRNGKey(1), heatmaps, prior, z_ex)
    out = model.apply(v, heatmaps, prior, z_ex)
    # At initialisation the correction is small next to Z_ex (|Z_ex| ~ 0.8): F_hat starts at Z_ex.
    assert float(jnp.mean(jnp.abs(out - z_ex))) < 0.25 * float(jnp.mean(jnp.abs(z_ex)))
    # Z_ex also feeds the correction (it joins Z^l in the MLP input): not a plain sum, whose
    # gradient would be exactly 1.
    grad = jax.grad(lambda z: jnp.sum(model.apply(v, heatmaps, prior, z)))(z_ex)
    assert not np.all(np.asarray(grad) == 1.0)
    assert float(jnp.mean(grad)) == pytest.approx(1, abs=0.1)
    assert v["params"]["mlp_f"]["layer_0"]["kernel"].shape == (16 + 4 + 16, 16)
    with pytest.raises(ValueError, match=r"needs Z_ex of shape \(4, 16, 16, 16\), got None"):
        model.apply(v, heatmaps, prior)


def test_exemplar_run_trains_saves_its_bank_and_renders(tiny_codebook_run, tmp_path):
    workdir = tmp_path / "drv"
    config = tiny_config(tiny_codebook_run, num_steps=2, **{"model.exemplar": True})
    scores = trainer.train_and_evaluate(config, str(workdir))
    assert np.isfinite(scores["psnr"])

    # The bank: the frozen stage-1 encoder's Z of every training frame, with their landmarks.
    bank = exemplars.ExemplarBank.load(str(workdir / exemplars.FILENAME))
    cb_config, vq, vq_params, _ = runs.load_codebook(str(tiny_codebook_run))
    ds = cb_config.dataset_dir
    train = frames_lib.open_split(ds, "train")
    assert len(bank) == len(train) and bank.resolution == cb_config.resolution == 32
    idx = np.array([0, len(train) // 2, len(train) - 1])
    z = vq.apply({"params": vq_params}, pipeline.load_frames(train, idx, 32), method=VQModel.encode)
    np.testing.assert_allclose(bank.features[idx], z, rtol=2e-3, atol=2e-3)  # stored as float16
    size = float(frames_lib.load_meta(ds)["size"])
    lms = frames_lib.load_landmarks(ds, "train")["landmarks"] * (32 / size)
    np.testing.assert_allclose(bank.landmarks, lms, rtol=1e-6)

    # Inference needs the landmarks of each stack's centre frame; same frames as training's eval.
    reenactor = inference.load_reenactor(str(workdir), batch=4)
    test = frames_lib.load_landmarks(ds, "test")["landmarks"] * (32 / size)
    stacks = np.stack([heatmaps_lib.heatmap_stack(test, t, 32) for t in range(4)])
    with pytest.raises(ValueError, match="trained with exemplars"):
        reenactor.drive(stacks)
    frames = reenactor.drive(stacks, test[:4])
    assert frames.shape == (4, 32, 32, 3) and np.isfinite(frames).all()
    other = reenactor.drive(stacks, test[:4][::-1])  # other exemplars, other frames
    assert not np.allclose(frames, other)
    ev = json.loads((workdir / "eval.json").read_text())
    assert ev["psnr"] == pytest.approx(scores["psnr"])

    # No PyTorch counterpart: the export refuses it in one line, writing nothing.
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="exemplar driver .* cannot be exported"):
        export_torch.export(str(tiny_codebook_run), str(tmp_path / "out"), driver=str(workdir))
    assert not (tmp_path / "out").exists()
