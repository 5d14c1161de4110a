"""Stage 2 trainer: the prior-guided driving module against a frozen stage-1 run.

Loss (paper Eq. 8): L_feat = lambda * mean |F_hat - Z|, lambda = 10, with Z the frozen stage-1
encoder's output for the target frame (before quant_conv, stop-gradient). Optional terms: the
reference's temporal smoothness (``temporal_weight`` x mean |F_hat[i] - F_hat[i-1]| between
consecutive frames of a group, spec §4.3) and an image L1 through the frozen codebook and decoder
(``image_weight``). Adam(0.5, 0.999) with lr 5e-4 for the heatmap encoder and 1e-4 for the rest.

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

from vpgc_jax import checkpointing, parallel, precision, writers
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib
from vpgc_jax.data import pipeline
from vpgc_jax.losses import lpips as lpips_lib
from vpgc_jax.models.driver import PriorGuidedDriver
from vpgc_jax.models.vqgan import VQModel
from vpgc_jax.trainers import codebook as codebook_trainer
from vpgc_jax.trainers import common

GUARDED = ("loss", "feat_l1", "temporal_l1", "image_l1")


@flax.struct.dataclass
class TrainState:
    """All a stage-2 run needs to continue bit-for-bit (the data position is saved beside it)."""

    step: jax.Array
    params: dict  # PriorGuidedDriver params: heatmap_encoder, MLPs, transformer
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key


def load_codebook(workdir: str, step: int = -1, sharding=None):
    """Restores a stage-1 run's model and parameters (inference only).

    Args:
      workdir: a stage-1 run directory (config.json + checkpoints/).
      step: checkpoint step; -1 for the latest.
      sharding: where to place the parameters (default: the first device).

    Returns:
      (stage-1 config, VQModel, params, step).

    Raises:
      FileNotFoundError: not a stage-1 run, or no checkpoint (at that step).
    """
    cb_config, model, step, state = codebook_trainer.restore_run(workdir, step, sharding)
    return cb_config, model, state.params, step


def build_driver(
    config: ml_collections.ConfigDict, cb_config, compute_dtype: str | None = None
) -> PriorGuidedDriver:
    """The PriorGuidedDriver of a stage-2 config, shaped to its stage-1 run's config.

    ``compute_dtype`` overrides ``config.compute_dtype`` (e.g. 'float32' for export parity).

    Raises:
      ValueError: the texture prior is asked of a stage-1 run without a grid codebook.
    """
    cbm = cb_config.model
    if config.model.use_texture_prior and cbm.codebook != "grid":
        raise ValueError(
            f"use_texture_prior needs a grid-codebook stage-1 run; {config.codebook_workdir} "
            f"has codebook={cbm.codebook!r} (set --config.model.use_texture_prior=False)"
        )
    latent = cb_config.resolution // 2 ** (len(cbm.ch_mult) - 1)
    return PriorGuidedDriver(
        **config.model.to_dict(),
        dim=cbm.z_channels,
        d_c=cbm.d_c,
        grid_h=latent,
        grid_w=latent,
        resolution=cb_config.resolution,
        remat=config.get("remat", False),
        dtype=precision.compute_dtype(compute_dtype or config.get("compute_dtype", "auto")),
    )


def restore_run(
    workdir: str,
    cb_config: ml_collections.ConfigDict,
    step: int | None = None,
    sharding=None,
    compute_dtype: str | None = None,
):
    """Restores a stage-2 run's config, driver module and TrainState (inference, export).

    Args:
      workdir: a stage-2 run directory (config.json + checkpoints/).
      cb_config: the config of the stage-1 run it drives (shapes the driver).
      step: checkpoint step; None or negative for the latest.
      sharding: where to place the state (default: the first device).
      compute_dtype: overrides the run's ``compute_dtype`` for the returned driver.

    Returns:
      (config, PriorGuidedDriver, step, TrainState).

    Raises:
      FileNotFoundError: no config.json, a run of another stage, or no checkpoint (at `step`).
      ValueError: the checkpoint does not fit the driver that `cb_config` shapes.
    """
    config = codebook_trainer.load_run_config(workdir)
    if config.get("stage") != "driver":
        raise FileNotFoundError(f"{workdir}: a {config.get('stage')!r} run, not a stage-2 run")
    driver = build_driver(config, cb_config, compute_dtype)
    tx = make_optimizer(config)
    init = make_init(driver, tx, cb_config.resolution, (driver.grid_h, driver.grid_w, driver.d_c))
    abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
        step, state = checkpointing.restore_state(
            os.path.join(workdir, "checkpoints"),
            checkpointing.abstract_with_shardings(abstract, sharding),
            None if step is None or step < 0 else step,
        )
    except ValueError as e:  # orbax: shapes or structure differ
        raise ValueError(f"{workdir}: checkpoint does not fit this stage-1 run's model: {e}") from e
    return config, driver, int(step), state


def make_drive(driver: PriorGuidedDriver, vq: VQModel):
    """jit(drive(params, vq_params, prior, heatmaps) -> frames): the inference path (spec §4.4).

    heatmaps [B, R, R, 7] -> driver (eval mode) -> F_hat -> quant_conv -> codebook ->
    post_quant_conv -> decoder -> [B, R, R, 3] float32 frames, about [-1, 1].
    """

    def drive(params, vq_params, prior, heatmaps):
        f = driver.apply({"params": params}, heatmaps, prior)
        return vq.apply({"params": vq_params}, f, method=VQModel.decode_features)

    return jax.jit(drive)


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
            "encoder": optax.adam(o.encoder_lr, b1=o.b1, b2=o.b2),
            "rest": optax.adam(o.lr, b1=o.b1, b2=o.b2),
        },
        labels,
    )


def make_init(driver, tx, resolution: int, prior_shape):
    """Returns init(rng) -> TrainState at step 0; jit it with out_shardings to create it sharded."""

    def init(rng):
        k_model, k_state = jax.random.split(rng)
        n = driver.frames_per_group if driver.variant == "reference" else 1
        heatmaps = jnp.zeros((n, resolution, resolution, driver.in_channels), jnp.float32)
        params = driver.init(k_model, heatmaps, jnp.zeros(prior_shape, jnp.float32))["params"]
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


def make_train_step(driver, vq: VQModel, config, tx):
    """Returns train_step(state, batch, vq_params, prior) -> (state, metrics)."""
    lc = config.loss
    group = config.frames_per_group

    def train_step(state: TrainState, batch: dict, vq_params, prior):
        x, heatmaps = batch["image"], batch["heatmaps"]
        rng = jax.random.fold_in(state.rng, state.step)
        vq_vars = {"params": jax.lax.stop_gradient(vq_params)}
        z = jax.lax.stop_gradient(vq.apply(vq_vars, x, method=VQModel.encode))  # target Z

        def loss_fn(params):
            f = driver.apply({"params": params}, heatmaps, prior, train=True, rngs={"dropout": rng})
            feat = jnp.mean(jnp.abs(f - z))
            temporal = temporal_l1(f, group)
            loss = lc.feat_weight * feat + lc.temporal_weight * temporal
            image = jnp.zeros((), jnp.float32)
            if lc.image_weight:
                x_hat = vq.apply(vq_vars, f, method=VQModel.decode_features)
                image = jnp.mean(jnp.abs(x_hat - x))
                loss = loss + lc.image_weight * image
            return loss, {"feat_l1": feat, "temporal_l1": temporal, "image_l1": image}

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
        saved = codebook_trainer.load_run_config(workdir)
        same = os.path.abspath(saved.codebook_workdir) == os.path.abspath(config.codebook_workdir)
        if not same:
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
    cb_config, vq, vq_params, cb_step = load_codebook(
        config.codebook_workdir, config.codebook_step, repl
    )
    config.codebook_step = cb_step
    config.codebook_model = cb_config.model.to_dict()  # checked by vpgc_jax.inference
    if not config.dataset_dir:
        config.dataset_dir = cb_config.dataset_dir
    config.resolution = cb_config.resolution
    meta = frames_lib.load_meta(config.dataset_dir)
    os.makedirs(workdir, exist_ok=True)
    common.write_json(os.path.join(workdir, "config.json"), config.to_dict())
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
    driver = build_driver(config, cb_config)
    tx = make_optimizer(config)
    train_step = make_train_step(driver, vq, config, tx)
    prior_shape = (driver.grid_h, driver.grid_w, driver.d_c)
    if cb_config.model.codebook == "grid":
        prior = jax.jit(lambda p: vq.apply({"params": p}, method=VQModel.prior))(vq_params)
    else:
        prior = jnp.zeros(prior_shape, jnp.float32)  # unused: use_texture_prior is False

    # Sharded init.
    init = make_init(driver, tx, config.resolution, prior_shape)
    rng = jax.random.PRNGKey(config.seed)
    abstract_state = jax.eval_shape(init, rng)
    state_sharding = jax.tree.map(lambda _: repl, abstract_state)

    # Step function.
    p_train_step = jax.jit(
        train_step,
        in_shardings=(state_sharding, parallel.data_sharded(mesh), repl, repl),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
    )

    # Restore, or initialise.
    manager = checkpointing.make_manager(
        os.path.join(workdir, "checkpoints"), config.keep_checkpoints
    )
    abstract = checkpointing.abstract_with_shardings(abstract_state, repl)
    start_step, state = checkpointing.restore_latest(manager, abstract, train_iter)
    if state is None:
        state = jax.jit(init, out_shardings=state_sharding)(rng)
        start_step = 0
        print(f"stage 2: new run in {workdir}")
    else:
        print(f"stage 2: resumed from step {start_step} in {workdir}")
    n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    print(
        f"driver {config.variant}: {n_params:,} params, against stage-1 "
        f"{config.codebook_workdir} step {cb_step}; {mesh.size} device(s), global batch "
        f"{config.batch_size}, {meta['train_frames']} train / {meta['test_frames']} test frames "
        f"at {config.resolution} px"
    )

    evaluator = DriverEvaluator(config, mesh, driver, vq, vq_params, prior)
    writer = writers.MetricWriter(workdir)

    # Loop.
    def step_fn(state, batch):
        batch = {"image": batch["image"], "heatmaps": batch["heatmaps"]}
        return p_train_step(state, batch, vq_params, prior)

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


class DriverEvaluator(codebook_trainer.HeldOutEvaluator):
    """Held-out self-reenactment: test-split heatmaps -> driver -> frozen codebook + decoder.

    Scores against the ground-truth frames; the final evaluation (the whole split, in frame order)
    adds the stage-1 reconstruction of the same frames (the upper bound: the driver can at best
    predict the stage-1 encoder's features) and the frame-to-frame statistics of `TemporalStats`.
    """

    def __init__(self, config, mesh, driver, vq, vq_params, prior):
        self.driver = driver
        self.vq_params = vq_params
        self.prior = prior
        self.group = driver.frames_per_group if driver.variant == "reference" else 1
        predict = make_drive(driver, vq)
        reconstruct = codebook_trainer.make_reconstruct(vq)
        lpips_params = jax.device_put(lpips_lib.load_lpips_params(), parallel.replicated(mesh))
        super().__init__(config, mesh, reconstruct, jax.jit(lpips_lib.lpips), lpips_params)
        step = int(np.lcm(mesh.size, self.group))
        self.batch += (-self.batch) % step
        if self.group > 1:  # the reference driver attends over whole groups of consecutive frames
            starts = common.evenly_spaced(self.num_test // self.group, 1) * self.group
            self.sample_idx = starts[0] + np.arange(self.group)
        meta = frames_lib.load_meta(config.dataset_dir)
        lms = frames_lib.load_landmarks(config.dataset_dir, "test")["landmarks"]
        self.landmarks = lms * (config.resolution / float(meta["size"]))  # [N, 68, 2] at R px
        self._predict_fn = predict
        self._temporal = None

    def heatmaps(self, idx: np.ndarray) -> np.ndarray:
        """Heatmap stacks [len(idx), R, R, 7] of test frames `idx` (neighbours clamped, §3.2)."""
        r = self.config.resolution
        return np.stack([heatmaps_lib.heatmap_stack(self.landmarks, int(t), r) for t in idx])

    def _drive(self, params, idx: np.ndarray) -> np.ndarray:
        hm = jax.device_put(self._pad(self.heatmaps(idx)), parallel.data_sharded(self.mesh))
        out = self._predict_fn(params, self.vq_params, self.prior, hm)
        return parallel.fetch(out)[: len(idx)]

    def _indices(self, final: bool) -> np.ndarray:
        """All frames in order (final), else whole groups of consecutive frames spread out."""
        if final or self.group == 1:
            return super()._indices(final)
        n_groups = max(1, self.config.num_eval_frames // self.group)
        starts = common.evenly_spaced(self.num_test // self.group, n_groups) * self.group
        return (starts[:, None] + np.arange(self.group)).reshape(-1)

    def _pairs(self, params, idx: np.ndarray, final: bool) -> dict[str, tuple]:
        x = pipeline.load_frames(self.test_source, idx, self.config.resolution)
        y = self._drive(params, idx)
        pairs = {"": (x, y)}
        if final:
            pairs["stage1_reconstruction"] = (x, self._reconstruct(self.vq_params, x))
            self._temporal.add(x, y)
        return pairs

    def evaluate(self, params, final: bool = False) -> dict:
        self._temporal = TemporalStats() if final else None
        out = super().evaluate(params, final)
        if final:
            out.update(self._temporal.read())
        return out

    def _sample_columns(self, params) -> list[np.ndarray]:
        """heatmap of the current frame | prediction | target."""
        if self._samples is None:
            self._samples = pipeline.load_frames(
                self.test_source, self.sample_idx, self.config.resolution
            )
        idx = self.sample_idx
        pred = np.concatenate(
            [self._drive(params, idx[i : i + self.batch]) for i in range(0, len(idx), self.batch)]
        )
        current = self.heatmaps(idx)[..., 3:4]
        return [current, pred, self._samples]


class TemporalStats:
    """Running frame-to-frame statistics of predictions y against ground truth x, fed in order.

    * ``temporal_error``: mean |(y_t - y_{t-1}) - (x_t - x_{t-1})|, 8-bit levels (jitter the
      ground truth does not have, plus motion the prediction misses);
    * ``motion_ratio``: mean |y_t - y_{t-1}| / mean |x_t - x_{t-1}| (above 1: extra motion;
      below 1: too static);
    * ``flicker_ratio``: mean |y_{t+1} - 2 y_t + y_{t-1}| / the same of x: the high-frequency
      (frame-to-frame reversing) part of the change, i.e. jitter, relative to the real video's.
    """

    def __init__(self):
        self._tail = None  # the last two frames of (x, y)
        self._sums = {"err": 0.0, "motion_y": 0.0, "motion_x": 0.0, "acc_y": 0.0, "acc_x": 0.0}
        self._n = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """x, y: [n, R, R, 3] in [-1, 1], consecutive frames continuing the previous call's."""
        if self._tail is not None:
            x = np.concatenate([self._tail[0], x])
            y = np.concatenate([self._tail[1], y])
            skip = len(self._tail[0]) - 1  # differences already counted
        else:
            skip = 0

        def mean_abs(a):
            return np.abs(a).mean(axis=(1, 2, 3))

        dx, dy = np.diff(x, axis=0)[skip:], np.diff(y, axis=0)[skip:]
        self._sums["err"] += float(mean_abs(dy - dx).sum())
        self._sums["motion_y"] += float(mean_abs(dy).sum())
        self._sums["motion_x"] += float(mean_abs(dx).sum())
        self._n += len(dx)
        skip2 = max(skip - 1, 0) if self._tail is not None else 0
        self._sums["acc_y"] += float(mean_abs(np.diff(y, 2, axis=0)[skip2:]).sum())
        self._sums["acc_x"] += float(mean_abs(np.diff(x, 2, axis=0)[skip2:]).sum())
        self._tail = (x[-2:], y[-2:])

    def read(self) -> dict:
        s = self._sums
        return {
            "temporal_error": 127.5 * s["err"] / max(self._n, 1),
            "motion_ratio": s["motion_y"] / max(s["motion_x"], 1e-12),
            "flicker_ratio": s["acc_y"] / max(s["acc_x"], 1e-12),
        }
