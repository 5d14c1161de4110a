"""The benchmark suite: one table of what, shape, dtype, time, throughput, peak memory, device.

Run from the repository root:

  python benchmarks/run_all.py [--dtype auto|float32|bfloat16] [--only lookup,forward512,...]
      [--dataset DIR] [--reps 3] [--no-append]

and it prints the table and appends it to ``benchmarks/RESULTS.md`` with the device, date and
command. Rows (each a jitted function timed after compilation; median of ``--reps`` runs):

* ``lookup``: the grid-codebook lookup, forward + backward, at the paper's shapes (B=4, 16x16 grid,
  K_c=256, d_c=4, r=4, C=256, square window), for each formulation: positions in chunks of 16 or
  64 (``lax.map`` over a rematerialised vmap), and the plain vmap over all positions (the
  reference implementation the tests compare against), soft and hard; at K_c=16 also the
  PyTorch reference's broadcast formulation, which only fits in memory at that size.
* ``forward512``: the stage-1 autoencoder forward (encoder -> codebook -> decoder) at 512 px, B=4,
  paper config: the reference's 36-81 s on the 2-core CPU (spec §7) is the anchor.
* ``train128`` / ``train512``: the full stage-1 train step (autoencoder, LPIPS, adaptive GAN
  weight, discriminator, both Adam updates) at the ``cpu128`` and ``paper512`` configs; at 512 px
  with and without rematerialisation. On CPU the 512 px rows are compiled for their memory but
  not timed (minutes per step) unless ``--time-512``.
* ``driver128``: the stage-2 train step at ``cpu128``.
* ``inference``: driver + codebook + decoder (what `vpgc_jax.reenact` runs), frames/s at batch 8
  and 1, at 128 px (cpu128) and 512 px (paper512).
* ``pipeline`` (with ``--dataset``, a `data_prep` dataset): the grain input pipeline alone,
  images/s for stage 1 (frames) and stage 2 (frames + 7-frame heatmap stacks).

Peak memory: XLA's ``memory_analysis()`` of the compiled function: temporaries + arguments +
outputs, donated buffers counted once, i.e. what the executable needs on the device (its
``peak_memory_in_bytes`` field reads a few MiB for programs with loops on CPU, so it is not used).
Train steps donate their state as the trainers do. Parameters and optimizer states are random
values filled on the host (`random_tree`; speed does not depend on them).
"""

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import codebook as codebook_config  # noqa: E402
from configs import driver as driver_config  # noqa: E402
from vpgc_jax import precision, runs  # noqa: E402
from vpgc_jax.losses import lpips as lpips_lib  # noqa: E402
from vpgc_jax.models.codebook import grid_lookup, square_window  # noqa: E402
from vpgc_jax.trainers import codebook as cb_trainer  # noqa: E402
from vpgc_jax.trainers import driver as drv_trainer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
GROUPS = ("lookup", "forward512", "train128", "train512", "driver128", "inference", "pipeline")


def device_name() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores) x{jax.device_count()}"
    return f"{d.device_kind} x{jax.device_count()}"


def xla_flops(lowered) -> float | None:
    """FLOPs of one call of a lowered computation, from XLA's cost analysis (None if absent).

    jax <= 0.4.30 returns a list with one dict per computation, newer versions one dict.
    """
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def timed(fn, args, reps: int, *, time_it: bool = True, donate_state: bool = False) -> dict:
    """Compiles fn(*args), then times `reps` calls; returns compile_s, time_s, peak_bytes, flops.

    ``donate_state``: fn is a train step ``(state, ...) -> (state, metrics)`` compiled with its
    state donated, as the trainers do; each call gets the previous call's state. ``flops``: XLA's
    count for one call of the program as lowered (before backend optimisation). ``compiled``: the
    executable, to call again.
    """
    jitted = jax.jit(fn, donate_argnums=(0,) if donate_state else ())
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = xla_flops(lowered)
    m = compiled.memory_analysis()
    peak = None
    if m is not None:  # temporaries + arguments + outputs, donated buffers counted once
        peak = (
            m.temp_size_in_bytes
            + m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
        )
    out = {"compile_s": compile_s, "time_s": None, "peak_bytes": peak, "flops": flops}
    out["compiled"] = compiled
    if not time_it:
        return out
    args = list(args)

    def call():
        out = compiled(*args)
        jax.block_until_ready(out)
        if donate_state:
            args[0] = out[0]

    call()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {**out, "time_s": float(np.median(times))}


def random_tree(fn, *args, seed: int = 0):
    """The pytree `fn(*args)` returns (an init), filled on the host: floats |N(0, 0.02^2)|, ints 0.

    Speed does not depend on the values, and XLA takes far longer to compile a model's random
    initializers than the model (the 32 px test model's 125 leaves: ~50 s on the 2-core CPU, its
    forward pass 6 s). Positive values keep variances (Adam's, BatchNorm's) valid.
    """
    rng = np.random.default_rng(seed)

    def fill(s):
        if not jnp.issubdtype(s.dtype, jnp.floating):
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(np.abs(rng.standard_normal(s.shape, np.float32)) * 0.02, s.dtype)

    return jax.tree.map(fill, jax.eval_shape(fn, *args))


def row(what, shape, dtype, result, items: int, unit: str) -> dict:
    t = result["time_s"]
    return {
        "what": what,
        "shape": shape,
        "dtype": jnp.dtype(dtype).name,
        "time_s": t,
        "throughput": None if t is None else f"{items / t:.2f} {unit}",
        "items": items,
        "items_per_s": None if t is None else items / t,
        "peak_bytes": result["peak_bytes"],
        "compile_s": result["compile_s"],
        "flops": result.get("flops"),
    }


def naive_broadcast(g, z, table, lookup):
    """The reference's formulation: broadcast [B, N, K_d, W, d_c] tensors (spec §1.5, §5.3)."""
    h, w, k_c, d_c = g.shape
    b, c = z.shape[0], z.shape[-1]
    n = h * w
    cw = g.reshape(n, k_c, d_c)[jnp.asarray(table)].reshape(n, -1, d_c)  # [N, W, d_c]
    zb = z.reshape(b, n, c // d_c, 1, d_c)  # [B, N, K_d, 1, d_c]
    cb = cw[None, :, None]  # [1, N, 1, W, d_c]
    if lookup == "soft":
        weights = jax.nn.softmax(jnp.sum(zb * cb, -1), -1)  # [B, N, K_d, W]
        z_q = jnp.sum(weights[..., None] * cb, -2)  # [B, N, K_d, d_c]
    else:
        idx = jnp.argmin(jnp.sum((zb - cb) ** 2, -1), -1)  # [B, N, K_d]
        z_q = jnp.take_along_axis(cw[None], idx.reshape(b, n, -1, 1), axis=2)
    return z_q.reshape(z.shape)


def bench_lookup(reps: int, b: int = 4, codes: int = 256, c: int = 256, on_row=None) -> list[dict]:
    """The lookup formulations (the lookup always runs in float32).

    Defaults are the paper's shapes: batch `b`, K_c = `codes` per position, C = `c` feature
    channels, 16x16 grid, d_c=4, r=4; the broadcast formulation runs at K_c=16 only.
    ``on_row(row)`` is called after each row.
    """
    h, w, d_c, r = 16, 16, 4, 4
    k_small = min(16, codes)
    table = square_window(h, w, r)
    rows = []
    for lookup, chunk, k_c, label in [
        ("soft", 16, codes, "chunks of 16 positions (default)"),
        ("soft", 64, codes, "chunks of 64 positions"),
        ("soft", None, codes, "one vmap over all positions (reference impl.)"),
        ("hard", 16, codes, "chunks of 16 positions"),
        ("hard", None, codes, "one vmap over all positions"),
        ("soft", 16, k_small, "chunks of 16 positions"),
        ("soft", "naive", k_small, "reference's broadcast [B,N,K_d,W,d_c]"),
    ]:
        kg, kz, kt = jax.random.split(jax.random.key(0), 3)
        g = jax.random.normal(kg, (h, w, k_c, d_c))
        z = jax.random.normal(kz, (b, h, w, c))
        t = jax.random.normal(kt, (b, h, w, c))

        def fwd_bwd(g, z, t, lookup=lookup, chunk=chunk):
            def f(g, z):
                if chunk == "naive":
                    return jnp.sum(naive_broadcast(g, z, table, lookup) * t)
                return jnp.sum(grid_lookup(g, z, table, lookup=lookup, position_chunk=chunk)[0] * t)

            return jax.grad(f, argnums=(0, 1))(g, z)

        res = timed(fwd_bwd, (g, z, t), reps)
        shape = f"B={b} 16x16 K_c={k_c} d_c={d_c} r={r} C={c}"
        rows.append(row(f"lookup {lookup} fwd+bwd, {label}", shape, jnp.float32, res, b, "img/s"))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def stage1_config(variant: str, dtype_name: str, remat: bool = False):
    """A stage-1 config to time: `variant` at one compute dtype, GAN on from step 0."""
    config = codebook_config.get_config(variant)
    config.compute_dtype = dtype_name
    config.remat = remat
    config.loss.disc_start = 0  # GAN on: the full step
    return config


def _stage1(variant: str, dtype_name: str, remat: bool = False):
    config = stage1_config(variant, dtype_name, remat)
    return config, runs.build_model(config)


def bench_forward512(reps: int, dtype_name: str) -> list[dict]:
    config, model = _stage1("paper512", dtype_name)
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (4, 512, 512, 3)), jnp.float32)
    params = random_tree(model.init, jax.random.PRNGKey(0), x[:1])["params"]

    def forward(params, x):
        return model.apply({"params": params}, x)[0]

    res = timed(forward, (params, x), max(1, reps - 1))
    return [row("stage-1 forward (enc+codebook+dec)", "512 px, B=4", model.dtype, res, 4, "img/s")]


