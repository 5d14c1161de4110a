"""The GPU suite: vpgc_jax measured on one accelerator by one command in at most 9 minutes.

  python benchmarks/gpu_suite.py OUT_DIR [--tiny] [--data DIR] [--budget-s 540] [--only a,b]
      [--train-memory-gib 40] [--peak-tflops T] [--run-s S] [--reps N] [--budget-scale X]

On a GPU machine without network it runs through `bash benchmarks/gpu_suite.sh OUT_DIR`;
`benchmarks/README.md` says what each section measures and how to prepare the carry. It writes
OUT_DIR/gpu_suite.md (tables), gpu_suite.json (every number) and gpu_suite.log, the first two
rewritten after every section, so a crash or a kill leaves the tables of what finished.

Sections (`SECTIONS`): the lookup formulations at paper shapes; paper512 inference (driver +
codebook + decoder) at batch 1, 8, 32 in bfloat16 and float32; the stage-2 train step; the
stage-1 train step at batch 4 and the largest batch in a memory budget, remat off and on, with
MFU; then a short real 512 px stage-1 training run with the batch-4 executable on the carried
clip. Each runs in its own process (a crash or a hang takes no other section with it) within its
budget, the last one with all that is left: a section that would overrun the total is skipped
and recorded; inside one, a row estimated not to fit is skipped; a section still running GRACE_S
after its budget is stopped, keeping the rows it finished. ``--tiny``: every section at 32 px on
the CPU, compiled without XLA's backend optimisations (tests/test_gpu_suite.py).
"""

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# ==================================================================================================
# Library interface: every import of vpgc_jax internals and every config field the suite touches
# is in this section (the measuring helpers and model builders come from benchmarks/run_all.py).
# ==================================================================================================
import gpu_carry  # noqa: E402
import gpu_report  # noqa: E402
import run_all  # noqa: E402

from configs import codebook as codebook_config  # noqa: E402
from eval.metrics import thumbnail_baseline  # noqa: E402  (uint8 [B,R,R,3], side) -> uint8
from vpgc_jax import images, precision, runs  # noqa: E402
from vpgc_jax import metrics as vpgc_metrics  # noqa: E402
from vpgc_jax.data.frames import evenly_spaced  # noqa: E402
from vpgc_jax.losses import lpips as lpips_lib  # noqa: E402

VARIANT = "paper512"
make_reconstruct = runs.make_reconstruct  # (model) -> reconstruct(params, x [B,R,R,3])


def tiny_stage1(c):
    """--tiny: 32 px, one downsampling to the paper's 16x16 grid, K_c = 8, r = 2 (as the tests)."""
    c.resolution = 32
    c.model.encoder.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    c.model.encoder.update(z_channels=16)
    c.model.embed_dim = 16
    c.model.codebook.update(K_c=8, r=2)
    c.disc.ndf = 8
    return c


def tiny_stage2(c):
    """--tiny: the driver for `tiny_stage1` (one downsampling, one transformer layer)."""
    c.model.encoder.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    c.model.transformer.update(depth=1, heads=2, dim_head=8, mlp_dim=32)
    return c


def auto_dtype() -> str:
    """The driver's 'auto' compute dtype on this backend ('bfloat16' on GPU, 'float32' on CPU).

    The suite sets it explicitly for both stages: stage-1 rows measure a bfloat16 autoencoder,
    which 'auto' keeps in float32 for fidelity (`vpgc_jax.precision`).
    """
    return jnp.dtype(precision.compute_dtype("auto")).name


def stage1_config(tiny: bool, remat: bool, batch: int):
    """paper512 (or its --tiny shrink) at the 'auto' dtype, `batch` frames a step.

    The GAN schedule stays the config's (disc_start 10k; --tiny: 2): the step computes the GAN
    and LPIPS terms in every step and the schedule only scales them, so the timing is that of
    the full step and the batch-4 executable also trains the short run.
    """
    config = codebook_config.get_config(VARIANT)
    config.compute_dtype = auto_dtype()
    config.remat = remat
    config.batch_size = batch
    if tiny:
        config.loss.disc_start = 2
    return tiny_stage1(config) if tiny else config


def stage2_configs(tiny: bool, dtype_name: str):
    """(stage-2 config, stage-1 config) of paper512 (or its --tiny shrink) at `dtype_name`."""
    config, cb_config = run_all.stage2_configs(VARIANT, VARIANT, dtype_name)
    return (tiny_stage2(config), tiny_stage1(cb_config)) if tiny else (config, cb_config)


def run_settings(config) -> dict:
    """The training run's settings worth recording."""
    return {
        "variant": config.variant,
        "resolution": config.resolution,
        "batch_size": config.batch_size,
        "frames_per_group": config.frames_per_group,
        "lr": config.optim.lr,
        "disc_start": config.loss.disc_start,
        "compute_dtype": config.compute_dtype,
    }


# ==================================================================================================

# Dense bf16 peak of the chips the suite knows (NVIDIA datasheets, SXM parts); --peak-tflops else.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
GRACE_S = 20.0  # a section process still running this long past its budget is stopped
ANCHOR = "paper (Wang et al. 2023, Sec. 4): 29 fps at 5.6 GB on one A100, 512 px"
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0"  # --tiny: ~40 % less compile time


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    budget_s: float  # on the GPU; the last section: the least it runs with (it gets what is left)
    tiny_s: float  # --tiny, on 2 idle CPU cores
    title: str


SECTIONS = (
    Section("lookup", 30, 30, "Grid lookup formulations, forward + backward (float32)"),
    Section("inference_bfloat16", 60, 30, "Inference: driver + codebook + decoder, bfloat16"),
    Section("inference_float32", 50, 30, "Inference: driver + codebook + decoder, float32"),
    Section("stage2", 40, 30, "Stage-2 train step"),
    Section("stage1", 300, 90, "Stage-1 train step, GAN and LPIPS on, and a short training run"),
)
NAMES = tuple(s.name for s in SECTIONS)
RUN_RESERVE_S = (150.0, 25.0)  # (GPU, --tiny): stage1's rows leave this much for the run


# ----- one section, in its own process ------------------------------------------------------------


class OutOfTime(Exception):
    """The next row of a section would not finish before its deadline."""


class Context:
    """A section's settings, clock and results; every change is written to its scratch file."""

    def __init__(self, name: str, args, deadline: float):
        self.name, self.args, self.deadline, self.tiny = name, args, deadline, args.tiny
        self.reps = args.reps or (1 if args.tiny else 10)
        self.path = os.path.join(args.scratch, f"{name}.json")
        self.result = {"rows": [], "skipped": [], "notes": [], "curve": [], **environment(args)}
        self.save()

    def left(self, reserve: float = 0.0) -> float:
        return self.deadline - reserve - time.time()

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.result, f, indent=1, default=float)
        os.replace(tmp, self.path)

    def add(self, row: dict, next_s: float | None = None) -> None:
        """Records `row`; raises OutOfTime when a next row of ~`next_s` seconds would not fit."""
        self.result["rows"].append(row)
        self.save()
        print(run_all.format_table([row], self.result["device"]).splitlines()[-1], flush=True)
        if next_s is not None and next_s > self.left():
            raise OutOfTime(f"the next row needs ~{next_s:.0f} s, {self.left():.0f} s left")

    def skip(self, what: str, why: str) -> None:
        self.result["skipped"].append({"what": what, "why": why})
        self.save()
        print(f"skipped: {what}: {why}", flush=True)

    def note(self, text: str) -> None:
        self.result["notes"].append(text)
        self.save()
        print(text, flush=True)


def environment(args) -> dict:
    """Device, versions, device memory and the peak FLOP rate used for MFU."""
    d = jax.devices()[0]
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in d.device_kind), None)
    return {
        "device": run_all.device_name(),
        "device_kind": d.device_kind,
        "jax": jax.__version__,
        "device_memory_bytes": (d.memory_stats() or {}).get("bytes_limit"),
        "peak_tflops": args.peak_tflops or peak,
    }


def device_peak_bytes() -> int | None:
    """The device allocator's peak bytes in use in this process (None where not reported: CPU)."""
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def _next_s(row: dict, reps: int, growth: float) -> float:
    """Seconds a next row like `row` may take: its compile again and `growth` x its calls."""
    return 1.3 * row["compile_s"] + (reps + 1) * (row["time_s"] or 0) * growth


def section_lookup(ctx: Context) -> None:
    b, codes, c = (1, 16, 64) if ctx.tiny else (4, 256, 256)
    run_all.bench_lookup(
        ctx.reps, b=b, codes=codes, c=c, on_row=lambda r: ctx.add(r, _next_s(r, ctx.reps, 30))
    )


def section_inference(ctx: Context, dtype_name: str) -> None:
    ctx.note(f"anchor: {ANCHOR}")

    def on_row(row):
        row["device_peak_bytes"] = device_peak_bytes()
        ctx.add(row, _next_s(row, ctx.reps, 8))

    batches = (1, 2) if ctx.tiny else (1, 8, 32)
    run_all.inference_rows(*stage2_configs(ctx.tiny, dtype_name), ctx.reps, batches, on_row)


def section_stage2(ctx: Context) -> None:
    ctx.add(run_all.driver_step_row(*stage2_configs(ctx.tiny, auto_dtype()), ctx.reps))


def _train_row(ctx: Context, remat: bool, batch: int, base: dict | None, keep=None) -> dict:
    """Compiles and times the stage-1 step at `batch`; MFU from `base`'s FLOPs per image."""
    t0 = time.perf_counter()
    row = run_all.train_step_row(stage1_config(ctx.tiny, remat, batch), ctx.reps, keep=keep)
    row.update(batch=batch, remat=remat, wall_s=time.perf_counter() - t0)
    row["fits_budget"] = (row["peak_bytes"] or math.inf) <= ctx.args.train_memory_gib * 2**30
    base = base or row
    per_image = base["flops"] / base["batch"] if base.get("flops") else None
    peak = ctx.result["peak_tflops"]
    row["model_tflop_per_step"] = per_image * batch / 1e12 if per_image else None
    if per_image and peak and row["items_per_s"]:
        row["mfu"] = per_image * row["items_per_s"] / (peak * 1e12)
    return row


def _largest_batch(points: list[tuple[int, int]], budget: float, cap: int) -> int:
    """The largest multiple of 4 predicted to fit `budget` bytes from (batch, bytes) points.

    One point: bytes proportional to batch (an over-estimate: parameters and optimizer state do
    not grow with it); two or more: the line through the last two.
    """
    (b0, m0), (b1, m1) = ((0, 0), points[0]) if len(points) == 1 else points[-2:]
    slope = (m1 - m0) / (b1 - b0)
    batch = int((budget - (m1 - slope * b1)) / slope) if slope > 0 else cap
    return max(4, min(cap, batch - batch % 4))


def section_stage1(ctx: Context) -> None:
    """Batch 4 and the largest batch in the memory budget, remat off then on; then the run."""
    # XLA's RngBitGenerator instead of threefry for every key of this process: the run's model
    # initializers compile in less than half the time (measured on CPU); same distributions.
    try:
        jax.config.update("jax_default_prng_impl", "rbg")
    except (AttributeError, ValueError) as e:  # a jax without the option: threefry then
        ctx.note(f"rbg PRNG unavailable ({e})")
    budget, cap = ctx.args.train_memory_gib * 2**30, (8 if ctx.tiny else 512)
    reserve = RUN_RESERVE_S[ctx.tiny]
    ctx.note(f"memory budget of the largest batch: {ctx.args.train_memory_gib:g} GiB")
    keep = {}
    base = _train_row(ctx, False, 4, None, keep)
    ctx.add(base)
    try:
        _largest_rows(ctx, False, base, base, budget, cap, reserve)
        if not ctx.tiny:  # --tiny: remat off only (each row is a long compile on the CPU)
            need, left = _next_s(base, ctx.reps, 1.5), ctx.left(reserve)
            if need > left:
                raise OutOfTime(f"the remat rows need ~{need:.0f} s, {left:.0f} s left")
            first = _train_row(ctx, True, 4, base)
            ctx.add(first)
            _largest_rows(ctx, True, first, base, budget, cap, reserve)
    except OutOfTime as e:
        ctx.skip("the remaining train-step rows", str(e))
    train_run(ctx, stage1_config(ctx.tiny, False, 4), keep)


def _largest_rows(ctx, remat, first, base, budget, cap, reserve) -> None:
    """Times up to two guesses of the largest batch that fits `budget`; marks the largest."""
    if first["peak_bytes"] is None:
        ctx.skip(f"largest batch, remat={remat}", "no XLA memory analysis on this backend")
        return
    points, best = [(4, first["peak_bytes"])], first
    for _ in range(2):  # proportional, then the line through the last two rows
        batch, last = _largest_batch(points, budget, cap), points[-1][0]
        if batch <= last or (len(points) > 1 and batch < 1.25 * last):
            break  # no batch worth its compile
        need = _next_s(first, ctx.reps, batch / 4)
        if need > ctx.left(reserve):
            ctx.skip(
                f"batch {batch}, remat={remat}", f"~{need:.0f} s, {ctx.left(reserve):.0f} left"
            )
            break
        row = _train_row(ctx, remat, batch, base)
        ctx.add(row)
        points.append((batch, row["peak_bytes"]))
        best = row if row["fits_budget"] else best
    best["largest"] = True
    ctx.save()


