"""Stage 2: the prior-guided driving module (paper Sec. 3.3; reference spec §4).

Every variant needs the stage-1 run it drives (`--config.codebook_workdir`); resolution, feature
width (z_channels), d_c and the grid come from that run's config.json, and the dataset defaults to
the stage-1 run's.

  # the paper's driver (sequential MLPs, mean-pooled F_g, 3-layer per-frame ViT) at 512 px
  python -m vpgc_jax.train --config configs/driver.py:paper512 --workdir runs/drv512 \
      --config.codebook_workdir=runs/cb512

  # as the released PyTorch code: parallel MLP_head/MLP_hair (max-pool), 4-layer joint transformer
  python -m vpgc_jax.train --config configs/driver.py:reference --workdir runs/drvref \
      --config.codebook_workdir=runs/cbref

  # small enough for 2 CPU cores, on a `configs/codebook.py:cpu128` stage-1 run
  python -m vpgc_jax.train --config configs/driver.py:cpu128 --workdir runs/drv128 \
      --config.codebook_workdir=runs/cb128

  # paper Table 5 ablations (compose with a size preset): 'baseline' (no P, no F_g), 'with_prior'
  python -m vpgc_jax.train --config configs/driver.py:cpu128+baseline --workdir runs/drv128_base \
      --config.codebook_workdir=runs/cb128

Variants compose with '+'.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The paper's stage-2 settings (paper Sec. 3.3, Eq. 6-8; spec §4.1-4.3)."""
    c = ml_collections.ConfigDict()
    c.stage = "driver"
    c.seed = 23
    c.codebook_workdir = ""  # the stage-1 run directory (required)
    c.codebook_step = -1  # stage-1 checkpoint step; -1: its latest (the run records the step used)
    c.dataset_dir = ""  # empty: the stage-1 run's dataset
    c.frames_per_group = 4  # batches of 4 consecutive frames (spec §3.2)
    c.batch_size = 4  # global batch, in frames
    c.num_workers = 0
    # Mixed precision (vpgc_jax.precision): 'auto' = bfloat16 compute on GPU/TPU, float32 on CPU;
    # parameters, norms, softmaxes, codebook similarities and losses stay float32 either way.
    c.compute_dtype = "auto"
    c.remat = False  # rematerialise encoder/decoder blocks in the backward pass (512 px memory)
    c.landmark_jitter = 0.0  # 0.05: U(0.95, 1.05) landmark scale (inactive in the reference, §3.2)

    # `vpgc_jax.models.driver.make_driver(**c.model, ...)`; its width, d_c, resolution and grid
    # come from the stage-1 run.
    c.model = ml_collections.ConfigDict()
    c.model.variant = "paper"  # 'paper' (Eq. 6-7, per-frame ViT) | 'reference' (spec §4.2)
    # The heatmap encoder E^l (spec §4.1): `Encoder` fields; 7 input heatmaps, output D wide.
    c.model.encoder = dict(
        ch=64, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,)
    )
    # `Transformer` fields (paper: "three-layer ViT"; the reference uses 4 layers).
    c.model.transformer = dict(depth=3, heads=4, dim_head=64, mlp_dim=256, dropout=0.1)
    c.model.use_texture_prior = True  # P in the MLP input (Table 5 "w P")
    c.model.use_global_feature = True  # F_g (Table 5 "Full model")
    # Paper silent, reference none. Measured (cpu128, 150 steps): without it the background
    # tokens of a heatmap are identical (zero input, zero padding), the model cannot tell
    # positions apart and feature L1 stalls at the global-mean level (0.286); with it 0.230.
    # See benchmarks/RESULTS.md.
    c.model.pos_embedding = True
    c.model.frames_per_group = 4  # 'reference' joint attention over a group
    # The MLPs' nonlinearity: 'relu' (paper, reference) or 'gelu' (beyond both; RESULTS.md).
    c.model.mlp_activation = "relu"
    # Beyond the paper and the reference (vpgc_jax.exemplars): the driver also gets the stage-1
    # features Z_ex of the training frame with the nearest landmarks and predicts Z_ex + a
    # correction. In training the exemplar is at least `exemplar_gap` frames from the target.
    c.model.exemplar = False
    c.exemplar_gap = 10
    c.loss = ml_collections.ConfigDict(
        dict(
            feat_weight=10.0,  # Eq. 8: lambda * ||F_hat - Z||_1, lambda = 10
            # Reference: 10 x L1 between consecutive predictions of a group. Off by measurement:
            # outputs already flicker less than the real video; the term halves their motion and
            # costs 0.4 dB (benchmarks/RESULTS.md, Stage 2).
            temporal_weight=0.0,
            # Beyond the paper (0: off): image terms through the frozen codebook + decoder, L1
            # and LPIPS, over a box of image_crop px around the subject's mean face (0: the
            # whole frame).
            image_weight=0.0,
            image_lpips_weight=0.0,
            image_crop=0,
            # Beyond the paper (0: Eq. 8's plain mean): latent cells over the subject's mean mouth
            # and eye boxes weigh 1 + region_weight in the feature L1 (trainers.driver).
            region_weight=0.0,
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            encoder_lr=5e-4,  # E^l
            lr=1e-4,  # prior MLPs and transformer
            b1=0.5,
            b2=0.999,
            # 'constant' (paper, reference) | 'cosine' (trainers.common.learning_rate)
            schedule="constant",
            warmup_steps=0,
            final_lr_fraction=0.0,
        )
    )

    c.num_steps = 100_000
    c.log_every = 50
    c.sample_every = 1000
    c.checkpoint_every = 5000
    c.keep_checkpoints = 3
    c.eval_every = 0
    c.num_eval_frames = 0  # 0: the whole test split
    c.eval_batch_size = 4
    c.num_sample_frames = 4
    c.final_eval = True  # eval.json on the whole test split at the end
    # A latest checkpoint that cannot be restored: False falls back to the newest intact step
    # (one warning line), True stops with an error (vpgc_jax.trainers.resume).
    c.strict_resume = False
    return c


