"""What `eval.evaluate` writes: report.md, its PNG figures, and the files' atomic placement.

* `read_convergence`: held-out PSNR / LPIPS against training step from a run's metrics.jsonl (the
  records with ``eval_psnr`` that `vpgc_jax.writers.MetricWriter` wrote during training);
* `convergence_plot`: those series as a two-panel line plot (Table 4 of Wang et al. 2023 as a
  figure), drawn with PIL (matplotlib is not a dependency of this project);
* `example_strip`: a labelled strip of frames, one column per method;
* `markdown`: report.md from the metrics.json content (Table 1 layout, Table 4 layout);
* `json_safe`, `write_text`: strict JSON and atomic files (the finished report directory is put
  in place by `vpgc_jax.outputs.move_into_place`).
"""

import argparse
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vpgc_jax import images, runs, writers

# tab10 colours, one per run.
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
# Table 4 shows at most this many step columns (evenly spaced, last included); the plot has all.
MAX_TABLE_STEPS = 8
# Frames smaller than this are enlarged (nearest neighbour) in the example strip.
MIN_STRIP_SIDE = 128


def read_convergence(run_dir: str) -> dict[str, list]:
    """Held-out metrics against training step and wall time of one run, from its metrics.jsonl.

    Args:
      run_dir: a run directory (stage 1 or 2).

    Returns:
      {'step': [int], 'minutes': [float], 'eval_psnr': [dB], 'eval_lpips': [float or None],
      'eval_mouth_lpips': [float or None], 'eval_num_frames': [int or None]}, sorted by step.
      'minutes' is the run's wall time up to that step (`elapsed_seconds`). A step logged twice (a
      resumed run) keeps its last record; records whose eval_psnr is null (non-finite) are
      skipped. Empty lists when the run logged no evaluation.
    """
    records = writers.read_metrics(run_dir)
    by_step = {}
    for record in records:
        if record.get("eval_psnr") is not None:
            by_step[int(record["step"])] = record
    steps = sorted(by_step)
    n = [by_step[s].get("eval_num_frames") for s in steps]
    seconds = elapsed_seconds(records)
    return {
        "step": steps,
        "minutes": [seconds(s) / 60 for s in steps],
        "eval_psnr": [float(by_step[s]["eval_psnr"]) for s in steps],
        "eval_lpips": [by_step[s].get("eval_lpips") for s in steps],
        "eval_mouth_lpips": [by_step[s].get("eval_mouth_lpips") for s in steps],
        "eval_num_frames": [None if v is None else int(v) for v in n],
    }


def elapsed_seconds(records: list[dict]):
    """step -> the run's wall time (s) up to that step, from its logged throughput.

    Each log record's ``steps_per_sec`` covers the wall time since the previous log (training,
    samples, evaluations and checkpoints in between: `vpgc_jax.trainers.common.Throughput`), so
    the time to a step is the sum of (steps in each interval) / steps_per_sec up to the last log
    at or before it. A resumed run's records continue the sum (the restart itself is not counted).
    """
    logged = sorted(
        {int(r["step"]): r["steps_per_sec"] for r in records if r.get("steps_per_sec")}.items()
    )
    steps, total, prev = [0], [0.0], 0
    for step, rate in logged:
        total.append(total[-1] + (step - prev) / rate)
        steps.append(step)
        prev = step

    def at(step: int) -> float:
        return total[int(np.searchsorted(steps, step, side="right")) - 1]

    return at


def driver_offset_minutes(run_dir: str) -> float:
    """A stage-2 run's stage-1 training time (min) up to the step it trains against; 0 otherwise.

    For time-to-quality plots where a driver's clock starts when its stage 1 started.
    """
    try:
        config = runs.load_run_config(run_dir)
    except (FileNotFoundError, ValueError):
        return 0.0
    cb = config.get("codebook_workdir")
    if config.get("stage") != "driver" or not cb or not os.path.isdir(cb):
        return 0.0
    return elapsed_seconds(writers.read_metrics(cb))(int(config.get("codebook_step", 0))) / 60


def run_labels(dirs: list[str]) -> list[str]:
    """Short distinct names for run directories: basenames, else paths below their common root."""
    paths = [os.path.abspath(d) for d in dirs]
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) < len(names) and len(set(paths)) == len(paths):
        root = os.path.commonpath(paths)
        names = [os.path.relpath(p, root) for p in paths]
    return [n if names.count(n) == 1 else f"{n} #{k + 1}" for k, n in enumerate(names)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow built without FreeType: the bitmap font.
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> np.ndarray:
    """About `n` round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten)."""
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1, round(step))
    return np.arange(math.floor(lo / step), math.ceil(hi / step) + 1) * step


