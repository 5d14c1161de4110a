"""Stage 2 trainer: the prior-guided driving module against a frozen stage-1 run.

Loss (paper Eq. 8): L_feat = lambda * mean |F_hat - Z|, lambda = 10, with Z the frozen stage-1
encoder's output for the target frame (before quant_conv, stop-gradient). Optional terms: the
reference's temporal smoothness (``temporal_weight`` x mean |F_hat[i] - F_hat[i-1]| between
consecutive frames of a group, spec §4.3) and image terms through the frozen codebook and decoder:
L1 (``image_weight``) and LPIPS (``image_lpips_weight``), over the whole rendered frame or a box
around the subject's mean face (``image_crop``). Adam(0.5, 0.999) with lr 5e-4 for the heatmap
encoder and 1e-4 for the rest. With ``model.exemplar`` the run first encodes every training frame
into ``exemplars.npz`` (`vpgc_jax.exemplars`) and feeds each frame the features of its exemplar.

The stage-1 run is restored once; its parameters are a separate, replicated, never-donated input
of the jitted step and never enter the optimizer, the train state or the checkpoints.

Sections in order: stage-1 restore, mesh, input pipeline, model and optimizer, sharded init, step
function, restore, loop (house style #2).
"""

import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from eval import evaluators, regions
from vpgc_jax import checkpointing, outputs, parallel, runs, writers
from vpgc_jax import exemplars as exemplars_lib
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import pipeline
from vpgc_jax.losses import lpips as lpips_lib
from vpgc_jax.models.vqgan import VQModel
from vpgc_jax.trainers import codebook as cb_trainer
from vpgc_jax.trainers import common, resume

GUARDED = ("loss", "feat_l1", "temporal_l1", "image_l1", "image_lpips")


