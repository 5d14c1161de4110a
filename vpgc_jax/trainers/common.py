"""What both trainers share: the training loop, preemption, the non-finite guard, throughput.

Each trainer builds its own mesh, pipeline, model, step function and evaluator top to bottom (house
style #2) and hands them to `run_loop` and `final_evaluation`, the logic that is the same.
"""

import dataclasses
import math
import os
import signal
import time

import jax
import optax
from jax.experimental import multihost_utils
from tqdm import tqdm

from vpgc_jax import checkpointing, memory, parallel, writers
from vpgc_jax.trainers import resume


def learning_rate(lr: float, config) -> optax.Schedule | float:
    """A peak learning rate `lr` as a schedule: constant (paper, reference) or warmup + cosine.

    ``config.optim.schedule`` 'constant' keeps `lr` (spec §2.4, §4.3); 'cosine' ramps linearly
    from 0 over ``optim.warmup_steps`` and decays to ``optim.final_lr_fraction * lr`` at
    ``num_steps`` (a short CPU run ends on small steps instead of the noisy constant-rate iterate).
    A resume with a different ``num_steps`` continues on the new schedule.

    Raises:
      ValueError: an unknown schedule name.
    """
    o = config.optim
    schedule = o.get("schedule", "constant")
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            lr,
            o.warmup_steps,
            max(config.num_steps, o.warmup_steps + 1),
            end_value=o.final_lr_fraction * lr,
        )
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {schedule!r}")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the step and the term."""


class CheckedStep:
    """A jitted train step compiled at its first call, its peak memory checked before it runs.

    XLA's memory analysis of the compiled step (`vpgc_jax.memory.check_fits`) is compared with the
    device's free memory, so a step that cannot fit stops with one line instead of being killed by
    the out-of-memory killer (a ``paper512`` stage-2 step at batch 4 on a 24 GiB CPU host). Later
    calls run the same executable.

    Args:
      jitted: the ``jax.jit``-wrapped step.
      what: names the step in the message, e.g. 'stage-2 train step (paper512, batch 4)'.
      options: what the user can change, for the message.

    Raises (at the first call):
      memory.MemoryEstimateError: the step needs more memory than is available.
    """

    def __init__(self, jitted, what: str, options: str):
        self.jitted, self.what, self.options = jitted, what, options
        self.compiled = None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = self.jitted.lower(*args).compile()
            memory.check_fits(self.compiled, self.what, self.options)
        return self.compiled(*args)


class Preemption:
    """Turns SIGTERM (and SIGINT) into a step at which the loop saves and exits cleanly.

    One process: the signals set a flag the loop polls. Several processes: a scheduler's SIGTERM
    reaches them at different steps, and a process that saved alone would wait forever for the
    others, so JAX's preemption service (it catches SIGTERM in every process of a
    `jax.distributed` job) picks the same step for all
    (`multihost_utils.reached_preemption_sync_point`); no handlers are installed then, and SIGINT
    keeps its default.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}
        self._multi_process = jax.process_count() > 1
        if self._multi_process:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        self.requested = True
        print(
            f"\nreceived signal {signum}: saving a checkpoint after this step, then exiting",
            flush=True,
        )

    def should_stop(self, step: int) -> bool:
        """Whether to save and exit after `step`; call once per step, on every process."""
        if self._multi_process and not self.requested:
            self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StepMetrics:
    """Buffers per-step metric dicts (device arrays) between logs.

    The host may run at most `max_in_flight` steps ahead of the device: enough to overlap input
    loading with compute, few enough that progress bars and throughput show completed steps.
    """

    def __init__(self, guarded_terms: tuple[str, ...], max_in_flight: int = 2):
        self.guarded_terms = guarded_terms
        self.max_in_flight = max_in_flight
        self._pending: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        self._pending.append((step, metrics))
        if len(self._pending) > self.max_in_flight:
            jax.block_until_ready(self._pending[-1 - self.max_in_flight][1])

    def flush(self) -> list[tuple[int, dict]]:
        """Fetches the buffered metrics to host and checks them.

        Returns:
          [(step, {name: float})] in step order.

        Raises:
          NonFiniteLossError: at the first step whose guarded terms include a NaN or inf.
        """
        fetched = [
            (s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in self._pending
        ]
        self._pending = []
        for step, m in fetched:
            bad = [k for k in self.guarded_terms if k in m and not math.isfinite(m[k])]
            if bad:
                raise NonFiniteLossError(
                    f"non-finite loss at step {step}: {', '.join(f'{k}={m[k]}' for k in bad)}; "
                    "stopping (the last checkpoint is untouched)"
                )
        return fetched


class Throughput:
    """Steps/s, images/s and the input pipeline's share of wall time since the last read.

    `next_batch` times the host fetching each batch (grain iterator + transfer to the mesh). Steps
    are dispatched asynchronously and the host runs up to two steps ahead (`StepMetrics`), so the
    fetch overlaps the device's work on earlier steps: ``data_wait_fraction`` (fetch time over
    wall time) is an upper bound on the fraction of time the step waited on data.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._t = time.perf_counter()
        self._steps = 0
        self._wait = 0.0

    def next_batch(self, iterator, mesh) -> dict:
        """The next global batch of `iterator` (`parallel.global_batch`), timed."""
        t0 = time.perf_counter()
        batch = parallel.global_batch(next(iterator), mesh)
        self._wait += time.perf_counter() - t0
        return batch

    def tick(self) -> None:
        self._steps += 1

    def read(self) -> dict:
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        out = {
            "steps_per_sec": self._steps / dt,
            "images_per_sec": self._steps * self.batch_size / dt,
            "data_wait_fraction": self._wait / dt,
        }
        self._t, self._steps, self._wait = now, 0, 0.0
        return out


