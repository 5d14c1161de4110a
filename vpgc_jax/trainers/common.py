"""Loop pieces both trainers share: preemption, the non-finite guard, throughput, config dumps.

Kept small on purpose: each trainer stays readable top to bottom (house style #2) and only the logic
that is really the same lives here.
"""

import json
import math
import os
import signal
import time

import jax
import numpy as np

from vpgc_jax import parallel


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the step and the term."""


class Preemption:
    """Turns SIGTERM (and SIGINT) into a flag the loop polls, so it can save and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        self.requested = True
        print(
            f"\nreceived signal {signum}: saving a checkpoint after this step, then exiting",
            flush=True,
        )

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


def write_json(path: str, obj) -> None:
    """Writes JSON atomically (tmp + rename); process 0 only."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (tuple, list)):
        return list(x)
    return str(x)


def evenly_spaced(n_total: int, n: int) -> np.ndarray:
    """`n` indices spread evenly over range(n_total) (all of them if n <= 0 or n >= n_total)."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.linspace(0, n_total - 1, n).round().astype(int)
