"""Stage 1 trainer: the grid-codebook autoencoder with LPIPS, VQ and adaptive-weight GAN losses.

L_cb = L1 + L_per + L_VQ + lambda * L_adv (paper Eq. 3) with VQGAN's adaptive lambda (spec §2.1):
lambda = clamp(||grad_W nll|| / (||grad_W g_loss|| + 1e-4), 0, 1e4) * disc_weight at the decoder's
last layer W, hinge losses, GAN term off before ``disc_start``. One forward of the autoencoder feeds
both Adam updates (autoencoder, discriminator) in one jitted step (house style #11); unlike the
Lightning reference, the discriminator sees the reconstruction of the pre-update autoencoder.

Sections in order: mesh, input pipeline, model and optimizer, sharded init, step functions, restore,
loop (house style #2).
"""

import json
import os
import time

import cv2
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vpgc_jax import checkpointing, metrics, parallel, precision, writers
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import pipeline
from vpgc_jax.losses import lpips as lpips_lib
from vpgc_jax.losses import vqgan as vqgan_losses
from vpgc_jax.models.discriminator import MultiscaleDiscriminator
from vpgc_jax.models.vqgan import VQModel
from vpgc_jax.trainers import common

GUARDED = ("loss", "l1", "lpips", "vq_loss", "g_loss", "d_loss")


@flax.struct.dataclass
class TrainState:
    """All a stage-1 run needs to continue bit-for-bit (the data position is saved beside it)."""

    step: jax.Array
    params: dict  # VQModel params: encoder, quant_conv, quantize, post_quant_conv, decoder
    opt_state: optax.OptState
    disc_params: dict
    disc_batch_stats: dict
    disc_opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key


def build_model(config: ml_collections.ConfigDict, compute_dtype: str | None = None) -> VQModel:
    """The VQModel of a stage-1 config (also used by stage 2 and evaluation to rebuild it).

    Args:
      config: a stage-1 config (runs saved before ``compute_dtype`` / ``remat`` existed get
        'auto' / False).
      compute_dtype: overrides ``config.compute_dtype`` (e.g. 'float32' for export parity).
    """
    dtype = precision.compute_dtype(compute_dtype or config.get("compute_dtype", "auto"))
    return VQModel(**config.model.to_dict(), dtype=dtype, remat=config.get("remat", False))


def make_reconstruct(model: VQModel):
    """jit(reconstruct(params, x [B, R, R, 3]) -> x_rec [B, R, R, 3] float32), eval mode."""

    def reconstruct(params, x):
        return model.apply({"params": params}, x)[0]

    return jax.jit(reconstruct)


def scalar_aux(aux: dict) -> dict:
    """The scalar entries of a codebook aux dict (health stats), as float32."""
    return {k: jnp.asarray(v, jnp.float32) for k, v in aux.items() if jnp.ndim(v) == 0}


def make_init(model, disc, ae_tx, d_tx, resolution: int):
    """Returns init(rng) -> TrainState at step 0; jit it with out_shardings to create it sharded."""

    def init(rng):
        k_model, k_disc, k_state = jax.random.split(rng, 3)
        x = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
        params = model.init(k_model, x)["params"]
        disc_vars = disc.init(k_disc, x, train=False)
        return TrainState(
            step=jnp.int32(0),
            params=params,
            opt_state=ae_tx.init(params),
            disc_params=disc_vars["params"],
            disc_batch_stats=disc_vars["batch_stats"],
            disc_opt_state=d_tx.init(disc_vars["params"]),
            rng=k_state,
        )

    return init