def stage1_parts(config):
    """(model, train_step, init) of a stage-1 config, built as the stage-1 trainer builds them."""
    model = runs.build_model(config)
    disc = runs.build_discriminator(config)
    train_step, ae_tx, d_tx = cb_trainer.make_train_step(model, disc, config)
    return model, train_step, cb_trainer.make_init(model, disc, ae_tx, d_tx, config.resolution)


def train_step_row(config, reps: int, time_it: bool = True, keep: dict | None = None) -> dict:
    """The stage-1 train step of `config` (its batch size, remat and dtype) on random data.

    `keep`, if given, receives 'step' (the compiled ``step(state, x [B, R, R, 3], lpips_params)
    -> (state, metrics)``, state donated), 'init' and 'model', to train with afterwards.
    """
    model, train_step, init = stage1_parts(config)
    state = random_tree(init, jax.random.PRNGKey(0))
    r, b = config.resolution, config.batch_size
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (b, r, r, 3)), jnp.float32)
    lp = lpips_lib.load_lpips_params()
    res = timed(
        lambda s, x, lp: train_step(s, {"image": x}, lp),
        (state, x, lp),
        reps,
        time_it=time_it,
        donate_state=True,
    )
    if keep is not None:
        keep.update(step=res["compiled"], init=init, model=model)
    what = f"stage-1 train step ({config.variant}{', remat' if config.remat else ''})"
    return row(what, f"{r} px, B={b}", model.dtype, res, b, "img/s")


def bench_train128(reps, dtype_name) -> list[dict]:
    return [train_step_row(stage1_config("cpu128", dtype_name), reps)]


def bench_train512(reps, dtype_name, time_it) -> list[dict]:
    return [
        train_step_row(stage1_config("paper512", dtype_name, remat), reps, time_it=time_it)
        for remat in (False, True)
    ]


