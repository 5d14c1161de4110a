"""Device mesh, shardings, global batches and the multi-process start (data parallelism).

One `Mesh` over every device of every process with a single ``data`` axis. The global batch is split
along its first dimension over that axis; training state is replicated (house style #9, big_vision
``sharding.py``). Multi-process runs call `maybe_initialize_distributed` first and
`assert_same_on_all_processes` on their config; `fetch` brings a global result to every process.
"""

import hashlib
import os
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
# The variables that name the job explicitly (jax 0.10 itself reads only the coordinator address).
_JOB_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
DEFAULT_TIMEOUT_S = 300


def maybe_initialize_distributed() -> None:
    """Joins the multi-process job the environment describes, or does nothing for a single process.

    Two ways to describe the job, identical on every process but for the process id:

    * explicit: ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES=N``,
      ``JAX_PROCESS_ID=i`` (all three; `jax.distributed.initialize` in jax 0.10 reads only the
      first from the environment, so the other two are passed here);
    * ``VPGC_DISTRIBUTED=1``: `jax.distributed.initialize` detects the job from SLURM, Open MPI or
      a TPU pod (any of the three variables above that is set overrides what it detects).

    Joining waits at most ``VPGC_DISTRIBUTED_TIMEOUT`` seconds (default 300) for every process to
    reach the coordinator. XLA aborts the process with a stack trace when its own wait runs out,
    so a watchdog prints one line and exits with status 2 first.

    Raises:
      ValueError: only some of the explicit variables are set, or they are not integers.
    """
    env = os.environ
    given = {k: env[k] for k in _JOB_VARS if env.get(k)}
    auto = env.get("VPGC_DISTRIBUTED") == "1"
    if not auto and not given:
        return
    if not auto and len(given) < len(_JOB_VARS):
        missing = ", ".join(k for k in _JOB_VARS if k not in given)
        raise ValueError(
            f"multi-process job half described: {missing} not set (set all three of "
            f"{', '.join(_JOB_VARS)}, or VPGC_DISTRIBUTED=1 where SLURM / Open MPI / a TPU pod "
            "describes the job)"
        )
    kwargs = {}
    for key, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if key in given:
            if not given[key].isdigit():
                raise ValueError(f"{key}={given[key]!r} is not a non-negative integer")
            kwargs[arg] = int(given[key])
    timeout = float(env.get("VPGC_DISTRIBUTED_TIMEOUT", DEFAULT_TIMEOUT_S))
    who = (
        f"process {kwargs['process_id']} of {kwargs['num_processes']}"
        if len(kwargs) == 2
        else "this process"
    )
    where = given.get("JAX_COORDINATOR_ADDRESS", "the detected coordinator")
    watchdog = threading.Timer(timeout, _give_up, args=(who, where, timeout))
    watchdog.daemon = True
    watchdog.start()
    try:
        # XLA's own deadline comes later than the watchdog's, so the one-line message wins.
        jax.distributed.initialize(**kwargs, initialization_timeout=int(timeout) + 60)
    finally:
        watchdog.cancel()


def _give_up(who: str, where: str, timeout: float) -> None:
    print(
        f"error: {who} could not start the job with coordinator {where} within {timeout:.0f} s: "
        "check that every process was started, with the same JAX_COORDINATOR_ADDRESS, and that "
        "process 0 is reachable on that port (VPGC_DISTRIBUTED_TIMEOUT sets the wait)",
        file=sys.stderr,
        flush=True,
    )
    os._exit(2)  # XLA's connect holds this process; nothing else would end it cleanly


def assert_same_on_all_processes(text: str, what: str) -> None:
    """Stops every process of the job with the same error when `text` differs between them.

    Compares SHA-256 digests (all processes gather all digests, so all raise together and none
    waits in a later collective). A single process returns at once.

    Raises:
      ValueError: some process has a different `text`; the message names them.
    """
    if jax.process_count() == 1:
        return
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.int32)  # [8]
    digests = np.asarray(multihost_utils.process_allgather(digest))  # [P, 8]
    differ = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
    if differ:
        raise ValueError(
            f"{what} differs between processes ({', '.join(map(str, differ))} vs process 0): "
            "start every process with the same command"
        )


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices, axis ``data``.

    Auto axis type: shardings are propagated by the compiler (GSPMD); `jax.make_mesh` would
    otherwise default to explicit sharding-in-types, which every reshape in the models would have
    to annotate.
    """
    return jax.make_mesh(
        (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (training state)."""
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over ``data``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, frames_per_group: int = 1) -> int:
    """Returns the per-process batch of a global batch of `global_batch` frames.

    The rule: the global batch divides over the mesh's devices, and into whole groups of
    `frames_per_group` consecutive frames per process (each process reads whole groups).

    Raises:
      ValueError: either does not hold (one line naming the smallest batch sizes that do).
    """
    procs = jax.process_count()
    if global_batch % mesh.size or global_batch % (frames_per_group * procs):
        step = int(np.lcm(mesh.size, frames_per_group * procs))
        raise ValueError(
            f"global batch size {global_batch} does not split over {mesh.size} device(s) in "
            f"{procs} process(es) in groups of {frames_per_group} frame(s): use a multiple of "
            f"{step} (--config.batch_size)"
        )
    return global_batch // procs


def global_batch(batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy batch -> global `jax.Array`s sharded over ``data``."""
    sharding = data_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def fetch(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) global array as one numpy array on every process.

    Gathers across processes when this process does not hold all of it (all processes must call
    it together then).
    """
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
