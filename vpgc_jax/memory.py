"""Peak-memory check of a compiled train step before the first step runs (issue 15).

A stage-2 ``paper512`` run at batch 4 on a 24 GiB CPU host was killed by the kernel's
out-of-memory killer after minutes of compiling, with no message. XLA knows the step's buffer
sizes once it is compiled; `check_fits` compares them with the memory the device has free and
refuses with one line naming the estimate, what is available and the options.
"""

import os

import jax

GIB = 2**30


class MemoryEstimateError(RuntimeError):
    """The compiled step needs more memory than the device has available."""


def step_bytes(compiled) -> int | None:
    """Device bytes a compiled function needs while it runs: arguments, outputs (less the donated
    buffers they reuse), temporaries and code, from XLA's ``memory_analysis()``; None when the
    backend does not report it."""
    try:
        ma = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    if ma is None:
        return None
    return int(
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        - ma.alias_size_in_bytes
        + ma.temp_size_in_bytes
        + ma.generated_code_size_in_bytes
    )


def _host_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (physical pages free on other systems)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_bytes(device: jax.Device | None = None) -> int | None:
    """Free memory of ``device`` in bytes: the allocator's limit less what is in use on GPU/TPU,
    the host's available memory on CPU; None when unknown."""
    device = device or jax.local_devices()[0]
    if device.platform == "cpu":
        return _host_available()
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def check_fits(compiled, what: str, options: str, headroom: float = 1.1) -> int | None:
    """Raises if ``compiled`` needs more than the device's free memory (with ``headroom``).

    Args:
      compiled: a ``jax.stages.Compiled`` (``jax.jit(f).lower(...).compile()``).
      what: names the step in the message, e.g. 'stage-2 train step (paper512, batch 4)'.
      options: what the user can change, e.g. '--config.remat=True, a GPU'.
      headroom: factor on the estimate for what XLA's analysis does not count (the host's
        Python, the input pipeline, fragmentation).

    Returns:
      The estimate in bytes (None when XLA does not report one; nothing is checked then).

    Raises:
      MemoryEstimateError: one line with the estimate, the available memory and ``options``.
    """
    need = step_bytes(compiled)
    have = available_bytes()
    if need is None or have is None:
        return need
    if need * headroom > have:
        device = jax.local_devices()[0]
        raise MemoryEstimateError(
            f"the {what} needs about {need / GIB:.1f} GiB per device (XLA memory analysis) but "
            f"only {have / GIB:.1f} GiB are available on {device.platform}; options: {options}"
        )
    return need
