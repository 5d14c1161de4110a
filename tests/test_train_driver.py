"""Stage-2 trainer on real frames, tiny size: frozen stage 1, resume, errors.

The same trainer on 8 devices and over 2 processes is in tests/test_multihost.py.
"""

import hashlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TINY_DRIVER, apply_overrides

from configs import codebook as codebook_config
from configs import driver as driver_config
from eval import evaluators
from vpgc_jax import runs, writers
from vpgc_jax.models.vqgan import VQModel
from vpgc_jax.trainers import driver as trainer

TINY = {
    **TINY_DRIVER,
    "batch_size": 8,
    "log_every": 1,
    "sample_every": 0,
    "checkpoint_every": 1000,
    "eval_every": 0,
    "num_eval_frames": 8,
    "eval_batch_size": 8,
    "num_sample_frames": 2,
}
TERMS = ("loss", "feat_l1", "temporal_l1", "image_l1", "image_lpips")


def tiny_config(codebook_run, variant="cpu128", **overrides):
    config = driver_config.get_config(variant)
    return apply_overrides(config, {**TINY, "codebook_workdir": str(codebook_run), **overrides})


def by_step(workdir) -> dict[int, dict]:
    return {r["step"]: r for r in writers.read_metrics(workdir) if "loss" in r}


def tree_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(directory)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_training_leaves_stage1_untouched_and_resumes(tiny_codebook_run, tmp_path):
    cb_ckpts = tiny_codebook_run / "checkpoints"
    before = tree_digest(cb_ckpts)
    _, vq, cb_params, cb_step = runs.load_codebook(str(tiny_codebook_run))
    prior = vq.apply({"params": cb_params}, method=VQModel.prior)  # what the driver is fed
    np.testing.assert_allclose(prior, cb_params["quantize"]["embedding"].mean(axis=2), rtol=1e-6)
    assert prior.shape == (16, 16, 4)
    workdir = tmp_path / "drv"
    image_terms = {"loss.image_weight": 1.0, "loss.image_lpips_weight": 1.0}
    config = tiny_config(tiny_codebook_run, num_steps=2, sample_every=2, **image_terms)
    scores = trainer.train_and_evaluate(config, str(workdir))

    # Stage 1 never changes: its checkpoint files and the restored parameters are identical.
    assert tree_digest(cb_ckpts) == before
    _, _, after, _ = runs.load_codebook(str(tiny_codebook_run))
    jax.tree.map(np.testing.assert_array_equal, cb_params, after)

    # Only the driver is trained and checkpointed.
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["codebook_step"] == cb_step == 2
    assert saved["dataset_dir"] == codebook_config_dataset(tiny_codebook_run)
    metrics = by_step(workdir)
    assert all(np.isfinite(metrics[s][t]) for s in (1, 2) for t in TERMS)
    assert metrics[1]["image_l1"] > 0 and metrics[1]["image_lpips"] > 0
    state_dir = workdir / "checkpoints" / "2" / "state"
    assert state_dir.is_dir()
    keys = json.dumps(sorted(p.name for p in state_dir.rglob("*")))
    assert "decoder" not in keys and "quantize" not in keys

    # eval.json: self-reenactment on the whole test split, the stage-1 bound, temporal stats.
    ev = json.loads((workdir / "eval.json").read_text())
    assert ev["num_frames"] == 20 and ev["psnr"] == pytest.approx(scores["psnr"])
    assert set(ev["stage1_reconstruction"]) == {"psnr", "ssim", "lpips"}
    assert ev["temporal_error"] > 0 and ev["motion_ratio"] >= 0
    assert (workdir / "samples" / "step_0000002.png").exists()

    # Re-running finishes immediately from the checkpoint; more steps continue from step 2.
    more = {**image_terms, "final_eval": False}  # evaluated above already
    trainer.train_and_evaluate(tiny_config(tiny_codebook_run, num_steps=3, **more), str(workdir))
    assert sorted(by_step(workdir)) == [1, 2, 3]

    # The run is tied to its stage-1 run.
    with pytest.raises(ValueError, match="was trained against stage-1 run"):
        trainer.train_and_evaluate(tiny_config(tmp_path / "elsewhere", num_steps=4), str(workdir))


def codebook_config_dataset(run: Path) -> str:
    return json.loads((run / "config.json").read_text())["dataset_dir"]


def test_frame_grouping_is_checked(tiny_codebook_run, tmp_path):
    temporal = tiny_config(tiny_codebook_run, **{"loss.temporal_weight": 10.0})
    with pytest.raises(ValueError, match="temporal_weight needs consecutive frames"):
        trainer.train_and_evaluate(temporal, str(tmp_path / "a"))
    reference = tiny_config(tiny_codebook_run, "cpu128+reference", frames_per_group=2)
    with pytest.raises(ValueError, match="groups of 4 consecutive frames"):
        trainer.train_and_evaluate(reference, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_reference_variant_trains(tiny_codebook_run, tmp_path):
    config = tiny_config(tiny_codebook_run, variant="cpu128+reference", num_steps=1)
    scores = trainer.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(scores["psnr"]) and by_step(tmp_path)[1]["temporal_l1"] > 0


def test_bad_stage1_inputs(tiny_codebook_run, tmp_path):
    with pytest.raises(ValueError, match="codebook_workdir is empty"):
        trainer.train_and_evaluate(tiny_config(""), str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="not a stage-1 run directory"):
        trainer.train_and_evaluate(tiny_config(tmp_path / "missing"), str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
        runs.load_codebook(str(tiny_codebook_run), 7)
    vanilla = codebook_config.get_config("cpu128+vanilla")
    with pytest.raises(ValueError, match="needs a grid-codebook stage-1 run"):
        runs.build_driver(tiny_config(tiny_codebook_run), vanilla)


def test_temporal_stats_stream_in_any_chunks():
    """Fed in batches or at once, the statistics are the same; a copy of the truth scores 0 / 1."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 4, 4, 3))
    y = x + 0.1 * rng.normal(size=x.shape)
    whole = evaluators.TemporalStats()
    whole.add(x, y)
    for size in (1, 2, 5):
        chunked = evaluators.TemporalStats()
        for i in range(0, len(x), size):
            chunked.add(x[i : i + size], y[i : i + size])
        for k, v in whole.read().items():
            assert chunked.read()[k] == pytest.approx(v, rel=1e-9), (size, k)
    exact = evaluators.TemporalStats()
    exact.add(x, x)
    assert exact.read() == {"temporal_error": 0.0, "motion_ratio": 1.0, "flicker_ratio": 1.0}
    still = evaluators.TemporalStats()
    still.add(x, np.repeat(y[:1], len(y), axis=0))  # a frozen output
    assert still.read()["motion_ratio"] == 0.0 and still.read()["flicker_ratio"] == 0.0
