"""Audio-model trainer (issue 20): a frame's audio window -> the subject's expression.

Data: the dataset's training frames with detected landmarks; input the frame's log-mel window
(`data_prep.audio`, stored by `data_prep.prepare`), target its expression (pose removed,
`vpgc_jax.expression`). The subject's `ExpressionBasis` is fitted on those frames when the run
starts and kept in ``workdir/expression_basis.npz`` (a resumed run reuses it). Loss: the distance
(``loss.kind='distance'``, the evaluation's LMD) or squared distance of each decoded landmark to
the truth in canonical units, mouth points weighted ``1 + loss.mouth_weight`` (normalised to mean
1). AdamW with a warmup + cosine schedule.

The same loop machinery as stages 1 and 2 (`trainers.common`): orbax checkpoints with the data
position, resume, SIGTERM, metrics.jsonl, TensorBoard, periodic held-out scores
(`eval.audio.AudioEvaluator`) and a mouth-opening plot as the sample.

Sections in order: data, mesh, basis, input pipeline, model and optimizer, sharded init, step
function, restore, loop (house style #2).
"""

import dataclasses
import os

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data_prep import audio as audio_lib
from eval import audio as audio_eval
from eval import follow
from vpgc_jax import checkpointing, expression, parallel, runs, writers
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import pipeline
from vpgc_jax.trainers import common, resume

GUARDED = ("loss",)


@flax.struct.dataclass
class TrainState:
    """All an audio-model run needs to continue bit-for-bit (the data position is saved beside)."""

    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


@dataclasses.dataclass
class LookupFrames:
    """{'group': frame ids [b], 'slot', 'batch'} -> {'mel': [b, W - 2 shift, M] float32, 'target':
    [b, 68, 2] float32}: each window cut at a random offset in [0, 2 shift] (the centre is
    offset `shift`), drawn from (seed, global batch number) for the whole global batch, so the
    draw does not depend on the process count."""

    mel: np.ndarray  # [N, W, M] float16
    target: np.ndarray  # [N, 68, 2] float32
    shift: int
    seed: int
    batch_size: int

    def __call__(self, element: dict) -> dict:
        ids = element["group"]
        rng = np.random.default_rng((self.seed, int(element["batch"])))
        offsets = rng.integers(0, 2 * self.shift + 1, self.batch_size)[element["slot"]]
        width = self.mel.shape[1] - 2 * self.shift
        mel = np.stack([self.mel[i, o : o + width] for i, o in zip(ids, offsets, strict=True)])
        return {"mel": mel.astype(np.float32), "target": self.target[ids]}


def make_dataset(mel, target, batch_size: int, seed: int, shift: int = 0) -> grain.IterDataset:
    """Shuffled, repeated global batches of independent frames; this process's part of each
    (`pipeline.ProcessSlice`, so the stream does not depend on the process count)."""
    ds = grain.MapDataset.range(len(mel)).shuffle(seed=seed).repeat()
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map_with_index(pipeline.ProcessSlice(jax.process_index(), jax.process_count()))
    ds = ds.map(LookupFrames(mel, target, shift, seed, batch_size))
    return ds.to_iter_dataset(pipeline.READ_OPTIONS)


def point_weights(mouth_weight: float) -> np.ndarray:
    """[68] float32 loss weights: 1 + `mouth_weight` on the mouth, 1 elsewhere, mean 1."""
    w = np.ones(68, np.float32)
    w[follow.MOUTH] += mouth_weight
    return w / w.mean()