def restore_or_init(
    manager, init, rng, sharding, train_iter, desc: str, workdir: str, strict: bool = False
):
    """The run's newest intact TrainState (data iterator moved with it), else a new one; sharded.

    A weights-only checkpoint (``vpgc_jax.interop`` writes imported weights so: ``step``,
    ``params`` and, for stage 1, maybe the discriminator's) starts from a new state holding its
    fields: the optimizer states are fresh, the iterator at its start. A latest checkpoint that
    cannot be restored is reported and the next older one used (`resume.restore_intact`).

    Args:
      manager: the run's orbax CheckpointManager.
      init: ``init(rng) -> TrainState`` at step 0.
      rng: the init key.
      sharding: the sharding of every state leaf (replicated).
      train_iter: the grain iterator whose position a full checkpoint restores.
      desc: label of the printed line ('stage 1', 'stage 2').
      workdir: the run directory (printed).
      strict: a damaged latest checkpoint is an error (``config.strict_resume``).

    Returns:
      (start step, TrainState, abstract TrainState).

    Raises:
      resume.CheckpointRestoreError: no step restores, or `strict` and the latest does not.
    """
    abstract = jax.eval_shape(init, rng)
    state_sharding = jax.tree.map(lambda _: sharding, abstract)
    target = checkpointing.abstract_with_shardings(abstract, sharding)
    names = {f.name for f in dataclasses.fields(abstract)}
    directory = str(manager.directory)

    def restore_step(step):
        fields = checkpointing.saved_fields(directory, step)
        if fields >= names:
            return "full", checkpointing.restore_step(manager, step, target, train_iter)
        wanted = {k: getattr(target, k) for k in sorted(fields)}
        return "weights", checkpointing.restore_fields(directory, wanted, step)[1]

    step, restored = resume.restore_intact(manager, restore_step, strict, workdir)
    if step is None:
        print(f"{desc}: new run in {workdir}")
        return 0, jax.jit(init, out_shardings=state_sharding)(rng), abstract
    kind, value = restored
    if kind == "full":
        print(f"{desc}: resumed from step {step} in {workdir}")
        return step, value, abstract
    state = jax.jit(init, out_shardings=state_sharding)(rng)
    print(f"{desc}: started from the weights saved at step {step} in {workdir}")
    return step, state.replace(**value), abstract