def stage2_configs(variant: str, cb_variant: str, dtype_name: str):
    """(stage-2 config, stage-1 config) of two variants at one compute dtype."""
    cb_config = codebook_config.get_config(cb_variant)
    cb_config.compute_dtype = dtype_name
    config = driver_config.get_config(variant)
    config.compute_dtype = dtype_name
    return config, cb_config


def _driver_parts(config, cb_config):
    vq = runs.build_model(cb_config)
    driver = runs.build_driver(config, cb_config)
    r = cb_config.resolution
    vq_params = random_tree(vq.init, jax.random.PRNGKey(1), jnp.zeros((1, r, r, 3)))["params"]
    prior = runs.texture_prior(vq, vq_params, driver)
    return driver, vq, vq_params, prior


def driver_step_row(config, cb_config, reps: int) -> dict:
    """The stage-2 train step of `config` against a random stage-1 model of `cb_config`."""
    driver, vq, vq_params, prior = _driver_parts(config, cb_config)
    tx = drv_trainer.make_optimizer(config)
    r, b = cb_config.resolution, config.batch_size
    init = drv_trainer.make_init(driver, tx)
    state = random_tree(init, jax.random.PRNGKey(0))
    train_step = drv_trainer.make_train_step(driver, vq, config, tx)
    rs = np.random.RandomState(0)
    batch = {
        "image": jnp.asarray(rs.uniform(-1, 1, (b, r, r, 3)), jnp.float32),
        "heatmaps": jnp.asarray(rs.uniform(0, 1, (b, r, r, 7)), jnp.float32),
        "index": jnp.arange(b, dtype=jnp.int32),
    }
    exemplars = {}
    if driver.exemplar:  # a bank of b random feature grids, each frame's exemplar the next one
        shape = (b, *driver.grid, driver.dim)
        exemplars = {
            "features": jnp.asarray(rs.normal(0, 1, shape), jnp.float32),
            "table": (jnp.arange(b, dtype=jnp.int32) + 1) % b,
        }
    args = (state, batch, vq_params, prior, None, exemplars)
    res = timed(train_step, args, reps, donate_state=True)
    what = f"stage-2 train step ({config.variant})"
    return row(what, f"{r} px, B={b}", driver.dtype, res, b, "img/s")


def bench_driver128(reps, dtype_name) -> list[dict]:
    return [driver_step_row(*stage2_configs("cpu128", "cpu128", dtype_name), reps)]


def inference_rows(config, cb_config, reps: int, batches=(8, 1), on_row=None) -> list[dict]:
    """Frames/s of driver + codebook + decoder (random weights) at each batch size.

    ``on_row(row)`` is called after each row (e.g. to record device memory as it grows).
    """
    driver, vq, vq_params, prior = _driver_parts(config, cb_config)
    r = cb_config.resolution
    example = [jnp.zeros(x.shape, x.dtype) for x in runs.driver_inputs(driver)]
    d_params = random_tree(driver.init, jax.random.PRNGKey(2), *example)["params"]
    drive = runs.make_drive(driver, vq)
    rows = []
    for batch in batches:
        rs = np.random.RandomState(0)
        inputs = [jnp.asarray(rs.uniform(0, 1, (batch, r, r, 7)), jnp.float32)]
        if driver.exemplar:
            z_ex = rs.normal(0, 1, (batch, *driver.grid, driver.dim))
            inputs.append(jnp.asarray(z_ex, jnp.float32))
        res = timed(drive, (d_params, vq_params, prior, *inputs), reps)
        what = f"inference: driver+codebook+decoder ({config.variant})"
        rows.append(row(what, f"{r} px, batch {batch}", driver.dtype, res, batch, "frames/s"))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def bench_inference(reps, dtype_name) -> list[dict]:
    rows = []
    for variant in ("cpu128", "paper512"):
        rows += inference_rows(*stage2_configs(variant, variant, dtype_name), reps)
    return rows


