"""Stage-1 trainer on real frames, tiny size, one device: resume continuity, eval, NaN guard.

The same runs on 8 devices and over 2 processes (with SIGTERM and resuming across device counts)
are in tests/test_multihost.py.
"""

import json
import shutil

import pytest
from conftest import TINY_CODEBOOK, apply_overrides

from configs import codebook as codebook_config
from eval import evaluators
from vpgc_jax import runs, writers
from vpgc_jax.losses.vqgan import vq_weights
from vpgc_jax.trainers import codebook as trainer
from vpgc_jax.trainers import common

TINY = TINY_CODEBOOK
LOSS_TERMS = ("loss", "l1", "lpips", "nll", "vq_loss", "g_loss", "d_loss", "d_weight")


def tiny_config(dataset_dir, **overrides):
    config = codebook_config.get_config("cpu128")
    return apply_overrides(config, {**TINY, "dataset_dir": str(dataset_dir), **overrides})


def by_step(workdir) -> dict[int, dict]:
    return {r["step"]: r for r in writers.read_metrics(workdir) if "loss" in r}


def test_resume_continues_exactly_and_the_run_keeps_its_evaluation(tiny_dataset, tmp_path):
    total = 4
    ref_dir = tmp_path / "run1"
    scores = trainer.train_and_evaluate(
        tiny_config(tiny_dataset, num_steps=total, sample_every=total, checkpoint_every=2),
        str(ref_dir),
    )
    run1 = by_step(ref_dir)
    assert sorted(run1) == list(range(1, total + 1))
    # disc_start=2 counts completed steps, as the reference global_step: the GAN acts from step 3.
    assert run1[2]["disc_factor"] == 0.0 and run1[3]["disc_factor"] == 1.0

    # Resuming from run1's step-2 checkpoint (same device count) reproduces steps 3.. exactly.
    resume_dir = tmp_path / "resume"
    (resume_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_dir / "checkpoints" / "2", resume_dir / "checkpoints" / "2")
    more = tiny_config(tiny_dataset, num_steps=total, final_eval=False)  # evaluated below
    trainer.train_and_evaluate(more, str(resume_dir))
    resumed = by_step(resume_dir)
    assert sorted(resumed) == list(range(3, total + 1))
    for step in resumed:
        for term in LOSS_TERMS:
            assert resumed[step][term] == pytest.approx(run1[step][term], rel=1e-6, abs=1e-7), (
                f"step {step} {term}: resumed vs uninterrupted"
            )

    # What the user keeps: eval.json with held-out metrics, samples, health stats in the metrics.
    saved = json.loads((ref_dir / "eval.json").read_text())
    assert saved["step"] == total and saved["num_frames"] == 20  # the whole test split
    assert saved["psnr"] == pytest.approx(scores["psnr"]) and 0 < saved["lpips"] < 1
    assert (ref_dir / "samples" / f"step_{total:07d}.png").exists()
    again = evaluators.evaluate_checkpoint(str(ref_dir))  # re-evaluating the final checkpoint
    assert again["step"] == total
    for k in ("psnr", "ssim", "lpips"):
        assert again[k] == pytest.approx(saved[k], rel=1e-5)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 3"):
        evaluators.evaluate_checkpoint(str(ref_dir), step=3)
    assert {"entropy", "max_weight", "effective_codes", "grad_norm", "steps_per_sec"} <= set(
        run1[1]
    )
    assert 1 <= run1[1]["effective_codes"] <= 4 * 8  # at most the r^2 * K_c window codes


def test_non_finite_loss_stops_with_step_and_term(tiny_dataset, tmp_path):
    config = tiny_config(tiny_dataset, num_steps=3, checkpoint_every=1)
    config.loss.lpips_weight = float("nan")
    with pytest.raises(common.NonFiniteLossError, match=r"step 1: .*loss=nan"):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_config_variants_build():
    for arg in ("paper512", "reference", "vanilla", "cpu128", "cpu128+vanilla"):
        config = codebook_config.get_config(arg)
        model = runs.build_model(config)
        assert model.resolution == config.resolution
        assert model.encoder.latent_grid == (16, 16)  # every preset keeps the paper's grid
        if model.is_grid:
            assert (model.quantize.grid_h, model.quantize.grid_w) == (16, 16)
    ref = codebook_config.get_config("reference")
    cb = ref.model.codebook
    assert (cb.window, cb.lookup, cb.trainable) == ("knn", "hard", False)
    assert vq_weights(ref.loss.beta, ref.loss.legacy) == (0.25, 1.0)
    paper = codebook_config.get_config("paper512")
    assert vq_weights(paper.loss.beta, paper.loss.legacy) == (1.0, 1.0)
    van = codebook_config.get_config("cpu128+vanilla")
    cb = van.model.codebook
    assert cb.kind == "vanilla" and cb.num_codes * van.model.embed_dim == 16 * 16 * cb.K_c * cb.d_c
    assert runs.build_model(van).quantize.num_codes == cb.num_codes
    with pytest.raises(ValueError, match="unknown codebook config variant"):
        codebook_config.get_config("paper1024")