def run_loop(
    config,
    workdir: str,
    *,
    desc: str,
    state,
    start_step: int,
    step_fn,
    train_iter,
    mesh,
    manager,
    evaluator,
    writer,
    guarded: tuple[str, ...],
    postfix: dict[str, str],
):
    """Trains from `start_step` to ``config.num_steps``: log, samples, evaluations, checkpoints.

    Every ``log_every`` steps (and at the last one) the metrics are fetched, checked for NaN / inf
    and written with throughput and the data-wait fraction; samples every ``sample_every``;
    held-out evaluation every ``eval_every`` (not at the last step: `final_evaluation` does that);
    an orbax checkpoint with the data-iterator position every ``checkpoint_every`` and at the end.
    A new run with ``num_steps`` 0 saves its initial state as checkpoint 0 (an untrained run, to
    check an export's loading path before training: `vpgc_jax.export_torch`).
    SIGTERM / SIGINT save a checkpoint after the current step and stop.

    Args:
      config: the run's config (num_steps, batch_size and the *_every fields).
      workdir: the run directory (samples go to ``workdir/samples``).
      desc: progress-bar label.
      state: the train state (``.params`` is what the evaluator scores).
      start_step: the step `state` is at.
      step_fn: ``step_fn(state, batch) -> (state, metrics)``, the compiled step; ``batch`` is the
        pipeline's global batch.
      train_iter: the grain iterator (its position is checkpointed).
      mesh: the data mesh batches are sharded over.
      manager: the orbax CheckpointManager.
      evaluator: has ``evaluate(params)`` and ``save_samples(params, workdir, step, writer)``.
      writer: the run's `writers.MetricWriter` (left open).
      guarded: metric names checked for NaN / inf.
      postfix: progress-bar fields {label: metric name} besides images/s.

    Returns:
      (state, step, preempted).

    Raises:
      NonFiniteLossError: a guarded term became NaN / inf (the last checkpoint is untouched).
    """
    history = StepMetrics(guarded)
    throughput = Throughput(config.batch_size)
    preemption = Preemption()
    step = start_step
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        desc=desc,
        unit="step",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    try:
        if config.num_steps == 0 and step == 0 and manager.latest_step() is None:
            checkpointing.save(manager, 0, state, train_iter)
        while step < config.num_steps:
            state, step_metrics = step_fn(state, throughput.next_batch(train_iter, mesh))
            step += 1
            history.add(step, step_metrics)
            throughput.tick()
            bar.update(1)
            is_last = step == config.num_steps
            stop = preemption.should_stop(step)
            if step % config.log_every == 0 or is_last or stop:
                logged = history.flush()[-1][1]
                logged.update(throughput.read())
                writer.write(step, logged)
                fields = {k: f"{logged[m]:.4g}" for k, m in postfix.items()}
                bar.set_postfix(**fields, img_s=f"{logged['images_per_sec']:.1f}")
            if config.sample_every and (step % config.sample_every == 0 or is_last):
                evaluator.save_samples(state.params, workdir, step, writer)
            if config.eval_every and step % config.eval_every == 0 and not is_last:
                scores = evaluator.evaluate(state.params)
                writer.write(step, {f"eval_{k}": v for k, v in scores.items()})
            if step % config.checkpoint_every == 0 or is_last or stop:
                history.flush()
                checkpointing.save(manager, step, state, train_iter)
            if stop:
                checkpointing.finish(manager)
                if jax.process_index() == 0:
                    print(f"stopped at step {step} on request; resume with the same command")
                return state, step, True
    finally:
        bar.close()
        checkpointing.finish(manager)
        preemption.restore()
    return state, step, False


def final_evaluation(config, workdir: str, evaluator, params, step: int, writer, **extra) -> dict:
    """The held-out evaluation on the whole test split -> ``workdir/eval.json``; closes `writer`.

    Skipped (returns ``{'step': step}``) when ``config.final_eval`` is False, e.g. in the
    quickstart, which scores with `eval.evaluate` afterwards. `extra` entries are added to the
    scores (e.g. the stage-1 step a driver was trained against).
    """
    if not config.get("final_eval", True):
        writer.close()
        return {"step": step}
    scores = evaluator.evaluate(params, final=True)
    scores.update(step=step, **extra)
    writer.write(step, {f"eval_{k}": v for k, v in scores.items() if not isinstance(v, dict)})
    writer.close()
    writers.write_json(os.path.join(workdir, "eval.json"), scores)
    if jax.process_index() == 0:
        rounded = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()}
        print("held-out:", rounded)
    return scores
