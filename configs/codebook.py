"""Stage 1: the grid-based codebook autoencoder (paper Sec. 3.1-3.2; reference spec §1-2).

Launch (one variant per command; `--config.x=y` overrides any field):

  # the paper's model at 512 px (GPU): batch 4, lr 4.5e-5, GAN from step 10k
  python -m vpgc_jax.train --config configs/codebook.py:paper512 --workdir runs/cb512 \
      --config.dataset_dir=runs/macron

  # as the released PyTorch code: knn window, hard lookup, frozen N(0,1) codebook, legacy beta
  python -m vpgc_jax.train --config configs/codebook.py:reference --workdir runs/cbref \
      --config.dataset_dir=runs/macron

  # VQGAN's unordered codebook (N=1024, d=256) at otherwise identical settings (paper Table 4)
  python -m vpgc_jax.train --config configs/codebook.py:vanilla --workdir runs/cbvan \
      --config.dataset_dir=runs/macron

  # small enough to train usefully on 2 CPU cores (128 px; 16x16 grid and r=4 window kept)
  python -m vpgc_jax.train --config configs/codebook.py:cpu128 --workdir runs/cb128 \
      --config.dataset_dir=runs/macron128

Variants compose with '+': `cpu128+vanilla` is the vanilla codebook at the cpu128 settings.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The paper's stage-1 settings (paper Sec. 3.2 and 4.1, spec §1.1, §2)."""
    c = ml_collections.ConfigDict()
    c.stage = "codebook"
    c.seed = 23  # the reference's seed_everything(23)
    c.dataset_dir = ""
    c.resolution = 512
    c.frames_per_group = 4  # reference: each batch is 4 consecutive frames (spec §3.1)
    c.batch_size = 4  # global batch, in frames
    c.num_workers = 0
    # Mixed precision (vpgc_jax.precision): 'auto' = bfloat16 compute on GPU/TPU, float32 on CPU;
    # parameters, norms, softmaxes, codebook similarities and losses stay float32 either way.
    c.compute_dtype = "auto"
    c.remat = False  # rematerialise encoder/decoder blocks in the backward pass (512 px memory)

    # `vpgc_jax.models.vqgan.make_vqmodel(**c.model, resolution=c.resolution)`. The latent grid
    # (16x16 here) is derived from the resolution and len(encoder.ch_mult), never set.
    c.model = ml_collections.ConfigDict()
    # Taming's ddconfig: `Encoder` fields; the decoder mirrors them (spec §1.1-1.2).
    c.model.encoder = dict(
        ch=64,
        ch_mult=(1, 1, 2, 2, 4, 8),
        num_res_blocks=2,
        attn_resolutions=(16,),
        z_channels=256,
        dropout=0.0,
    )
    c.model.embed_dim = 256  # quant_conv: z_channels -> embed_dim = K_d * d_c
    c.model.codebook = dict(
        kind="grid",  # 'grid' (paper) | 'vanilla' (VQGAN)
        # `GridCodebook` fields (vpgc_jax.models.codebook):
        K_c=256,
        d_c=4,
        r=4,
        window="square",  # 'square' r x r (paper) | 'knn' (reference's 16-NN table)
        lookup="soft",  # 'soft' (paper Eq. 4-5) | 'hard' (reference stage-1 argmin + STE)
        trainable=True,  # paper: G is learned; the released code never updates it (spec §1.6)
        init_scale=1.0,  # G ~ init_scale * N(0, 1); 0.1 left the softmax uniform (calibration)
        # Positions per lax.map step of the lookup (0: all at once). Measured on CPU at paper
        # shapes (benchmarks/run_all.py): 16 is the fastest there, at a tenth of the memory.
        position_chunk=16,
        num_codes=1024,  # `VanillaCodebook` only: N codes of size embed_dim
    )
    c.loss = ml_collections.ConfigDict(
        dict(
            l1_weight=1.0,
            lpips_weight=1.0,
            codebook_weight=1.0,  # weight of L_VQ in Eq. 3
            beta=1.0,  # paper Eq. 2: ||sg[Z] - Z_q|| + ||sg[Z_q] - Z||, both weight 1
            legacy=False,  # reference: commitment weight 1, beta=0.25 on the codebook term
            disc_weight=0.8,
            disc_start=10000,
            disc_factor=1.0,
            # Beyond the paper (0: LPIPS on the whole frame, Eq. 3): LPIPS over a lpips_crop-sided
            # box around the subject's mean face (`trainers.codebook.face_box`), L1 still on the
            # whole frame; a quarter of LPIPS's cost at 64 of 128 px, spent where the face is.
            lpips_crop=0,
        )
    )
    c.disc = ml_collections.ConfigDict(dict(ndf=64))
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=4.5e-5,
            disc_lr=4.5e-5,
            b1=0.5,
            b2=0.9,
            # 'constant' (paper, reference) | 'cosine': linear warmup over warmup_steps, then
            # cosine decay to final_lr_fraction * lr at num_steps (trainers.codebook.learning_rate)
            schedule="constant",
            warmup_steps=0,
            final_lr_fraction=0.0,
        )
    )

    c.num_steps = 120_000
    c.log_every = 50
    c.sample_every = 1000
    c.checkpoint_every = 5000
    c.keep_checkpoints = 3
    c.eval_every = 0  # 0: evaluate only at the end; else held-out PSNR/LPIPS every N steps
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
    c.model.codebook.window = "knn"
    c.model.codebook.lookup = "hard"
    c.model.codebook.trainable = False
    c.loss.beta = 0.25
    c.loss.legacy = True
    return c