def bench_pipeline(dataset: str, reps: int) -> list[dict]:
    from vpgc_jax.data import frames as frames_lib
    from vpgc_jax.data import pipeline

    meta = frames_lib.load_meta(dataset)
    r = int(meta.get("size", 128))
    rows = []
    for stage in ("codebook", "driver"):
        it = iter(
            pipeline.make_dataset(
                dataset, "train", stage=stage, batch_size=4, resolution=r, frames_per_group=1
            )
        )
        next(it)
        n = 10 * reps
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        t = (time.perf_counter() - t0) / n
        res = {"time_s": t, "peak_bytes": None, "compile_s": 0.0}
        rows.append(row(f"input pipeline, stage {stage} (grain, 0 workers)", f"{r} px, B=4",
                        jnp.float32, res, 4, "img/s"))  # fmt: skip
    return rows


def format_table(rows: list[dict], device: str, extra=()) -> str:
    """Markdown table of `row` dicts; `extra`: (header, row -> cell text) columns before device."""
    heads = "".join(f" {h} |" for h, _ in extra)
    lines = [
        "| what | shape | dtype | time (s) | throughput | peak memory (MiB) | compile (s) |"
        f"{heads} device |",
        "|---|---|---|---|---|---|---|" + "---|" * len(extra) + "---|",
    ]
    for r in rows:
        t = "compiled only" if r["time_s"] is None else f"{r['time_s']:.4f}"
        peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:,.0f}"
        cells = "".join(f" {fn(r)} |" for _, fn in extra)
        lines.append(
            f"| {r['what']} | {r['shape']} | {r['dtype']} | {t} | {r['throughput'] or ''} "
            f"| {peak} | {r['compile_s']:.1f} |{cells} {device} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="auto", help="compute dtype: auto|float32|bfloat16")
    ap.add_argument("--only", default=",".join(GROUPS), help=f"comma list of {GROUPS}")
    ap.add_argument("--dataset", default="", help="a data_prep dataset for the pipeline rows")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--time-512", action="store_true", help="time 512 px train steps on CPU too")
    ap.add_argument("--no-append", action="store_true", help=f"do not append to {RESULTS}")
    args = ap.parse_args(argv)
    groups = [g for g in args.only.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        ap.error(f"unknown groups {unknown}; known: {GROUPS}")
    dtype_name = jnp.dtype(precision.compute_dtype(args.dtype)).name
    on_cpu = jax.default_backend() == "cpu"
    device = device_name()
    print(f"jax {jax.__version__}, {device}, compute dtype {dtype_name}", flush=True)

    rows = []
    for group in groups:
        t0 = time.perf_counter()
        if group == "lookup":
            new = bench_lookup(args.reps)
        elif group == "forward512":
            new = bench_forward512(args.reps, dtype_name)
        elif group == "train128":
            new = bench_train128(args.reps, dtype_name)
        elif group == "train512":
            new = bench_train512(args.reps, dtype_name, time_it=args.time_512 or not on_cpu)
        elif group == "driver128":
            new = bench_driver128(args.reps, dtype_name)
        elif group == "inference":
            new = bench_inference(args.reps, dtype_name)
        else:
            if not args.dataset:
                print("pipeline: skipped (no --dataset)", flush=True)
                continue
            new = bench_pipeline(args.dataset, args.reps)
        rows += new
        for r in new:
            print(format_table([r], device).splitlines()[-1], flush=True)
        print(f"  ({group}: {time.perf_counter() - t0:.0f} s)", flush=True)

    table = format_table(rows, device)
    print("\n" + table)
    if not args.no_append:
        command = "python benchmarks/run_all.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        date = datetime.date.today().isoformat()
        with open(RESULTS, "a") as f:
            f.write(
                f"\n### `run_all.py`, {date}, {device}, jax {jax.__version__}, "
                f"{platform.machine()}\n\n`{command.strip()}`\n\n{table}\n"
            )
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
