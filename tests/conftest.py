"""Shared pytest fixtures: paths to the real sample data and one tiny prepared dataset."""

from pathlib import Path

import pytest

# The repository's parent has shared/ beside it (developer machines and CI).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PORTRAITS = SHARED_DATA / "portraits"
MACRON = PORTRAITS / "macron_address_512.mp4"

# The tiny dataset: the first 90 frames of the macron clip at 128 px, the last 20 frames as test.
TINY_FRAMES, TINY_TEST, TINY_SIZE = 90, 20, 128


@pytest.fixture(scope="session")
def macron_video() -> Path:
    """The 512x512, 30 fps macron clip (skips when the shared data is absent)."""
    if not MACRON.is_file():
        pytest.skip(f"shared sample data not found at {MACRON}")
    return MACRON


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, macron_video) -> Path:
    """A dataset prepared by `data_prep.prepare`: 90 macron frames at 128 px, 20 of them test."""
    from data_prep import prepare

    out = tmp_path_factory.mktemp("tiny") / "ds"
    argv = [
        f"--video={macron_video}",
        f"--out={out}",
        f"--size={TINY_SIZE}",
        f"--max-frames={TINY_FRAMES}",
        f"--test-frames={TINY_TEST}",
    ]
    assert prepare.main(argv) == 0
    return out


# A second person for cross-reenactment: the first 40 frames of the news anchor at 128 px.
ANCHOR = PORTRAITS / "news_anchor_de_512.mp4"
ANCHOR_FRAMES, ANCHOR_TEST = 40, 10


@pytest.fixture(scope="session")
def anchor_dataset(tmp_path_factory) -> Path:
    """Prepared by `data_prep.prepare`: 40 news-anchor frames at 128 px, 10 of them test."""
    from data_prep import prepare

    if not ANCHOR.is_file():
        pytest.skip(f"shared sample data not found at {ANCHOR}")
    out = tmp_path_factory.mktemp("anchor") / "ds"
    argv = [
        f"--video={ANCHOR}",
        f"--out={out}",
        f"--size={TINY_SIZE}",
        f"--max-frames={ANCHOR_FRAMES}",
        f"--test-frames={ANCHOR_TEST}",
    ]
    assert prepare.main(argv) == 0
    return out


# The tiny stage-1 model: 32 px, one downsampling -> 16x16 grid, r = 2, K_c = 8, d_c = 4.
TINY_CODEBOOK = {
    "resolution": 32,
    "model.resolution": 32,
    "model.ch": 32,
    "model.ch_mult": (1, 2),
    "model.num_res_blocks": 1,
    "model.attn_resolutions": (16,),
    "model.z_channels": 16,
    "model.embed_dim": 16,
    "model.K_c": 8,
    "model.r": 2,
    "disc.ndf": 8,
    "batch_size": 8,
    # The reference's consecutive-frame groups: the 1-vs-8-device tolerances were set with these
    # (the adaptive GAN weight amplifies rounding differently with other batches).
    "frames_per_group": 4,
    "loss.disc_start": 2,
    "log_every": 1,
    "sample_every": 0,
    "checkpoint_every": 1000,
    "eval_every": 0,
    "num_eval_frames": 4,
    "eval_batch_size": 4,
    "num_sample_frames": 2,
}


def apply_overrides(config, overrides: dict):
    """Sets dotted keys ('model.ch': 32) of an ml_collections config in place; returns it."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="session")
def tiny_codebook_run(tmp_path_factory, tiny_dataset) -> Path:
    """A finished 2-step stage-1 run of the tiny model on `tiny_dataset` (a run directory)."""
    from configs import codebook as codebook_config
    from vpgc_jax.trainers import codebook as trainer

    workdir = tmp_path_factory.mktemp("cb") / "run"
    config = codebook_config.get_config("cpu128")
    apply_overrides(config, {**TINY_CODEBOOK, "dataset_dir": str(tiny_dataset), "num_steps": 2})
    trainer.train_and_evaluate(config, str(workdir))
    return workdir


# The tiny stage-2 driver for `tiny_codebook_run` (32 px heatmaps, one downsampling, width 16).
TINY_DRIVER = {
    "model.ch": 32,
    "model.ch_mult": (1, 2),
    "model.num_res_blocks": 1,
    "model.attn_resolutions": (),
    "model.depth": 1,
    "model.heads": 2,
    "model.dim_head": 8,
    "model.mlp_dim": 32,
    "batch_size": 4,
    "log_every": 1,
    "sample_every": 0,
    "eval_every": 0,
}


@pytest.fixture(scope="session")
def tiny_driver_run(tmp_path_factory, tiny_codebook_run) -> Path:
    """A finished 1-step paper-variant driver run on `tiny_codebook_run` (no final evaluation)."""
    from configs import driver as driver_config
    from vpgc_jax.trainers import driver as trainer

    workdir = tmp_path_factory.mktemp("drv") / "run"
    config = driver_config.get_config("cpu128")
    overrides = {**TINY_DRIVER, "num_steps": 1, "final_eval": False}
    apply_overrides(config, {**overrides, "codebook_workdir": str(tiny_codebook_run)})
    trainer.train_and_evaluate(config, str(workdir))
    return workdir
