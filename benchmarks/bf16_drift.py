"""How far bfloat16 compute moves rendered frames from float32 (issue 15), on real inputs.

  python benchmarks/bf16_drift.py [--dataset DS] [--resolution 256]

For the paper's architectures at ``--resolution`` (stage 1 at grid R/32; both drivers) and the
``cpu128`` ones at 128 px, with initial weights plus N(0, 0.02) noise (`vpgc_jax.interop.parity`),
renders real frames (stage 1: reconstructions of test frames; stage 2: driver -> soft lookup ->
decoder on heatmaps of real landmarks) with ``compute_dtype`` bfloat16 and float32 and prints the
PSNR of the bfloat16 frames against the float32 ones (8-bit, dB). Whatever the precision policy
(`vpgc_jax.precision`) keeps in float32 is kept in both. Runs on CPU too (slowly: XLA's CPU
bfloat16 convolutions have no fast path); the numbers are the arithmetic's, not the device's.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.parity512 import prepare, test_frames  # noqa: E402
from vpgc_jax.interop import parity  # noqa: E402
from vpgc_jax.models.driver import PriorGuidedDriver  # noqa: E402
from vpgc_jax.models.vqgan import VQModel  # noqa: E402

CPU128_STAGE1 = dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(),
                     z_channels=64, embed_dim=64, K_c=64, d_c=4)  # fmt: skip
CPU128_DRIVER = dict(ch=32, ch_mult=(1, 1, 2, 4), num_res_blocks=1, attn_resolutions=(),
                     dim_head=16, mlp_dim=128, pos_embedding=True)  # fmt: skip


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR (dB) of [-1, 1] images after 8-bit rounding, b the reference."""
    q = lambda x: np.round((np.clip(np.asarray(x, np.float32), -1, 1) + 1) * 127.5)  # noqa: E731
    mse = np.mean((q(a) - q(b)) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def models(arch: str, res: int, dtype):
    grid = res // 2 ** (len(CPU128_STAGE1["ch_mult"]) - 1) if arch == "cpu128" else res // 32
    s1 = CPU128_STAGE1 if arch == "cpu128" else {}
    vq = VQModel(resolution=res, grid_h=grid, grid_w=grid, dtype=dtype, **s1)
    drivers = {}
    for variant in ("paper", "reference"):
        d = dict(CPU128_DRIVER, dim=64) if arch == "cpu128" else {"pos_embedding": True}
        if variant == "reference":
            d = {**d, "depth": 4, "pos_embedding": False}
        drivers[variant] = PriorGuidedDriver(
            variant=variant, resolution=res, grid_h=grid, grid_w=grid, dtype=dtype, **d
        )
    return vq, drivers


def drift(arch: str, res: int, frames: np.ndarray, heat: np.ndarray) -> list[tuple[str, float]]:
    vq32, drv32 = models(arch, res, jnp.float32)
    vq16, drv16 = models(arch, res, jnp.bfloat16)
    vq_params = parity.noisy_params(vq32, jnp.asarray(frames[:1]), seed=1)
    rows = []
    rec = {
        name: np.asarray(jax.jit(vq.apply)({"params": vq_params}, frames)[0])
        for name, vq in (("f32", vq32), ("bf16", vq16))
    }
    rows.append((f"stage 1 reconstruction ({arch}, {res} px)", psnr8(rec["bf16"], rec["f32"])))
    prior = np.asarray(vq32.apply({"params": vq_params}, method=VQModel.prior))
    for variant in ("paper", "reference"):
        params = parity.noisy_params(drv32[variant], jnp.asarray(heat), jnp.asarray(prior), seed=2)
        out = {}
        for name, vq, drv in (("f32", vq32, drv32[variant]), ("bf16", vq16, drv16[variant])):

            def render(p, vp, h, q, vq=vq, drv=drv):
                f = drv.apply({"params": p}, h, q)
                return vq.apply({"params": vp}, f, method=VQModel.decode_features)

            out[name] = np.asarray(jax.jit(render)(params, vq_params, heat, prior))
        rows.append(
            (f"stage 2 {variant} render ({arch}, {res} px)", psnr8(out["bf16"], out["f32"]))
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="", help="a prepared 512 px dataset (default: prepare)")
    p.add_argument("--resolution", type=int, default=256, help="for the paper architectures")
    args = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ds = args.dataset or prepare(os.path.join(tmp, "macron512"))
        inputs = {
            ("cpu128", 128): (test_frames(ds, 128, 4), parity.real_heatmaps(ds, 128, 4)),
            ("paper", args.resolution): (
                test_frames(ds, args.resolution, 4),
                parity.real_heatmaps(ds, args.resolution, 4),
            ),
        }
    print(f"\nbfloat16 vs float32, jax {jax.__version__}, {jax.devices()[0].platform}")
    print("| rendered | PSNR bf16 vs f32 (dB) |\n|---|---|")
    for (arch, res), (frames, heat) in inputs.items():
        for name, value in drift(arch, res, frames, heat):
            print(f"| {name} | {value:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
