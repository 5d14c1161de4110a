"""Device mesh, shardings and global batches (data parallelism over a ``data`` mesh axis).

One `Mesh` over every device of every process with a single ``data`` axis. The global batch is split
along its first dimension over that axis; training state is replicated (house style #9, big_vision
``sharding.py``). Multi-host runs call `maybe_initialize_distributed` first.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when launched as a multi-process job.

    Triggered by ``VPGC_DISTRIBUTED=1`` (explicit), or by the coordinator variables that
    `jax.distributed.initialize` auto-detects (``JAX_COORDINATOR_ADDRESS`` with
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; SLURM / Open MPI / TPU pods are detected by JAX
    itself when ``VPGC_DISTRIBUTED=1``). Single-process runs do nothing.
    """
    if os.environ.get("VPGC_DISTRIBUTED") == "1" or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()


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


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Returns the per-process batch; ValueError if the global batch does not divide evenly."""
    if global_batch % mesh.size:
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the {mesh.size} "
            "devices of the mesh"
        )
    return global_batch // jax.process_count()


def global_batch(batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy batch -> global `jax.Array`s sharded over ``data``."""
    sharding = data_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )
