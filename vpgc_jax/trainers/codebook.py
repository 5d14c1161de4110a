"""Stage 1 trainer: the grid-codebook autoencoder with LPIPS, VQ and adaptive-weight GAN losses.

L_cb = L1 + L_per + L_VQ + lambda * L_adv (paper Eq. 3) with VQGAN's adaptive lambda (spec §2.1):
lambda = clamp(||grad_W nll|| / (||grad_W g_loss|| + 1e-4), 0, 1e4) * disc_weight at the decoder's
last layer W, hinge losses, GAN term off before ``disc_start``. One forward of the autoencoder feeds
both Adam updates (autoencoder, discriminator) in one jitted step (house style #11); unlike the
Lightning reference, the discriminator sees the reconstruction of the pre-update autoencoder.

Sections in order: mesh, input pipeline, model and optimizer, sharded init, step functions, restore,
loop (house style #2).
"""

import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from eval import evaluators
from vpgc_jax import checkpointing, metrics, parallel, runs, writers
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import pipeline
from vpgc_jax.losses import lpips as lpips_lib
from vpgc_jax.losses import vqgan as vqgan_losses
from vpgc_jax.trainers import common, resume

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
    return (
        optax.adam(common.learning_rate(o.lr, config), b1=o.b1, b2=o.b2),
        optax.adam(o.disc_lr, b1=o.b1, b2=o.b2),
    )


def face_box(
    dataset_dir: str, resolution: int, side: int, option: str = "loss.lpips_crop"
) -> tuple[int, int]:
    """Top-left (y0, x0) of a `side` x `side` box around the subject's mean face, at `resolution`.

    The camera is static and one crop box serves the clip (data_prep), so the face sits at nearly
    the same place in every frame: the box is centred on the mean of all 68 landmarks over the
    train split and shifted to lie inside the frame.

    Raises:
      ValueError: `side` larger than the frame (the message names the config field `option`).
    """
    if not 0 < side <= resolution:
        raise ValueError(f"{option}={side} must be in (0, {resolution}] (the frame side)")
    meta = frames_lib.load_meta(dataset_dir)
    landmarks = frames_lib.load_landmarks(dataset_dir, "train")["landmarks"]
    centre = landmarks.reshape(-1, 2).mean(0) * (resolution / int(meta["size"]))  # (x, y)
    x0, y0 = (int(round(v - side / 2)) for v in centre)
    clip = resolution - side
    return min(max(y0, 0), clip), min(max(x0, 0), clip)