@flax.struct.dataclass
class TrainState:
    """All a stage-2 run needs to continue bit-for-bit (the data position is saved beside it)."""

    step: jax.Array
    params: dict  # PriorGuidedDriver params: heatmap_encoder, MLPs, transformer
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam(0.5, 0.999): ``encoder_lr`` for the heatmap encoder, ``lr`` for the rest (spec §4.3)."""
    o = config.optim

    def labels(params):
        out = {}
        for name, subtree in params.items():
            label = "encoder" if name == "heatmap_encoder" else "rest"
            out[name] = jax.tree.map(lambda _, label=label: label, subtree)
        return out

    return optax.multi_transform(
        {
            "encoder": optax.adam(common.learning_rate(o.encoder_lr, config), b1=o.b1, b2=o.b2),
            "rest": optax.adam(common.learning_rate(o.lr, config), b1=o.b1, b2=o.b2),
        },
        labels,
    )


def make_init(driver, tx):
    """Returns init(rng) -> TrainState at step 0; jit it with out_shardings to create it sharded."""

    def init(rng):
        k_model, k_state = jax.random.split(rng)
        inputs = [jnp.zeros(a.shape, a.dtype) for a in runs.driver_inputs(driver)]
        params = driver.init(k_model, *inputs)["params"]
        return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), rng=k_state)

    return init


def temporal_l1(f: jax.Array, group: int) -> jax.Array:
    """Mean |F[i] - F[i-1]| over consecutive frames inside groups of `group` (spec §4.3).

    Args:
      f: [B, ...] predictions, B a multiple of `group`, each group in frame order.

    Returns:
      A scalar; 0 when `group` is 1.
    """
    if group < 2:
        return jnp.zeros((), jnp.float32)
    g = f.reshape((-1, group) + f.shape[1:])
    return jnp.mean(jnp.abs(g[:, 1:] - g[:, :-1]))


def region_weights(dataset_dir: str, resolution: int, grid: int, weight: float) -> np.ndarray:
    """[grid, grid] float32 weights of the feature loss: 1 + `weight` on the mouth and eye cells.

    The camera is static and one crop box serves the clip, so the mouth and the eyes stay near
    their mean positions: each region's box is the extent of its mean training landmarks, padded
    by a quarter of the box on each side (as `eval.regions`), and every latent cell it touches
    (cells of resolution / grid px) gets the extra weight.
    """
    meta = frames_lib.load_meta(dataset_dir)
    mean = frames_lib.load_landmarks(dataset_dir, "train")["landmarks"].mean(0)
    mean = mean * (resolution / float(meta["size"]))  # [68, 2] (x, y) at resolution
    cell = resolution / grid
    w = np.ones((grid, grid), np.float32)
    for first, last in regions.REGIONS.values():
        lo, hi = mean[first:last].min(0), mean[first:last].max(0)
        pad = regions.PAD * (hi - lo).max()
        (x0, y0), (x1, y1) = (lo - pad) / cell, (hi + pad) / cell
        w[max(int(y0), 0) : int(np.ceil(y1)), max(int(x0), 0) : int(np.ceil(x1))] = 1 + weight
    return w


def make_train_step(
    driver,
    vq: VQModel,
    config,
    tx,
    feat_weights: np.ndarray | None = None,
    image_box: tuple[int, int] | None = None,
):
    """Returns train_step(state, batch, vq_params, prior, lpips_params, exemplars) -> (state,
    metrics).

    Args:
      feat_weights: optional [h, w] weights of the feature L1 over the latent grid (normalised to
        mean 1; `region_weights`); None: the plain mean of Eq. 8.
      image_box: top-left (y0, x0) of the ``loss.image_crop``-sided box the image terms are
        computed over (`codebook.face_box`); None: the whole frame.

    ``lpips_params`` (`vpgc_jax.losses.lpips.load_lpips_params`) is only read when
    ``loss.image_lpips_weight`` is set; pass None otherwise. ``exemplars`` is, for an exemplar
    driver, {'features': the bank's Z [K, h, w, D], 'table': [K] each training frame's exemplar
    (`vpgc_jax.exemplars.training_table`)}, indexed by the batch's 'index'; {} otherwise.
    """
    lc = config.loss
    image_terms = bool(lc.image_weight or lc.get("image_lpips_weight", 0.0))
    group = config.frames_per_group
    if feat_weights is not None:
        feat_weights = jnp.asarray(feat_weights / feat_weights.mean(), jnp.float32)[..., None]

    def train_step(state: TrainState, batch: dict, vq_params, prior, lpips_params, exemplars):
        x, heatmaps = batch["image"], batch["heatmaps"]
        rng = jax.random.fold_in(state.rng, state.step)
        vq_vars = {"params": jax.lax.stop_gradient(vq_params)}
        z = jax.lax.stop_gradient(vq.apply(vq_vars, x, method=VQModel.encode))  # target Z
        z_ex = None
        if driver.exemplar:
            z_ex = exemplars["features"][exemplars["table"][batch["index"]]]  # [B, h, w, D]

        def loss_fn(params):
            f = driver.apply(
                {"params": params}, heatmaps, prior, z_ex, train=True, rngs={"dropout": rng}
            )
            err = jnp.abs(f - z)  # [B, h, w, C]
            feat = jnp.mean(err if feat_weights is None else err * feat_weights)
            temporal = temporal_l1(f, group)
            loss = lc.feat_weight * feat + lc.temporal_weight * temporal
            image = perceptual = jnp.zeros((), jnp.float32)
            if image_terms:
                x_hat = vq.apply(vq_vars, f, method=VQModel.decode_features)
                a, b = x, x_hat
                if image_box is not None:
                    (y0, x0), side = image_box, lc.image_crop
                    a, b = (v[:, y0 : y0 + side, x0 : x0 + side] for v in (x, x_hat))
                image = jnp.mean(jnp.abs(b - a))
                loss = loss + lc.image_weight * image
                if lc.get("image_lpips_weight", 0.0):
                    perceptual = jnp.mean(lpips_lib.lpips(lpips_params, a, b))
                    loss = loss + lc.image_lpips_weight * perceptual
            terms = {"feat_l1": feat, "temporal_l1": temporal, "image_l1": image}
            return loss, {**terms, "image_lpips": perceptual}

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {
            "loss": loss,
            **terms,
            "target_temporal_l1": temporal_l1(z, group),  # the same statistic of the targets
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

    return train_step


def load_exemplars(config, workdir: str, vq: VQModel, vq_params, mesh):
    """The run's `ExemplarBank`: ``workdir/exemplars.npz`` if the run has one (a resumed run),
    else the training frames encoded by the frozen stage-1 model and written there (process 0)."""
    path = os.path.join(workdir, exemplars_lib.FILENAME)
    if os.path.isfile(path):
        return exemplars_lib.ExemplarBank.load(path)
    encode = jax.jit(lambda p, x: vq.apply({"params": p}, x, method=VQModel.encode))
    batch = max(config.eval_batch_size, mesh.size)
    batched = runs.Batched(encode, mesh, batch + (-batch) % mesh.size)  # whole rows per device
    bank = exemplars_lib.build(
        lambda x: batched(vq_params, x), config.dataset_dir, config.resolution, batched.batch
    )
    if jax.process_index() == 0:
        bank.save(path)
    return bank


def resolve_codebook(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """Returns a copy of `config` whose ``codebook_step`` a resumed run shares with its start.

    A run in an existing workdir keeps the stage-1 step its config.json recorded, even if the
    stage-1 run has trained on since.

    Raises:
      ValueError: no ``codebook_workdir``, or a workdir recorded with a different stage-1 run.
    """
    if not config.codebook_workdir:
        raise ValueError(
            "config.codebook_workdir is empty: pass --config.codebook_workdir=DIR (a stage-1 run "
            "of `python -m vpgc_jax.train --config configs/codebook.py:...`)"
        )
    config = ml_collections.ConfigDict(config.to_dict())
    saved_path = os.path.join(workdir, "config.json")
    if os.path.isfile(saved_path) and os.path.isdir(os.path.join(workdir, "checkpoints")):
        saved = runs.load_run_config(workdir)
        if not outputs.same_path(saved.codebook_workdir, config.codebook_workdir):
            raise ValueError(
                f"{workdir} was trained against stage-1 run {saved.codebook_workdir}, not "
                f"{config.codebook_workdir}; use a new --workdir"
            )
        if config.codebook_step < 0:
            config.codebook_step = saved.codebook_step
    return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains stage 2 in `workdir` (resuming from its latest checkpoint) and writes eval.json.

    Returns:
      The final held-out self-reenactment metrics (also in ``workdir/eval.json``).

    Raises:
      ValueError: config problems (no stage-1 run, mismatched grid, bad batch size).
      FileNotFoundError: the stage-1 run or its checkpoint is missing.
      common.NonFiniteLossError: a loss term became NaN/inf (the message names step and term).
    """
    if config.model.variant == "reference" and config.frames_per_group != (
        config.model.frames_per_group
    ):
        raise ValueError(
            f"the reference driver attends over groups of {config.model.frames_per_group} "
            f"consecutive frames, but batches hold groups of {config.frames_per_group} "
            "(set --config.frames_per_group to the same value)"
        )
    if config.loss.temporal_weight and config.frames_per_group < 2:
        raise ValueError(
            "loss.temporal_weight needs consecutive frames in a batch: set "
            "--config.frames_per_group >= 2 (it is 1)"
        )
    config = resolve_codebook(config, workdir)

    # Stage-1 restore (once; replicated over the mesh, never updated).
    mesh = parallel.make_mesh()
    repl = parallel.replicated(mesh)
    cb_config, vq, vq_params, cb_step = runs.load_codebook(
        config.codebook_workdir, config.codebook_step, repl
    )
    config.codebook_step = cb_step
    config.codebook_model = cb_config.model.to_dict()  # checked by vpgc_jax.inference
    if not config.dataset_dir:
        config.dataset_dir = cb_config.dataset_dir
    config.resolution = cb_config.resolution
    meta = frames_lib.load_meta(config.dataset_dir)
    resume.start_run(config, workdir)  # refuses a foreign workdir or a changed config
    parallel.check_batch_size(config.batch_size, mesh, config.frames_per_group)

    # Input pipeline.
    train_ds = pipeline.make_dataset(
        config.dataset_dir,
        "train",
        stage="driver",
        batch_size=config.batch_size,
        resolution=config.resolution,
        frames_per_group=config.frames_per_group,
        seed=config.seed,
        landmark_jitter=config.landmark_jitter,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=config.num_workers,
    )
    train_iter = iter(train_ds)

    # Model and optimizer.
    driver = runs.build_driver(config, cb_config)
    tx = make_optimizer(config)
    weights = None
    if config.loss.get("region_weight", 0.0):
        grid = config.resolution // 2 ** (len(cb_config.model.encoder.ch_mult) - 1)
        weights = region_weights(
            config.dataset_dir, config.resolution, grid, config.loss.region_weight
        )
    side = config.loss.get("image_crop", 0)
    image_box = None
    if side:
        image_box = cb_trainer.face_box(
            config.dataset_dir, config.resolution, side, "loss.image_crop"
        )
    train_step = make_train_step(driver, vq, config, tx, weights, image_box)
    lpips_params = None
    if config.loss.get("image_lpips_weight", 0.0):
        lpips_params = jax.device_put(lpips_lib.load_lpips_params(), repl)
    prior = runs.texture_prior(vq, vq_params, driver)  # zeros for a vanilla codebook (unused)
    bank, exemplar_inputs = None, {}
    if driver.exemplar:
        bank = load_exemplars(config, workdir, vq, vq_params, mesh)
        exemplar_inputs = jax.device_put(
            {
                "features": bank.features,
                "table": exemplars_lib.training_table(bank.landmarks, config.exemplar_gap),
            },
            repl,
        )

    # Sharded init.
    init = make_init(driver, tx)
    rng = jax.random.PRNGKey(config.seed)
    state_sharding = jax.tree.map(lambda _: repl, jax.eval_shape(init, rng))

    # Step function.
    p_train_step = common.CheckedStep(
        jax.jit(
            train_step,
            in_shardings=(state_sharding, parallel.data_sharded(mesh), repl, repl, repl, repl),
            out_shardings=(state_sharding, repl),
            donate_argnums=(0,),
        ),
        f"stage-2 train step ({config.variant}, batch {config.batch_size}, {config.resolution} px)",
        "--config.remat=True, a smaller --config.batch_size (not below 4 for the reference "
        "driver, which attends over groups of 4 frames), or a GPU",
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
        "stage 2",
        workdir,
        strict=config.get("strict_resume", False),
    )
    n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    print(
        f"driver {config.variant}: {n_params:,} params, against stage-1 "
        f"{config.codebook_workdir} step {cb_step}; {mesh.size} device(s), global batch "
        f"{config.batch_size}, {meta['train_frames']} train / {meta['test_frames']} test frames "
        f"at {config.resolution} px"
    )

    drive, reconstruct = runs.make_drive(driver, vq), runs.make_reconstruct(vq)
    evaluator = evaluators.DriverEvaluator(
        config,
        mesh,
        predict_fn=lambda params, *inputs: drive(params, vq_params, prior, *inputs),
        stage1_fn=lambda x: reconstruct(vq_params, x),
        group=runs.frame_group(driver),
        exemplars=bank,
    )
    writer = writers.MetricWriter(workdir)

    # Loop.
    def step_fn(state, batch):
        batch = {k: batch[k] for k in ("image", "heatmaps", "index")}
        return p_train_step(state, batch, vq_params, prior, lpips_params, exemplar_inputs)

    state, step, preempted = common.run_loop(
        config,
        workdir,
        desc="stage 2",
        state=state,
        start_step=start_step,
        step_fn=step_fn,
        train_iter=train_iter,
        mesh=mesh,
        manager=manager,
        evaluator=evaluator,
        writer=writer,
        guarded=GUARDED,
        postfix={"loss": "loss", "feat": "feat_l1"},
    )
    if preempted:
        writer.close()
        return {}
    return common.final_evaluation(
        config, workdir, evaluator, state.params, step, writer, codebook_step=cb_step
    )