def _panel(draw, box, series, key: str, title: str, font, x_key="step", x_label="training step"):
    """One axes box: `key` of every run in `series` against `x_key`."""
    x0, y0, x1, y1 = box
    points = [
        (s, v)
        for run in series.values()
        for s, v in zip(run[x_key], run[key], strict=True)
        if v is not None
    ]
    draw.text((x0, y0 - 22), title, fill="black", font=font)
    if not points:
        draw.rectangle(box, outline="black")
        draw.text((x0 + 10, (y0 + y1) // 2), "no evaluations logged", fill="grey", font=font)
        return
    xs, ys = np.array(points, np.float64).T
    pad_x = 0.05 * (xs.max() - xs.min()) or 0.5
    pad_y = 0.08 * (ys.max() - ys.min()) or max(0.05 * abs(ys.max()), 0.01)
    lo_x = xs.min() - pad_x if xs.min() < 0 else max(0.0, xs.min() - pad_x)  # steps start at 0
    xt = _ticks(lo_x, xs.max() + pad_x, integer=x_key == "step")
    yt = _ticks(ys.min() - pad_y, ys.max() + pad_y)
    lo_x, hi_x, lo_y, hi_y = xt[0], xt[-1], yt[0], yt[-1]

    def to_px(x, y):
        return (
            x0 + (x - lo_x) / (hi_x - lo_x) * (x1 - x0),
            y1 - (y - lo_y) / (hi_y - lo_y) * (y1 - y0),
        )

    for t in xt:
        px = to_px(t, lo_y)[0]
        draw.line([(px, y1), (px, y1 + 4)], fill="black")
        draw.text((px, y1 + 6), f"{t:g}", fill="black", font=font, anchor="ma")
    for t in yt:
        py = to_px(lo_x, t)[1]
        draw.line([(x0 - 4, py), (x0, py)], fill="black")
        draw.line([(x0 + 1, py), (x1 - 1, py)], fill=(230, 230, 230))
        draw.text((x0 - 6, py), f"{t:g}", fill="black", font=font, anchor="rm")
    draw.rectangle(box, outline="black")
    draw.text(((x0 + x1) // 2, y1 + 24), x_label, fill="black", font=font, anchor="ma")
    for colour, run in zip(COLOURS * 4, series.values(), strict=False):
        pts = [to_px(s, v) for s, v in zip(run[x_key], run[key], strict=True) if v is not None]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for px, py in pts:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)


def convergence_plot(series: dict[str, dict], path: str) -> None:
    """Writes a PNG of held-out PSNR (left) and LPIPS (right) against training step.

    Args:
      series: {run label: `read_convergence` output}.
      path: the .png to write (atomically).
    """
    panels = (("eval_psnr", "held-out PSNR (dB), higher is better"),)
    panels += (("eval_lpips", "held-out LPIPS, lower is better"),)
    _plot(series, path, panels, "step", "training step")


def time_to_quality_plot(series: dict[str, dict], path: str) -> None:
    """Writes a PNG of held-out LPIPS, whole frame (left) and mouth (right), against wall time.

    Args:
      series: {run label: `read_convergence` output, its 'minutes' shifted by
        `driver_offset_minutes` for a driver}.
      path: the .png to write (atomically).
    """
    panels = (("eval_lpips", "held-out LPIPS, whole frame (lower is better)"),)
    panels += (("eval_mouth_lpips", "held-out LPIPS, mouth box (lower is better)"),)
    _plot(series, path, panels, "minutes", "wall time (min; a driver's from its stage 1's start)")


def _plot(series, path, panels, x_key: str, x_label: str) -> None:
    font = _font(14)
    panel_w, panel_h, margin = 440, 300, 70
    legend_h = 24 * len(series) + 10
    width = 2 * (panel_w + margin) + margin // 2
    height = panel_h + 2 * margin + legend_h
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for k, (key, title) in enumerate(panels):
        x0 = margin + k * (panel_w + margin)
        box = (x0, margin - 20, x0 + panel_w, margin - 20 + panel_h)
        _panel(draw, box, series, key, title, font, x_key, x_label)
    y = panel_h + margin + 40
    for colour, label in zip(COLOURS * 4, series, strict=False):
        draw.line([(margin, y + 8), (margin + 30, y + 8)], fill=colour, width=3)
        draw.text((margin + 40, y), label, fill="black", font=font)
        y += 24
    writers.save_png(path, np.asarray(image))


def example_strip(columns: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Frames side by side, one labelled column per method, one row per frame.

    Args:
      columns: (label, uint8 [N, R, R, 3]) pairs, the same N and R for all.

    Returns:
      uint8 [H, W, 3]; frames under 128 px are enlarged by an integer factor (nearest neighbour).
    """
    r = columns[0][1].shape[1]
    k = max(1, math.ceil(MIN_STRIP_SIDE / r))
    frames = [np.repeat(np.repeat(f, k, axis=1), k, axis=2) for _, f in columns]
    grid = writers.image_grid([images.to_signed(f) for f in frames])
    font = _font(14)
    header = Image.new("RGB", (grid.shape[1], 24), "white")
    draw = ImageDraw.Draw(header)
    for j, (label, _) in enumerate(columns):
        centre = 2 + j * (r * k + 2) + r * k // 2
        draw.text((centre, 4), label, fill="black", font=font, anchor="ma")
    return np.concatenate([np.asarray(header), grid])


def _fmt(v, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def table1(result: dict) -> list[str]:
    """Markdown lines of Table 1's layout: methods against PSNR, SSIM, LPIPS, F-LMD."""
    gt_found = result["dataset"]["ground_truth_face_found"]
    header = ["Method", "PSNR ↑", "SSIM ↑", "LPIPS ↓", "F-LMD ↓", "face found"]
    rows = [["Ground truth", "N/A", "1.000", "0", "0", f"{gt_found:.0%}"]]
    for row in result["rows"].values():
        rows.append(
            [
                row["label"],
                _fmt(row["psnr"], 2),
                _fmt(row["ssim"], 3),
                _fmt(row["lpips"], 3),
                _fmt(row["flmd"], 2),
                f"{row['face_found']:.0%}",
            ]
        )
    return _table(header, rows)


def region_table(result: dict) -> list[str]:
    """Markdown lines of the mouth and eye region scores per method (`eval.regions`)."""
    header = ["Method"]
    for region in ("mouth", "eyes"):
        header += [f"{region} PSNR ↑", f"{region} LPIPS ↓", f"{region} sharpness (1 = real)"]
    rows = []
    for row in result["rows"].values():
        if "mouth_psnr" not in row:
            continue
        cells = [row["label"]]
        for region in ("mouth", "eyes"):
            cells += [
                _fmt(row[f"{region}_psnr"], 2),
                _fmt(row[f"{region}_lpips"], 3),
                _fmt(row[f"{region}_sharpness"], 2),
            ]
        rows.append(cells)
    return _table(header, rows) if rows else []


def follow_table(result: dict) -> list[str]:
    """Markdown lines of the cross-reenactment follow scores per driving clip (`eval.follow`)."""
    header = [
        "Driving clip",
        "Method",
        "mouth LMD ↓",
        "mouth-opening r ↑",
        "opening range (1 = driver's)",
        "face found",
    ]
    rows = []
    for name, clip in (result.get("follow") or {}).items():
        for key, label in (
            ("model", "VPGC cross-reenactment"),
            ("retrieval", "Baseline: retrieval"),
        ):
            sc = clip[key]
            rows.append(
                [
                    f"{name} ({clip['frames']} frames, driving opening sd "
                    f"{_fmt(clip['driving_opening_px'], 1)} px)",
                    label,
                    _fmt(sc["mouth_lmd"], 2),
                    _fmt(sc["opening_corr"], 3),
                    _fmt(sc["opening_range"], 2),
                    f"{sc['face_found']:.0%}" if sc["face_found"] is not None else "–",
                ]
            )
    return _table(header, rows) if rows else []


def audio_table(result: dict) -> list[str]:
    """Markdown lines of the audio model's mouth scores against its baselines (`eval.audio`)."""
    audio = result.get("audio")
    if not audio:
        return []
    header = ["Method", "mouth LMD ↓", "mouth-opening r ↑", "opening range (1 = real)", "flicker"]
    rows = []
    for key, label in (
        ("model", f"Audio model (step {audio['step']})"),
        ("nearest_audio", "Baseline: training frame with the nearest audio"),
        ("mean_mouth", "Baseline: mean mouth"),
    ):
        sc = audio[key]
        rows.append(
            [
                label,
                _fmt(sc["mouth_lmd"], 2),
                _fmt(sc["opening_corr"], 3),
                _fmt(sc["opening_range"], 2),
                _fmt(sc["flicker"], 2),
            ]
        )
    return _table(header, rows)


def _table_steps(series: dict[str, dict]) -> list[int]:
    steps = sorted({s for run in series.values() for s in run["step"]})
    if len(steps) <= MAX_TABLE_STEPS:
        return steps
    pick = np.linspace(0, len(steps) - 1, MAX_TABLE_STEPS).round().astype(int)
    return [steps[i] for i in pick]


def table4(series: dict[str, dict], key: str, digits: int) -> list[str]:
    """Markdown lines of Table 4's layout: one row per run, one column per training step."""
    steps = _table_steps(series)
    rows = []
    for label, run in series.items():
        values = dict(zip(run["step"], run[key], strict=True))
        rows.append([label] + [_fmt(values.get(s), digits) if s in values else "–" for s in steps])
    return _table(["Stage-1 run"] + [str(s) for s in steps], rows)


def markdown(result: dict) -> str:
    """report.md from the metrics.json content of `eval.evaluate.evaluate`."""
    ds, runs, files = result["dataset"], result["runs"], result["files"]
    r, n = result["resolution"], ds["evaluated_frames"]
    first = "" if n == ds["test_frames"] else f" (the first {n} evaluated, --max-frames)"
    lines = [
        "# VPGC evaluation",
        "",
        f"- **Dataset**: `{ds['dir']}`: {ds['test_frames']} held-out test frames{first}, "
        f"{ds['train_frames']} training frames, stored at {ds['size']} x {ds['size']} px.",
        f"- **Resolution**: {r} x {r} px, the models' resolution; ground-truth frames are resized "
        "to it exactly as the models' inputs are (`vpgc_jax.data.pipeline.to_float_image`).",
    ]
    for cb in runs["codebook"]:
        lines.append(
            f"- **Stage-1 run** {cb['label']}: `{cb['dir']}`, {cb['codebook']} codebook (config "
            f"{cb['config']}), checkpoint step {cb['step']}."
        )
    drv = runs["driver"]
    if drv:
        lines.append(
            f"- **Stage-2 run**: `{drv['dir']}`, {drv['variant']} driver (config {drv['config']}), "
            f"checkpoint step {drv['step']}, decoding with stage-1 step {drv['codebook_step']}."
        )
        if drv["trained_against"] != runs["codebook"][0]["dir"]:
            lines.append(f"  It was trained against stage-1 run `{drv['trained_against']}`.")
    lines += [
        f"- **Metrics**: {result['metrics_convention']}",
        f"- **F-LMD**: {result['flmd']['convention']}",
        f"- **Wall time**: {result['wall_seconds']:.1f} s.",
        "",
        "## Held-out results (layout of Table 1, Wang et al. 2023)",
        "",
        *table1(result),
        "",
        *[f"- {note}" for note in result["notes"]],
        "",
    ]
    regions_md = region_table(result)
    if regions_md:
        lines += [
            "## Mouth and eyes",
            "",
            "Whole frames are mostly static background, so their scores reward a blurred mouth. "
            "Each frame's mouth (iBUG points 48-67) and eyes (36-47) are cut out with a square box "
            "around the ground truth's landmarks (padded by a quarter of the box on every side, "
            "resized to 64 px; `eval/regions.py`); sharpness is the variance of the Laplacian of "
            "the crops over that of the ground truth's (1.0: as sharp as the real frames, a blur "
            "scores well below 1).",
            "",
            *regions_md,
            "",
        ]
    follow_md = follow_table(result)
    if follow_md:
        lines += [
            "## Cross-reenactment: does the output follow the driver?",
            "",
            "No ground truth exists for another person's driving, so dlib's landmarks on each "
            "output frame are compared with the driving landmarks retargeted onto the subject that "
            "produced it (`eval/follow.py`): mouth LMD over points 48-67 (px at 512), the Pearson "
            "correlation over time of the inner-lip gap, and the gap's standard deviation over the "
            "driver's (near 0: a neutral mouth that ignores the driver). Retrieval shows the "
            "subject's training frame with the nearest landmarks.",
            "",
            *follow_md,
            "",
        ]
    audio_md = audio_table(result)
    if audio_md:
        lines += [
            "## Audio-driven lips (the audio model's landmarks)",
            "",
            "The test split's own audio through the audio model, placed in each test frame's own "
            "head pose, against the true landmarks (`eval/audio.py`): mouth LMD over points 48-67 "
            "(px at 512), Pearson r over time of the inner-lip gap, its standard deviation over "
            "the truth's, and flicker (mean frame-to-frame motion of the mouth points over the "
            "truth's; 1: as smooth as the real track).",
            "",
            *audio_md,
            "",
        ]
        rendered = (result.get("audio") or {}).get("rendered") or {}
        for key, label in (
            ("audio_reenactment", "audio-driven"),
            ("reenactment", "landmark-driven"),
        ):
            if key in rendered:
                t = rendered[key]
                lines.append(
                    f"- Rendered {label} frames: flicker ratio {_fmt(t['flicker_ratio'], 2)} "
                    f"(frame-to-frame reversals over the real video's; 1: as steady), motion "
                    f"ratio {_fmt(t['motion_ratio'], 2)}, temporal error "
                    f"{_fmt(t['temporal_error'], 2)} levels (`eval.evaluators.TemporalStats`)."
                )
        lines.append("")
    lines += [
        "## Examples",
        "",
        f"Evenly spaced held-out frames: {', '.join(str(i) for i in result['example_frames'])}.",
        "",
        f"![examples]({files['examples']})",
    ]
    conv = result.get("convergence")
    if conv:
        lines += [
            "",
            "## Convergence of the stage-1 runs (layout of Table 4, Wang et al. 2023)",
            "",
            "Held-out PSNR (dB) against training step, from each run's metrics.jsonl (evaluated "
            "during training on the run's own dataset and resolution):",
            "",
            *table4(conv, "eval_psnr", 2),
            "",
            "Held-out LPIPS against training step:",
            "",
            *table4(conv, "eval_lpips", 3),
            "",
            "Periodic evaluations score the run's `num_eval_frames` evenly spaced test frames, the "
            "one at a run's last step the whole test split; frames per point are in metrics.json "
            "(`convergence`), as is every step when the tables show a subset.",
            "",
            f"![convergence]({files['convergence']})",
        ]
    return "\n".join(lines) + "\n"


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (tmp file + rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def json_safe(x):
    """A copy for strict JSON: non-finite floats (PSNR of identical frames) become None."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def time_to_quality(runs: dict[str, str], out_png: str) -> list[str]:
    """Writes `time_to_quality_plot` of runs {label: run dir}; returns its data as markdown lines.

    A driver's minutes include its stage-1 run's time (`driver_offset_minutes`).

    Raises:
      FileNotFoundError: a run directory without metrics.jsonl.
    """
    series = {}
    for label, run_dir in runs.items():
        if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            raise FileNotFoundError(f"{run_dir}: no metrics.jsonl; not a training run")
        conv = read_convergence(run_dir)
        offset = driver_offset_minutes(run_dir)
        conv["minutes"] = [m + offset for m in conv["minutes"]]
        series[label] = conv
    time_to_quality_plot(series, out_png)
    rows = [
        [label, str(step), _fmt(minutes, 1), _fmt(lp, 3), _fmt(mouth, 3)]
        for label, conv in series.items()
        for step, minutes, lp, mouth in zip(
            conv["step"],
            conv["minutes"],
            conv["eval_lpips"],
            conv["eval_mouth_lpips"],
            strict=True,
        )
    ]
    return _table(["Run", "step", "wall time (min)", "LPIPS", "mouth LPIPS"], rows)


def parse_args(argv=None) -> argparse.Namespace:
    """The CLI's arguments; ``runs`` becomes {label: run dir} (argparse exits 2 on a bad one)."""
    p = argparse.ArgumentParser(
        prog="python -m eval.report",
        description="time-to-quality figure: held-out LPIPS against wall time, per run",
    )
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR", help="runs to plot, labelled")
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, run_dir = item.partition("=")
        if not sep or not label or not run_dir:
            p.error(f"{item!r}: expected LABEL=RUN_DIR")
        runs[label] = os.path.expanduser(run_dir)
    args.runs = runs
    return args


def main(argv=None) -> int:
    """``python -m eval.report --out tq.png LABEL=RUN_DIR ...``: the time-to-quality figure.

    Held-out LPIPS (whole frame and mouth box) of each run's periodic evaluations against wall
    time (a driver's clock starts with its stage 1), and the same numbers as a markdown table on
    stdout. Exit status 0, or 2 with one ``error:`` line for a bad argument or run directory.
    """
    args = parse_args(argv)
    try:
        lines = time_to_quality(args.runs, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
