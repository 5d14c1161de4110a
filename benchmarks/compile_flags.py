"""XLA CPU compile time of the test suite's tiny stage-1 run under different ``XLA_FLAGS``.

  python benchmarks/compile_flags.py DATASET_DIR [--repeats 2] ["FLAGS" ...]

DATASET_DIR is the suite's tiny dataset (`python -m data_prep.prepare --video
../shared/data/portraits/macron_address_512.mp4 --out DIR --size 128 --max-frames 90
--test-frames 20`). Each flag set runs, in a fresh process without a persistent compilation cache,
a 4-step run of `tests/conftest.py`'s TINY_CODEBOOK model with its final evaluation, and reports
the seconds jax.monitoring attributes to backend compilation and tracing, and the run's wall time.
With no FLAGS, the suite's `FAST_COMPILE_FLAG` is compared with LLVM level 0 alone. Results:
benchmarks/RESULTS.md ("The suite's time on two VMs").
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(dataset_dir: str, workdir: str) -> dict:
    """One tiny run in this process (XLA_FLAGS already set): seconds per jax.monitoring event."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    import jax.monitoring
    from conftest import TINY_CODEBOOK, apply_overrides

    from configs import codebook as codebook_config
    from vpgc_jax import train

    seconds = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: seconds.update({event.rsplit("/", 1)[-1]: duration})
    )
    start = time.perf_counter()
    config = codebook_config.get_config("cpu128")
    overrides = {**TINY_CODEBOOK, "dataset_dir": dataset_dir, "num_steps": 4, "final_eval": True}
    train.train_and_evaluate(apply_overrides(config, overrides), workdir)
    return {
        "compile_s": seconds["backend_compile_duration"],
        "trace_s": seconds["jaxpr_trace_duration"],
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset_dir")
    ap.add_argument("flags", nargs="*", help="XLA_FLAGS values to compare")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # a workdir: run once, print JSON
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_once(args.dataset_dir, args.child)))
        return
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import FAST_COMPILE_FLAG

    flag_sets = args.flags or ["--xla_backend_optimization_level=0", FAST_COMPILE_FLAG]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    print("| XLA_FLAGS | backend compile (s) | trace (s) | run wall (s) |\n|---|---|---|---|")
    for flags in flag_sets:
        results = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, __file__, args.dataset_dir, f"--child={tmp}/run"]
                proc = subprocess.run(
                    cmd, env={**env, "XLA_FLAGS": flags}, capture_output=True, text=True
                )
            if proc.returncode:
                sys.exit(f"error: XLA_FLAGS={flags!r}: {proc.stderr.strip().splitlines()[-1]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        cells = [", ".join(f"{r[key]:.1f}" for r in results) for key in results[0]]
        print(f"| `{flags}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
