"""What a training iterator costs while the step is not yet asking: grain's default read-ahead
against `vpgc_jax.data.pipeline.READ_OPTIONS`.

  python benchmarks/read_ahead.py default|ours codebook|driver DATASET_DIR [--resolution 128]

Builds the training iterator of the stage, takes one batch (batch 8, independent frames), then
waits 20 s as a run does while it compiles, and prints the process's added RSS and the CPU seconds
it spent in those 20 s. Results: benchmarks/RESULTS.md ("Input read-ahead").
"""

import argparse
import os
import sys
import time

import grain

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vpgc_jax.data import pipeline  # noqa: E402


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("default", "ours"))
    ap.add_argument("stage", choices=("codebook", "driver"))
    ap.add_argument("dataset_dir")
    ap.add_argument("--resolution", type=int, default=128)
    args = ap.parse_args()
    if args.mode == "default":
        pipeline.READ_OPTIONS = grain.ReadOptions()
    kw = dict(stage=args.stage, resolution=args.resolution, batch_size=8, frames_per_group=1)
    it = iter(pipeline.make_dataset(args.dataset_dir, "train", **kw))
    rss0 = rss_bytes()
    t = time.time()
    next(it)
    first = time.time() - t
    c0 = cpu_seconds()
    time.sleep(20)
    cpu = cpu_seconds() - c0
    added = (rss_bytes() - rss0) / 2**20
    print(
        f"{args.mode} {args.stage}: first batch {first:.2f} s, RSS +{added:.0f} MiB after 20 s, "
        f"CPU in those 20 s {cpu:.1f} s"
    )


if __name__ == "__main__":
    main()
