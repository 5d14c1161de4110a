"""Stage-1 train-step time and images/s per config variant and resolution (synthetic batches).

Run: ``PYTHONPATH=. python benchmarks/bench_train_step.py [--variants cpu128,cpu128+vanilla]
[--steps 5] [--batch 4]``

Times the trainer's own jitted step (`vpgc_jax.trainers.codebook.make_train_step`: autoencoder,
LPIPS, adaptive weight, discriminator, both Adam updates) on one device, with the GAN term active,
after one compile step. Reports compile time, the median step time over ``--steps`` steps, images/s,
and XLA's ``memory_analysis()`` (temp + arguments + outputs) of the compiled step.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import codebook as codebook_config
from vpgc_jax.losses import lpips as lpips_lib
from vpgc_jax.models.discriminator import MultiscaleDiscriminator
from vpgc_jax.trainers import codebook as trainer


def bench(variant: str, steps: int, batch: int) -> dict:
    config = codebook_config.get_config(variant)
    config.batch_size = batch
    config.loss.disc_start = 0
    model = trainer.build_model(config)
    disc = MultiscaleDiscriminator(ndf=config.disc.ndf)
    train_step, ae_tx, d_tx = trainer.make_train_step(model, disc, config)
    state = jax.jit(trainer.make_init(model, disc, ae_tx, d_tx, config.resolution))(
        jax.random.PRNGKey(0)
    )
    lpips_params = lpips_lib.load_lpips_params()
    r = config.resolution
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (batch, r, r, 3)), jnp.float32)
    step = jax.jit(train_step, donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, {"image": x}, lpips_params).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    peak = (
        mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        if mem is not None
        else float("nan")
    )
    state, m = compiled(state, {"image": x}, lpips_params)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, {"image": x}, lpips_params)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    return {
        "variant": variant,
        "resolution": r,
        "batch": batch,
        "compile_s": compile_s,
        "step_s": t,
        "images_per_s": batch / t,
        "peak_gib": peak / 2**30,
        "device": f"{jax.devices()[0].device_kind} x1",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="cpu128,cpu128+vanilla")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} device(s)"
    )
    print("| variant | px | batch | compile (s) | step (s) | images/s | peak (GiB) | device |")
    print("|---|---|---|---|---|---|---|---|")
    for v in args.variants.split(","):
        row = bench(v, args.steps, args.batch)
        print(
            f"| {row['variant']} | {row['resolution']} | {row['batch']} | {row['compile_s']:.1f} "
            f"| {row['step_s']:.3f} | {row['images_per_s']:.2f} | {row['peak_gib']:.2f} "
            f"| {row['device']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