def make_train_step(model, disc, config, lpips_box: tuple[int, int] | None = None):
    """Returns train_step(state, batch, lpips_params) -> (state, metrics), and both optimizers.

    Args:
      model, disc: the VQModel and the multiscale discriminator.
      config: the run's config.
      lpips_box: top-left (y0, x0) of the ``loss.lpips_crop``-sided box LPIPS is computed over
        (`face_box`); None: the whole frame (paper Eq. 3).

    The adversarial branch (discriminator passes, adaptive weight, discriminator update) is left
    out of the compiled step when ``loss.disc_start >= num_steps``: its factor would be 0 at every
    step of this run (the discriminator's state is kept and saved unchanged).
    """
    lc = config.loss
    gan = lc.disc_start < config.num_steps
    w_codebook, w_commit = vqgan_losses.vq_weights(lc.beta, lc.legacy, lc.codebook_weight)
    ae_tx, d_tx = make_optimizers(config)

    def generator_terms(state, x_rec, g_nll, vjp_fn, vq):
        """Hinge generator loss, its gradient and VQGAN's adaptive weight (spec §2.1)."""
        disc_vars = {"params": state.disc_params, "batch_stats": state.disc_batch_stats}

        def g_fn(x_rec):
            logits, _ = disc.apply(disc_vars, x_rec, train=True, mutable=["batch_stats"])
            return vqgan_losses.hinge_g_loss(logits)

        g_loss, g_gan = jax.value_and_grad(g_fn)(x_rec)
        no_vq = jax.tree.map(jnp.zeros_like, vq)
        _, last_grad_nll = vjp_fn((g_nll, no_vq))
        _, last_grad_gan = vjp_fn((g_gan, no_vq))
        return (
            g_loss,
            g_gan,
            vqgan_losses.adaptive_weight(last_grad_nll, last_grad_gan, lc.disc_weight),
        )

    def discriminator_update(state, x, x_fake, disc_factor):
        """Discriminator gradients: real and fake passes in train mode, batch stats chained (§2.2).

        Returns:
          (grads, new batch_stats, (d_loss, mean real logit, mean fake logit)).
        """

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
        return d_grads, batch_stats, (d_loss, logits_real, logits_fake)

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
            a, b = x, x_rec
            if lpips_box is not None:
                (y0, x0), side = lpips_box, lc.lpips_crop
                a, b = (v[:, y0 : y0 + side, x0 : x0 + side] for v in (x, x_rec))
            p = jnp.mean(lpips_lib.lpips(lpips_params, a, b))
            return lc.l1_weight * l1 + lc.lpips_weight * p, (l1, p)

        (nll, (l1, p_loss)), g_nll = jax.value_and_grad(nll_fn, has_aux=True)(x_rec)

        vq_loss = w_codebook * vq["codebook_loss"] + w_commit * vq["commitment_loss"]
        vq_cotangent = {
            "codebook_loss": jnp.float32(w_codebook),
            "commitment_loss": jnp.float32(w_commit),
        }
        if gan:
            g_loss, g_gan, d_weight = generator_terms(state, x_rec, g_nll, vjp_fn, vq)
            cotangent = (g_nll + d_weight * disc_factor * g_gan, vq_cotangent)
        else:
            g_loss = d_weight = jnp.zeros((), jnp.float32)
            cotangent = (g_nll, vq_cotangent)
        loss = nll + d_weight * disc_factor * g_loss + vq_loss
        grads, last_grad = vjp_fn(cotangent)
        grads = dict(grads)
        grads["decoder"] = {
            **grads["decoder"],
            "conv_out": {**grads["decoder"]["conv_out"], "kernel": last_grad},
        }

        updates, opt_state = ae_tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if gan:
            x_fake = jax.lax.stop_gradient(x_rec)
            d_grads, batch_stats, d_stats = discriminator_update(state, x, x_fake, disc_factor)
            d_updates, disc_opt_state = d_tx.update(
                d_grads, state.disc_opt_state, state.disc_params
            )
            disc_params = optax.apply_updates(state.disc_params, d_updates)
        else:
            zero = jnp.zeros((), jnp.float32)
            d_grads, batch_stats, d_stats = {}, state.disc_batch_stats, (zero, zero, zero)
            disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
        d_loss, logits_real, logits_fake = d_stats

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
    resume.start_run(config, workdir)  # refuses a foreign workdir or a changed config

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
    model = runs.build_model(config)
    disc = runs.build_discriminator(config)
    side = config.loss.get("lpips_crop", 0)
    lpips_box = face_box(config.dataset_dir, config.resolution, side) if side else None
    train_step, ae_tx, d_tx = make_train_step(model, disc, config, lpips_box)
    lpips_params = jax.device_put(lpips_lib.load_lpips_params(), repl)

    # Sharded init: the state is created directly in its (replicated) sharding.
    init = make_init(model, disc, ae_tx, d_tx, config.resolution)
    rng = jax.random.PRNGKey(config.seed)
    state_sharding = jax.tree.map(lambda _: repl, jax.eval_shape(init, rng))

    # Step functions.
    p_train_step = common.CheckedStep(
        jax.jit(
            train_step,
            in_shardings=(state_sharding, parallel.data_sharded(mesh), repl),
            out_shardings=(state_sharding, repl),
            donate_argnums=(0,),
        ),
        f"stage-1 train step ({config.variant}, batch {config.batch_size}, {config.resolution} px)",
        "--config.remat=True, a smaller --config.batch_size, or a GPU",
    )

    # Restore, or initialise.
    manager = checkpointing.make_manager(
        os.path.join(workdir, "checkpoints"), config.keep_checkpoints
    )
    start_step, state, abstract_state = common.restore_or_init(
        manager,
        init,
        rng,
        repl,
        train_iter,
        "stage 1",
        workdir,
        strict=config.get("strict_resume", False),
    )
    n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    print(
        f"model {config.variant}: {n_params:,} autoencoder+codebook params, {mesh.size} device(s), "
        f"global batch {config.batch_size}, {meta['train_frames']} train / {meta['test_frames']} "
        f"test frames at {config.resolution} px"
    )

    evaluator = evaluators.HeldOutEvaluator(config, mesh, runs.make_reconstruct(model))
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