def _paper512(c):
    return c


def _reference(c):
    c.model.variant = "reference"
    c.model.transformer.depth = 4
    c.model.pos_embedding = False
    c.loss.temporal_weight = 10.0
    c.frames_per_group = c.model.frames_per_group  # joint attention needs consecutive groups
    return c


def _baseline(c):
    c.model.use_texture_prior = False
    c.model.use_global_feature = False
    return c


def _with_prior(c):
    c.model.use_texture_prior = True
    c.model.use_global_feature = False
    return c


def _cpu128(c):
    """For a `configs/codebook.py:cpu128` stage-1 run (128 px, 16x16 grid, z_channels 64).

    Three downsamplings (128 -> 16) at ch 32 with one block per level, no attention; the
    transformer keeps 4 heads at width 64 (the stage-1 z_channels). See benchmarks/RESULTS.md for
    the step time and the measurements behind the defaults.
    """
    c.model.encoder.update(dict(ch=32, ch_mult=(1, 1, 2, 4), num_res_blocks=1, attn_resolutions=()))
    c.model.transformer.update(dict(dim_head=16, mlp_dim=128))
    # 1e-3 for both parts: at the reference's 5e-4 / 1e-4, 150 steps reached feature L1 0.213,
    # at 1e-3 / 1e-3 0.140 (a CPU run has ~1000 steps, the reference ~100 epochs).
    c.optim.encoder_lr = 1e-3
    c.optim.lr = 1e-3
    # 4 independent frames per batch (the paper variant has no cross-frame term): 25.43 dB held-out
    # at 1000 steps against a 250-step stage 1, where 4 consecutive frames reached 22.53 dB at
    # 500 (see benchmarks/RESULTS.md); `+reference` restores the groups its attention needs.
    c.frames_per_group = 1
    c.num_steps = 1000
    c.log_every = 25
    c.sample_every = 250
    c.checkpoint_every = 500
    c.eval_every = 500
    c.num_eval_frames = 64
    c.eval_batch_size = 16
    return c


VARIANTS = {
    "paper512": _paper512,
    "reference": _reference,
    "baseline": _baseline,
    "with_prior": _with_prior,
    "cpu128": _cpu128,
}


def get_config(arg: str = "paper512") -> ml_collections.ConfigDict:
    """Returns the config for `arg`, one variant name or several joined by '+', applied in order.

    Raises:
      ValueError: an unknown variant name (the message lists the known ones).
    """
    c = base_config()
    names = [n for n in (arg or "paper512").split("+") if n]
    names.sort(key=lambda n: n not in ("cpu128", "paper512"))  # size presets first
    for name in names:
        if name not in VARIANTS:
            raise ValueError(f"unknown driver config variant {name!r}; known: {sorted(VARIANTS)}")
        c = VARIANTS[name](c)
    c.variant = "+".join(names)
    return c