def train_run(ctx: Context, config, keep: dict) -> None:
    """Trains stage 1 with the kept batch-4 executable until the deadline; scores every ~20 s."""
    r, b, g = config.resolution, config.batch_size, config.frames_per_group
    ctx.result["settings"] = run_settings(config)
    t0 = time.perf_counter()
    data = gpu_carry.read_dataset(ctx.args.data, r)
    ctx.note(
        f"run data: {len(data['train'])} train + {len(data['test'])} test frames at {r} px from "
        f"{ctx.args.data}, decoded in {time.perf_counter() - t0:.1f} s"
    )
    reconstruct = make_reconstruct(keep["model"])
    lpips_params = lpips_lib.load_lpips_params()
    rng = np.random.default_rng(config.seed)

    def batch() -> np.ndarray:
        """Random groups of `g` consecutive frames as float32 [B, R, R, 3] in [-1, 1]."""
        groups = rng.integers(0, len(data["train"]) // g, b // g)
        idx = (groups[:, None] * g + np.arange(g)).reshape(-1)  # [B]
        return data["train"][idx].astype(np.float32) / 127.5 - 1.0

    def scores(params, x):
        y = reconstruct(params, x)
        return vpgc_metrics.psnr(x, y), lpips_lib.lpips(lpips_params, x, y)

    t0 = time.perf_counter()
    state = jax.jit(keep["init"])(jax.random.PRNGKey(config.seed))
    p_scores, p_lpips = jax.jit(scores), jax.jit(lpips_lib.lpips)
    ctx.note(f"run init compiled and run in {time.perf_counter() - t0:.1f} s")
    eval_batch = 4 if ctx.tiny else 16
    n_eval = min(8 if ctx.tiny else 64, len(data["test"])) // eval_batch * eval_batch
    test = data["test"][evenly_spaced(len(data["test"]), n_eval)].astype(np.float32) / 127.5 - 1

    def evaluate(outputs) -> dict:
        """Mean PSNR (dB) and LPIPS over the test frames of `outputs(x) -> (psnr, lpips)`."""
        got = [outputs(test[i : i + eval_batch]) for i in range(0, len(test), eval_batch)]
        return {k: float(np.mean([s[i] for s in got])) for i, k in enumerate(("psnr", "lpips"))}

    thumb = min(32, r // 4)  # the trainer's 32 px baseline; 8 px at --tiny's 32 px

    def baseline(x):
        y = images.to_signed(thumbnail_baseline(images.to_uint8(x), thumb))
        return vpgc_metrics.psnr(x, y), p_lpips(lpips_params, x, y)

    ctx.result["baseline"] = {"what": f"{thumb}x{thumb} thumbnail", **evaluate(baseline)}
    run_s = ctx.args.run_s or (4.0 if ctx.tiny else math.inf)
    eval_every, chunk = (1.0, 1) if ctx.tiny else (20.0, 10)
    t_run, train_s, step_n, loss, eval_s = time.perf_counter(), 0.0, 0, math.nan, 0.0
    while True:
        t0 = time.perf_counter()
        point = {"step": step_n, "images": step_n * b, "train_s": round(train_s, 2), "loss": loss}
        point.update(evaluate(functools.partial(p_scores, state.params)))
        point["wall_s"] = round(time.perf_counter() - t_run, 2)
        ctx.result["curve"].append(point)
        ctx.save()
        print(f"train run: {point}", flush=True)
        eval_s = max(eval_s, time.perf_counter() - t0)
        left = min(run_s - train_s, ctx.left(2 * eval_s + 5))
        if left <= 0 or (step_n and not math.isfinite(loss)):
            break
        t0, target = time.perf_counter(), min(eval_every, left)
        while time.perf_counter() - t0 < target and (math.isfinite(loss) or not step_n):
            for _ in range(chunk):
                state, metrics = keep["step"](state, batch(), lpips_params)
            step_n += chunk
            loss = float(metrics["loss"])  # waits for the step
        train_s += time.perf_counter() - t0
    if step_n and not math.isfinite(loss):
        ctx.note(f"non-finite loss at step {step_n}: stopped")
    ctx.result["steps_per_s"] = step_n / train_s if train_s else None
    ctx.note(f"trained {step_n} steps ({step_n * b} images) in {train_s:.1f} s")


SECTION_FNS = {
    "lookup": section_lookup,
    "inference_bfloat16": lambda ctx: section_inference(ctx, "bfloat16"),
    "inference_float32": lambda ctx: section_inference(ctx, "float32"),
    "stage2": section_stage2,
    "stage1": section_stage1,
}


def run_section(args) -> int:
    """The child: runs one section until its deadline, results in ``args.scratch/NAME.json``."""
    ctx = Context(args.section, args, args.section_deadline)
    try:
        SECTION_FNS[args.section](ctx)
    except OutOfTime as e:
        ctx.skip("the remaining rows", str(e))
    return 0


# ----- the suite: sections in child processes, outputs rewritten after each ----------------------


def spawn(cmd: list[str], timeout: float, log, env: dict) -> tuple[str, list[str]]:
    """Runs `cmd`, copying its output to stdout and `log`; (status, last lines of output)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    tail: list[str] = []

    def pump():
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            log.flush()
            tail[:] = (tail + [line.rstrip()])[-15:]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status = "ok" if proc.wait(timeout=timeout) == 0 else "failed"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = "stopped"
    reader.join(timeout=5)
    return status, tail


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_command(args, name: str, deadline: float, scratch: str) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), args.out, "--section", name]
    cmd += ["--section-deadline", repr(deadline), "--scratch", scratch, "--data", args.data]
    cmd += ["--train-memory-gib", repr(args.train_memory_gib), "--reps", str(args.reps)]
    for flag, value in (("--peak-tflops", args.peak_tflops), ("--run-s", args.run_s)):
        cmd += [flag, repr(value)] if value is not None else []
    return cmd + (["--tiny"] if args.tiny else [])


def run_suite(args) -> int:
    """Runs the selected sections in order within ``args.budget_s``; writes the three outputs."""
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    deadline = start + args.budget_s
    report = {
        "command": "python benchmarks/gpu_suite.py " + " ".join(args.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "sections": {},
    }
    scratch = tempfile.mkdtemp(prefix="gpu_suite_")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.tiny:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
    sections = [s for s in SECTIONS if s.name in args.only]
    least = {s.name: (s.tiny_s if args.tiny else s.budget_s) * args.budget_scale for s in sections}
    with open(os.path.join(args.out, "gpu_suite.log"), "w") as log:
        for section in sections:
            left = deadline - time.time()
            last = (
                section is sections[-1]
            )  # it takes all that is left; the others leave it its least
            budget = left - 5 if last else least[section.name]
            reserve = 0.0 if last else least[sections[-1].name]
            entry = {"title": section.title, "budget_s": round(budget, 1)}
            if left - reserve < least[section.name]:
                why = f"needs {least[section.name]:.0f} s, {left:.0f} s left of the total"
                entry.update(status="skipped", seconds=0, error=why + f" ({reserve:.0f} reserved)")
                print(f"== {section.name}: skipped: {entry['error']}", flush=True)
            else:
                t0, cpu0 = time.time(), _children_cpu_s()
                cmd = child_command(args, section.name, t0 + budget, scratch)
                print(f"== {section.name} (budget {budget:.0f} s)", flush=True)
                log.write(f"== {section.name} (budget {budget:.0f} s)\n")
                status, tail = spawn(cmd, budget + GRACE_S, log, env)
                entry.update(status=status, seconds=round(time.time() - t0, 1))
                entry["cpu_s"] = round(_children_cpu_s() - cpu0, 1)
                if status != "ok":
                    entry["error"] = "\n".join(tail)
                path = os.path.join(scratch, f"{section.name}.json")
                if os.path.isfile(path):
                    with open(path) as f:
                        entry.update(json.load(f))
            report["sections"][section.name] = entry
            report["elapsed_s"] = round(time.time() - start, 1)
            gpu_report.write_outputs(args.out, report)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {args.out}/gpu_suite.md, .json, .log in {time.time() - start:.0f} s", flush=True)
    return 0 if all(e["status"] == "ok" for e in report["sections"].values()) else 1


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output directory")
    ap.add_argument("--tiny", action="store_true", help="small shapes, for the CPU")
    ap.add_argument("--data", default=os.path.join(ROOT, gpu_carry.CARRY, "data"))
    ap.add_argument("--budget-s", type=float, default=540.0, help="total wall-time budget")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="x every section's budget")
    ap.add_argument("--only", default=",".join(NAMES), help=f"comma list of {NAMES}")
    ap.add_argument("--train-memory-gib", type=float, default=None, help="largest-batch budget")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: chip)")
    ap.add_argument("--reps", type=int, default=0, help="timed calls per row (0: 10, tiny 1)")
    ap.add_argument("--run-s", type=float, default=None, help="training seconds at most")
    ap.add_argument("--section", choices=NAMES, help=argparse.SUPPRESS)
    ap.add_argument("--section-deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    args.only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(args.only) - set(NAMES))
    if unknown:
        ap.error(f"unknown sections {unknown}; known: {NAMES}")
    if args.train_memory_gib is None:
        args.train_memory_gib = 0.5 if args.tiny else 40.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_section(args) if args.section else run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