def make_optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(autoencoder Adam, discriminator Adam), betas (0.5, 0.9) as the reference (spec §2.4)."""
    o = config.optim
    return optax.adam(o.lr, b1=o.b1, b2=o.b2), optax.adam(o.disc_lr, b1=o.b1, b2=o.b2)


def make_train_step(model, disc, config):
    """Returns train_step(state, batch, lpips_params) -> (state, metrics), and both optimizers."""
    lc = config.loss
    w_codebook, w_commit = vqgan_losses.vq_weights(lc.beta, lc.legacy, lc.codebook_weight)
    ae_tx, d_tx = make_optimizers(config)

    def train_step(state: TrainState, batch: dict, lpips_params):
        x = batch["image"]
        rng = jax.random.fold_in(state.rng, state.step)
        disc_factor = jnp.where(state.step >= lc.disc_start, lc.disc_factor, 0.0)
        last = state.params["decoder"]["conv_out"]["kernel"]

        # One forward; the decoder's last kernel is a separate input so the adaptive weight can take
        # gradients with respect to it alone (XLA prunes the rest of those two backward passes).
        def forward(params, last_kernel):
            params = dict(params)
            params["decoder"] = {
                **params["decoder"],
                "conv_out": {**params["decoder"]["conv_out"], "kernel": last_kernel},
            }
            x_rec, aux = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
            vq = {"codebook_loss": aux["codebook_loss"], "commitment_loss": aux["commitment_loss"]}
            return (x_rec, vq), aux

        (x_rec, vq), vjp_fn, aux = jax.vjp(forward, state.params, last, has_aux=True)

        def nll_fn(x_rec):
            l1 = jnp.mean(jnp.abs(x - x_rec))
            p = jnp.mean(lpips_lib.lpips(lpips_params, x, x_rec))
            return lc.l1_weight * l1 + lc.lpips_weight * p, (l1, p)

        (nll, (l1, p_loss)), g_nll = jax.value_and_grad(nll_fn, has_aux=True)(x_rec)

        disc_vars = {"params": state.disc_params, "batch_stats": state.disc_batch_stats}

        def g_fn(x_rec):
            logits, _ = disc.apply(disc_vars, x_rec, train=True, mutable=["batch_stats"])
            return vqgan_losses.hinge_g_loss(logits)

        g_loss, g_gan = jax.value_and_grad(g_fn)(x_rec)
        no_vq = jax.tree.map(jnp.zeros_like, vq)
        _, last_grad_nll = vjp_fn((g_nll, no_vq))
        _, last_grad_gan = vjp_fn((g_gan, no_vq))
        d_weight = vqgan_losses.adaptive_weight(last_grad_nll, last_grad_gan, lc.disc_weight)

        vq_loss = w_codebook * vq["codebook_loss"] + w_commit * vq["commitment_loss"]
        loss = nll + d_weight * disc_factor * g_loss + vq_loss
        cotangent = (
            g_nll + d_weight * disc_factor * g_gan,
            {"codebook_loss": jnp.float32(w_codebook), "commitment_loss": jnp.float32(w_commit)},
        )
        grads, last_grad = vjp_fn(cotangent)
        grads = dict(grads)
        grads["decoder"] = {
            **grads["decoder"],
            "conv_out": {**grads["decoder"]["conv_out"], "kernel": last_grad},
        }

        # Discriminator: real and fake passes in train mode, batch statistics chained (spec §2.2).
        x_fake = jax.lax.stop_gradient(x_rec)

        def d_loss_fn(dparams):
            real, upd = disc.apply(
                {"params": dparams, "batch_stats": state.disc_batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            fake, upd = disc.apply(
                {"params": dparams, "batch_stats": upd["batch_stats"]},
                x_fake,
                train=True,
                mutable=["batch_stats"],
            )
            d_loss = disc_factor * vqgan_losses.hinge_d_loss(real, fake)
            logits_real = jnp.mean(jnp.stack([jnp.mean(r) for r in real]))
            logits_fake = jnp.mean(jnp.stack([jnp.mean(f) for f in fake]))
            return d_loss, (upd["batch_stats"], logits_real, logits_fake)

        (d_loss, (batch_stats, logits_real, logits_fake)), d_grads = jax.value_and_grad(
            d_loss_fn, has_aux=True
        )(state.disc_params)

        updates, opt_state = ae_tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d_updates, disc_opt_state = d_tx.update(d_grads, state.disc_opt_state, state.disc_params)
        disc_params = optax.apply_updates(state.disc_params, d_updates)

        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            disc_params=disc_params,
            disc_batch_stats=batch_stats,
            disc_opt_state=disc_opt_state,
        )
        out = {
            "loss": loss,
            "l1": l1,
            "lpips": p_loss,
            "nll": nll,
            "vq_loss": vq_loss,
            "g_loss": g_loss,
            "d_loss": d_loss,
            "d_weight": d_weight,
            "disc_factor": disc_factor,
            "logits_real": logits_real,
            "logits_fake": logits_fake,
            "psnr": jnp.mean(metrics.psnr(x, x_rec)),
            "grad_norm": optax.global_norm(grads),
            "disc_grad_norm": optax.global_norm(d_grads),
            "param_norm": optax.global_norm(params),
            **scalar_aux(aux),
        }
        return new_state, out

    return train_step, ae_tx, d_tx


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains stage 1 in `workdir` (resuming from its latest checkpoint) and writes eval.json.

    Returns:
      The final held-out metrics (also in ``workdir/eval.json``).

    Raises:
      ValueError: config/dataset problems (missing ``dataset_dir``, batch not divisible by devices).
      common.NonFiniteLossError: a loss term became NaN/inf (the message names step and term).
    """
    if not config.dataset_dir:
        raise ValueError(
            "config.dataset_dir is empty: pass --config.dataset_dir=DIR (a directory "
            "written by `python -m data_prep.prepare`)"
        )
    meta = frames_lib.load_meta(config.dataset_dir)
    os.makedirs(workdir, exist_ok=True)
    common.write_json(os.path.join(workdir, "config.json"), config.to_dict())

    # Mesh.
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh, config.frames_per_group)
    repl = parallel.replicated(mesh)

    # Input pipeline.
    train_ds = pipeline.make_dataset(
        config.dataset_dir,
        "train",
        stage="codebook",
        batch_size=config.batch_size,
        resolution=config.resolution,
        frames_per_group=config.frames_per_group,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=config.num_workers,
    )
    train_iter = iter(train_ds)

    # Model and optimizer.
    model = build_model(config)
    disc = MultiscaleDiscriminator(ndf=config.disc.ndf)
    train_step, ae_tx, d_tx = make_train_step(model, disc, config)
    lpips_params = jax.device_put(lpips_lib.load_lpips_params(), repl)

    # Sharded init: the state is created directly in its (replicated) sharding.
    init = make_init(model, disc, ae_tx, d_tx, config.resolution)
    rng = jax.random.PRNGKey(config.seed)
    abstract_state = jax.eval_shape(init, rng)
    state_sharding = jax.tree.map(lambda _: repl, abstract_state)

    # Step functions.
    p_train_step = jax.jit(
        train_step,
        in_shardings=(state_sharding, parallel.data_sharded(mesh), repl),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
    )
    reconstruct = make_reconstruct(model)
    p_lpips = jax.jit(lpips_lib.lpips)

    # Restore, or initialise.
    manager = checkpointing.make_manager(
        os.path.join(workdir, "checkpoints"), config.keep_checkpoints
    )
    abstract = checkpointing.abstract_with_shardings(abstract_state, repl)
    start_step, state = checkpointing.restore_latest(manager, abstract, train_iter)
    if state is None:
        state = jax.jit(init, out_shardings=state_sharding)(rng)
        start_step = 0
        print(f"stage 1: new run in {workdir}")
    else:
        print(f"stage 1: resumed from step {start_step} in {workdir}")
    n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    print(
        f"model {config.variant}: {n_params:,} autoencoder+codebook params, {mesh.size} device(s), "
        f"global batch {config.batch_size}, {meta['train_frames']} train / {meta['test_frames']} "
        f"test frames at {config.resolution} px"
    )

    evaluator = HeldOutEvaluator(config, mesh, reconstruct, p_lpips, lpips_params)
    writer = writers.MetricWriter(workdir)

    # Loop.
    state, step, preempted = common.run_loop(
        config,
        workdir,
        desc="stage 1",
        state=state,
        start_step=start_step,
        step_fn=lambda state, batch: p_train_step(state, {"image": batch["image"]}, lpips_params),
        train_iter=train_iter,
        mesh=mesh,
        manager=manager,
        evaluator=evaluator,
        writer=writer,
        guarded=GUARDED,
        postfix={"loss": "loss", "psnr": "psnr"},
    )
    if preempted:
        writer.close()
        return {}
    return common.final_evaluation(config, workdir, evaluator, state.params, step, writer)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a stage-1 run saved in ``workdir/config.json`` (lists back to tuples).

    Raises:
      FileNotFoundError: `workdir` holds no config.json (not a stage-1 run).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; not a stage-1 run directory")
    with open(path) as f:
        raw = json.load(f)
    raw["model"] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["model"].items()}
    return ml_collections.ConfigDict(raw)


