"""Numerical parity at paper size on real inputs: vpgc_jax float32 vs float64 vs our PyTorch module.

  python benchmarks/parity512.py [--dataset DS] [--resolution 512] [--flax-groupnorm]

Runs `vpgc_jax.interop.parity` with JAX in x64 mode, so each row compares vpgc_jax float32, vpgc_jax
float64 and our PyTorch module in float32 with the float64 truth (our PyTorch module in float64):
stage 2 (both driver variants, features F_hat and the frame rendered through soft lookup and the
decoder) and stage 1 (reconstruction, soft and hard lookup). Heatmaps come from the landmarks of a
prepared clip (default: the first 40 frames of the macron sample clip, prepared at 512 px into a
temporary directory). ``--flax-groupnorm`` swaps in flax's GroupNorm with its default one-pass
variance (the code before issue 15) to measure what the fix changed. Prints a markdown table.
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vpgc_jax.interop import parity  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACRON = os.path.join(REPO, "..", "shared", "data", "portraits", "macron_address_512.mp4")


def use_flax_groupnorm() -> None:
    """Replaces the stable GroupNorm by flax's default (E[x^2] - E[x]^2 in one long sum)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from vpgc_jax.models import taming

    def group_norm(x, name, param_dtype):
        dt = jnp.promote_types(x.dtype, jnp.float32)
        return nn.GroupNorm(
            num_groups=32, epsilon=1e-6, dtype=dt, param_dtype=param_dtype, name=name
        )(x.astype(dt)).astype(x.dtype)

    taming.group_norm = group_norm


def prepare(out: str) -> str:
    from data_prep import prepare as prep

    code = prep.main([f"--video={MACRON}", f"--out={out}", "--size=512", "--max-frames=40",
                      "--test-frames=8"])  # fmt: skip
    if code:
        raise SystemExit(code)
    return out


def test_frames(dataset: str, resolution: int, n: int = 2) -> np.ndarray:
    import cv2

    from vpgc_jax.data import frames

    src = frames.open_split(dataset, "test")
    x = [cv2.resize(src[i]["image"], (resolution,) * 2, interpolation=cv2.INTER_AREA)
         for i in range(n)]  # fmt: skip
    return np.stack(x).astype(np.float32) / 127.5 - 1.0


def fmt(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="", help="a prepared dataset (default: prepare macron)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--flax-groupnorm", action="store_true", help="measure the pre-fix GroupNorm")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # the vpgc_jax float64 column
    if args.flax_groupnorm:
        use_flax_groupnorm()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or prepare(os.path.join(tmp, "macron512"))
        heat = parity.real_heatmaps(dataset, args.resolution)
        frames = test_frames(dataset, args.resolution)
    norm = "flax GroupNorm (one-pass variance)" if args.flax_groupnorm else "vpgc_jax GroupNorm"
    print(f"\n{args.resolution} px, {norm}, jax {jax.__version__}, {jax.devices()[0].platform}")
    print("| stage | compared with float64 truth | vpgc_jax f32 | vpgc_jax f64 | PyTorch f32 |"
          " f32 JAX vs torch | time (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for variant in ("reference", "paper"):
        t = time.perf_counter()
        r = parity.driver_parity(variant, heat)
        s = time.perf_counter() - t
        print(f"| 2 ({variant}) | features F_hat, relative L2 | {fmt(r.features_jax32)} | "
              f"{fmt(r.features_jax64)} | {fmt(r.features_torch32)} | "
              f"{fmt(r.features_jax32_vs_torch32)} | {s:.0f} |")  # fmt: skip
        print(f"| 2 ({variant}) | rendered frame, max abs on [-1, 1] | {fmt(r.frame_jax32)} | "
              f"{fmt(r.frame_jax64)} | {fmt(r.frame_torch32)} | "
              f"{fmt(r.frame_jax32_vs_torch32)} | |", flush=True)  # fmt: skip
    for lookup in ("soft", "hard"):
        t = time.perf_counter()
        r = parity.stage1_parity(frames, lookup)
        s = time.perf_counter() - t
        flips = "" if r.index_flips is None else f" ({r.index_flips} index flips)"
        print(f"| 1 ({lookup}{flips}) | reconstruction, max abs on [-1, 1] | "
              f"{fmt(r.recon_jax32)} | {fmt(r.recon_jax64)} | {fmt(r.recon_torch32)} | | "
              f"{s:.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