def make_train_step(model, basis: expression.ExpressionBasis, config, tx):
    """Returns train_step(state, batch) -> (state, metrics)."""
    components = jnp.asarray(basis.components * basis.scales[:, None], jnp.float32)  # [K, 136]
    weights = jnp.asarray(point_weights(config.loss.mouth_weight))[:, None]

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            c = model.apply({"params": params}, batch["mel"], train=True, rngs={"dropout": rng})
            pred = (c @ components).reshape(-1, 68, 2)
            err = jnp.sum((pred - batch["target"]) ** 2, axis=-1)  # [B, 68]
            dist = jnp.sqrt(err + 1e-12)
            mouth = jnp.mean(dist[:, follow.MOUTH])
            per_point = dist if config.loss.kind == "distance" else err
            return jnp.mean(per_point * weights[:, 0]), mouth

        (loss, mouth), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "mouth_distance": mouth,  # canonical units
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def load_basis(config, workdir: str, landmarks: np.ndarray, valid: np.ndarray, size: int):
    """The run's `ExpressionBasis`: ``workdir/expression_basis.npz`` if the run has one, else
    fitted on the training track and written there (process 0)."""
    path = os.path.join(workdir, runs.BASIS_FILE)
    if os.path.isfile(path):
        return expression.ExpressionBasis.load(path)
    basis = expression.ExpressionBasis.fit(
        landmarks, valid, size, config.basis.variance, config.basis.max_components
    )
    if jax.process_index() == 0:
        tmp = path + ".tmp.npz"
        basis.save(tmp)
        os.replace(tmp, path)
    return basis


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the audio model in `workdir` (resuming from its latest checkpoint); eval.json.

    Returns:
      The final held-out scores with the baselines' (also in ``workdir/eval.json``).

    Raises:
      ValueError: no dataset, a dataset without audio features (`frames.NoAudioError`, the
        reason in one line), too few frames, or a bad batch size.
      common.NonFiniteLossError: the loss became NaN/inf.
    """
    if config.loss.kind not in ("distance", "squared"):
        raise ValueError(f"loss.kind must be 'distance' or 'squared', got {config.loss.kind!r}")
    if not config.dataset_dir:
        raise ValueError(
            "config.dataset_dir is empty: pass --config.dataset_dir=DIR (a dataset of "
            "`python -m data_prep.prepare`, from a clip with audio)"
        )
    # Data.
    meta = frames_lib.load_meta(config.dataset_dir)
    mel = frames_lib.load_audio(config.dataset_dir, "train")  # NoAudioError: a ValueError
    train = frames_lib.load_landmarks(config.dataset_dir, "train")
    keep = np.flatnonzero(train["valid"])
    config = ml_collections.ConfigDict(config.to_dict())
    config.features = ml_collections.ConfigDict(
        dict(window=mel.shape[1], n_mels=mel.shape[2], settings=meta["audio"] or {})
    )
    if meta["audio"] != {**meta["audio"], **audio_lib.settings()}:
        raise ValueError(
            f"{config.dataset_dir}: its audio features were made with other settings than this "
            "version's (re-run python -m data_prep.prepare on its video with --overwrite)"
        )
    resume.start_run(config, workdir)

    # Mesh and basis.
    mesh = parallel.make_mesh()
    repl = parallel.replicated(mesh)
    parallel.check_batch_size(config.batch_size, mesh)
    if len(keep) < config.batch_size:
        raise ValueError(
            f"{config.dataset_dir}: {len(keep)} training frames with landmarks, fewer than one "
            f"batch of {config.batch_size}"
        )
    basis = load_basis(config, workdir, train["landmarks"], train["valid"], int(meta["size"]))
    target = basis.track(train["landmarks"][keep]).expressions.astype(np.float32)

    # Input pipeline.
    train_ds = make_dataset(
        mel[keep].astype(np.float16), target, config.batch_size, config.seed, config.shift_hops
    )
    train_iter = iter(train_ds)

    # Model and optimizer.
    model = runs.build_audio_model(config, basis.num_components)
    o = config.optim
    tx = optax.adamw(
        common.learning_rate(o.lr, config), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay
    )
    train_step = make_train_step(model, basis, config, tx)

    # Sharded init.
    example = runs.audio_inputs(mel.shape[1], mel.shape[2])[0]

    def init(rng):
        k_model, k_state = jax.random.split(rng)
        params = model.init(k_model, jnp.zeros(example.shape, example.dtype))["params"]
        return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), rng=k_state)

    rng = jax.random.PRNGKey(config.seed)
    state_sharding = jax.tree.map(lambda _: repl, jax.eval_shape(init, rng))

    # Step function.
    p_train_step = common.CheckedStep(
        jax.jit(
            train_step,
            in_shardings=(state_sharding, parallel.data_sharded(mesh)),
            out_shardings=(state_sharding, repl),
            donate_argnums=(0,),
        ),
        f"audio-model train step (batch {config.batch_size})",
        "a smaller --config.batch_size",
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
        "audio model",
        workdir,
        strict=config.get("strict_resume", False),
    )
    n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    if jax.process_index() == 0:
        print(
            f"audio model: {n_params:,} params, {basis.num_components} expression components; "
            f"{len(keep)} train / {meta['test_frames']} test frames; {mesh.size} device(s), "
            f"global batch {config.batch_size}"
        )

    evaluator = audio_eval.AudioEvaluator(
        config, basis, runs.make_predict_coefficients(model), mesh
    )
    writer = writers.MetricWriter(workdir)

    # Loop.
    state, step, preempted = common.run_loop(
        config,
        workdir,
        desc="audio model",
        state=state,
        start_step=start_step,
        step_fn=p_train_step,
        train_iter=train_iter,
        mesh=mesh,
        manager=manager,
        evaluator=evaluator,
        writer=writer,
        guarded=GUARDED,
        postfix={"loss": "loss", "mouth": "mouth_distance"},
    )
    if preempted:
        writer.close()
        return {}
    return common.final_evaluation(config, workdir, evaluator, state.params, step, writer)