def restore_run(workdir: str, step: int | None = None, sharding=None):
    """Restores a stage-1 run's config, model and TrainState (for evaluation, stage 2, export).

    Args:
      workdir: a stage-1 run directory (config.json + checkpoints/).
      step: checkpoint step; None or negative for the latest.
      sharding: where to place the state (default: the first device).

    Returns:
      (config, VQModel, step, TrainState).

    Raises:
      FileNotFoundError: no config.json, a run of another stage, or no checkpoint (at `step`).
    """
    config = load_run_config(workdir)
    if config.get("stage", "codebook") != "codebook":
        raise FileNotFoundError(f"{workdir}: a {config.stage!r} run, not a stage-1 run")
    model = build_model(config)
    disc = MultiscaleDiscriminator(ndf=config.disc.ndf)
    ae_tx, d_tx = make_optimizers(config)
    init = make_init(model, disc, ae_tx, d_tx, config.resolution)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    step, state = checkpointing.restore_state(
        os.path.join(workdir, "checkpoints"),
        checkpointing.abstract_with_shardings(abstract, sharding),
        None if step is None or step < 0 else step,
    )
    return config, model, int(step), state


def evaluate_checkpoint(workdir: str, step: int | None = None, dataset_dir: str = "") -> dict:
    """Held-out metrics of a stage-1 checkpoint on the whole test split and the thumbnail baseline.

    Args:
      workdir: a stage-1 run directory.
      step: checkpoint step (default: the latest).
      dataset_dir: evaluate on this dataset instead of the run's own.

    Returns:
      The dict `HeldOutEvaluator.evaluate(final=True)` gives, with 'step'.
    """
    mesh = parallel.make_mesh()
    repl = parallel.replicated(mesh)
    config, model, step, state = restore_run(workdir, step, repl)
    if dataset_dir:
        config.dataset_dir = dataset_dir
    reconstruct = make_reconstruct(model)
    lpips_params = jax.device_put(lpips_lib.load_lpips_params(), repl)
    evaluator = HeldOutEvaluator(config, mesh, reconstruct, jax.jit(lpips_lib.lpips), lpips_params)
    return {**evaluator.evaluate(state.params, final=True), "step": step}