def _vanilla(c):
    cb = c.model.codebook
    cb.kind = "vanilla"
    cb.num_codes = grid_positions(c) * cb.K_c * cb.d_c // c.model.embed_dim  # same code count
    c.loss.beta = 0.25
    c.loss.legacy = False
    return c


def _cpu128(c):
    """128 px on 2 CPU cores; 3 downsamplings keep the paper's 16x16 grid and r=4 window.

    Chosen by measurement on the 2-core CPU (jax 0.10.2):
    * cost: one train step at batch 4 is 218 GFLOP (XLA cost analysis): LPIPS-VGG16 forward +
      backward 114, the autoencoder 91, the discriminators the rest. It runs at 3.6 s/step
      (1.1 images/s), so LPIPS, not the model, bounds how small this config can usefully get;
      ch=32 is the narrowest width GroupNorm(32) allows.
    * K_c=64 with d_c=4 and z_channels=64 (K_d=16) keeps the grid codebook at the paper's shape
      with a quarter of its codes per position; the vanilla variant gets the same parameter count
      (256 codes of 64).
    * lr 2e-4: a CPU run gets a few hundred to a few thousand steps; the paper's 4.5e-5 is for
      ~100k-step GPU runs (the two were not compared here).
    * frames_per_group=1: each batch holds 4 independent random frames, not 4 consecutive
      near-duplicates (the reference's grouping). At 250 steps, held-out (all 302 test frames)
      27.54 dB / LPIPS 0.055, above the 32x32 thumbnail baseline (26.73 dB / 0.204); with groups
      of 4, 24.87 dB / 0.069 at the same step, and held-out PSNR swung ~2 dB between neighbouring
      steps (26.75 dB at step 249 on 64 frames).
    * GAN from step 1000 of the 2000 (measured at batch 4; at batch 2 the step counts double, so
      the GAN starts after the same 4000 images): with it from step 250 in a 500-step run,
      held-out PSNR fell from 24.9 dB (step 250) to 23.6 dB (step 500) while LPIPS stayed far
      below the thumbnail baseline's (0.079 vs 0.204): the adversarial term sharpens but costs
      PSNR until the reconstruction has converged, as in VQGAN practice.
    * batch 2 (beyond the reference's 4): the frames of one personal clip are so alike that a
      batch of 4 carries little more gradient than 2, and a step of 2 costs about half. At the
      same images (the quickstart's 500 steps of 2 against 250 of 4: 320 s against 315 s), stage 1
      is ahead on every metric on each of the three sample subjects, and the self-reenactment it
      renders on all but the news anchor's PSNR (-0.3 dB) (benchmarks/RESULTS.md, "Stage 1 at
      batch 2 over whole quickstarts").
    """
    c.resolution = 128
    c.frames_per_group = 1
    c.model.encoder.update(
        dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(), z_channels=64)
    )
    c.model.embed_dim = 64
    c.model.codebook.update(dict(K_c=64, d_c=4, num_codes=16 * 16 * 64 * 4 // 64))
    c.disc.ndf = 32
    c.batch_size = 2
    c.optim.lr = 2e-4
    c.optim.disc_lr = 2e-4
    c.loss.disc_start = 2000
    c.num_steps = 4000
    c.log_every = 25
    c.sample_every = 250
    c.checkpoint_every = 500
    c.eval_every = 500
    c.num_eval_frames = 64
    c.eval_batch_size = 16
    return c


def grid_positions(c: ml_collections.ConfigDict) -> int:
    """Positions h * w of the latent grid of config `c` (square: resolution / 2^downsamplings)."""
    side = c.resolution // 2 ** (len(c.model.encoder.ch_mult) - 1)
    return side * side


VARIANTS = {
    "paper512": _paper512,
    "reference": _reference,
    "vanilla": _vanilla,
    "cpu128": _cpu128,
}


def get_config(arg: str = "paper512") -> ml_collections.ConfigDict:
    """Returns the config for `arg`, one variant name or several joined by '+', applied in order.

    Raises:
      ValueError: an unknown variant name (the message lists the known ones).
    """
    c = base_config()
    names = [n for n in (arg or "paper512").split("+") if n]
    # Size presets first, so 'vanilla+cpu128' and 'cpu128+vanilla' agree.
    names.sort(key=lambda n: n not in ("cpu128", "paper512"))
    for name in names:
        if name not in VARIANTS:
            raise ValueError(f"unknown codebook config variant {name!r}; known: {sorted(VARIANTS)}")
        c = VARIANTS[name](c)
    c.variant = "+".join(names)
    return c