class HeldOutEvaluator:
    """Held-out reconstruction metrics and sample grids on fixed test-split frames.

    Frames stream through in fixed-size batches (a multiple of the device count; the last one is
    padded) so nothing recompiles and a 1000-frame split at 512 px never sits in memory at once.
    Periodic evaluations use ``num_eval_frames`` evenly spaced frames; the final one, written to
    eval.json, uses the whole test split.
    """

    def __init__(self, config, mesh, reconstruct, p_lpips, lpips_params):
        self.config = config
        self.mesh = mesh
        self.reconstruct = reconstruct
        self.p_lpips = p_lpips
        self.lpips_params = lpips_params
        self.test_source = frames_lib.open_split(config.dataset_dir, "test")  # opened once
        self.num_test = len(self.test_source)
        self.sample_idx = common.evenly_spaced(self.num_test, config.num_sample_frames)
        bs = max(config.eval_batch_size, mesh.size)
        self.batch = bs + (-bs) % mesh.size
        self._samples = None

    def _pad(self, x: np.ndarray) -> np.ndarray:
        pad = self.batch - len(x)
        return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x

    def _reconstruct(self, params, x: np.ndarray) -> np.ndarray:
        """[n <= batch, R, R, 3] -> reconstructions, on the data-sharded mesh."""
        xb = jax.device_put(self._pad(x), parallel.data_sharded(self.mesh))
        return parallel.fetch(self.reconstruct(params, xb))[: len(x)]

    def _frame_scores(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Per-frame PSNR (dB), SSIM, LPIPS of `y` against `x` (one batch, both in [-1, 1])."""
        lp = parallel.fetch(self.p_lpips(self.lpips_params, self._pad(x), self._pad(y)))[: len(x)]
        return {"psnr": np.asarray(metrics.psnr(x, y)), "ssim": metrics.ssim(x, y), "lpips": lp}

    def _indices(self, final: bool) -> np.ndarray:
        """Test-split frames scored: all of them when `final`, else `num_eval_frames` spread out."""
        return common.evenly_spaced(self.num_test, 0 if final else self.config.num_eval_frames)

    def _pairs(self, params, idx: np.ndarray, final: bool) -> dict[str, tuple]:
        """{row name: (ground truth, output)} for frames `idx`; '' is the model's own row.

        The 32x32 thumbnail baseline row is added in the final evaluation (skipped at
        resolutions <= 32, where it is the identity).
        """
        x = pipeline.load_frames(self.test_source, idx, self.config.resolution)
        pairs = {"": (x, self._reconstruct(params, x))}
        if final and self.config.resolution > 32:
            pairs["baseline_thumbnail32"] = (x, thumbnail_baseline(x))
        return pairs

    def evaluate(self, params, final: bool = False) -> dict:
        """Mean held-out PSNR/SSIM/LPIPS; `final`: the whole split plus the baseline rows.

        Returns:
          {'psnr', 'ssim', 'lpips', 'num_frames', 'resolution', 'eval_seconds'} for the model and,
          for each extra row of `_pairs` (e.g. 'baseline_thumbnail32'), a dict of the same metrics.
        """
        t0 = time.perf_counter()
        idx = self._indices(final)
        rows: dict[str, list] = {}
        for i in range(0, len(idx), self.batch):
            for name, (x, y) in self._pairs(params, idx[i : i + self.batch], final).items():
                rows.setdefault(name, []).append(self._frame_scores(x, y))

        def mean(scores):
            return {k: float(np.mean(np.concatenate([r[k] for r in scores]))) for k in scores[0]}

        out = mean(rows.pop(""))
        out["num_frames"] = len(idx)
        out["resolution"] = self.config.resolution
        out.update({name: mean(scores) for name, scores in rows.items()})
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def _sample_columns(self, params) -> list[np.ndarray]:
        """Columns of the sample grid: input | reconstruction."""
        if self._samples is None:
            self._samples = pipeline.load_frames(
                self.test_source, self.sample_idx, self.config.resolution
            )
        rec = np.concatenate(
            [
                self._reconstruct(params, self._samples[i : i + self.batch])
                for i in range(0, len(self._samples), self.batch)
            ]
        )
        return [self._samples, rec]

    def save_samples(self, params, workdir: str, step: int, writer) -> None:
        """Writes samples/step_XXXXXXX.png of the fixed held-out frames (`_sample_columns`)."""
        grid = writers.image_grid(self._sample_columns(params))
        if jax.process_index() == 0:
            writers.save_png(os.path.join(workdir, "samples", f"step_{step:07d}.png"), grid)
            writer.write_image(step, "samples", grid)


def thumbnail_baseline(x: np.ndarray, size: int = 32) -> np.ndarray:
    """Non-learned baseline: each frame shrunk to size x size (area), scaled back up (bicubic)."""
    r = x.shape[1]
    return np.stack(
        [
            cv2.resize(
                cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA),
                (r, r),
                interpolation=cv2.INTER_CUBIC,
            )
            for f in x
        ]
    ).clip(-1, 1)
