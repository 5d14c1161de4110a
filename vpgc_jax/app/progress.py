"""What the pages show of a job: its phases, step and ETA, latest sample, metrics and log tail.

Read from the job's files while the worker writes them (``state.json``, the running stage's
``metrics.jsonl`` and ``samples/``, ``log.txt``); nothing here imports JAX or Gradio.
"""

import glob
import html
import json
import os
import re

# Metric columns shown on the Train page (those a run logs; others are left out).
# What the trainers log (metrics.jsonl): stage 1 l1 / lpips / psnr, stage 2 feat_l1.
METRIC_COLUMNS = ("step", "loss", "psnr", "l1", "lpips", "feat_l1", "images_per_sec")


def read_metrics(run: str | None, last: int = 0) -> list[dict]:
    """The records of ``run/metrics.jsonl`` (the last `last` ones; 0: all); [] if none yet."""
    if not run or not os.path.isfile(os.path.join(run, "metrics.jsonl")):
        return []
    rows = []
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                break
    return rows[-last:] if last else rows


# A tqdm bar (trainers, data_prep, reenact): "desc:  40%|..| 4/10 [00:08<00:12, ...".
BAR = re.compile(r"(?:^|\r|\n)([^\r\n|]*?):?\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:]+|\?)")


def _seconds(text: str) -> float | None:
    if "?" in text:
        return None
    value = 0.0
    for part in text.split(":"):
        value = value * 60 + float(part)
    return value


def read_log(job: dict | None, tail_bytes: int = 64_000) -> str:
    """The end of the job's ``log.txt`` ('' before it exists)."""
    path = os.path.join((job or {}).get("dir", ""), "log.txt")
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - tail_bytes))
        return f.read().decode(errors="replace")


def bar_progress(log: str) -> tuple[str, int, int, float | None] | None:
    """(label, done, total, seconds left or None) of the last progress bar in the current phase.

    The bar is the one tqdm draws (the trainers' steps, data_prep's frames, reenact's frames):
    its remaining time counts only the steps of this run, so a resumed stage's ETA is right.
    """
    phase_start = log.rfind("\n=== ")
    matches = list(BAR.finditer(log, max(0, phase_start)))
    if not matches:
        return None
    m = matches[-1]
    return m.group(1).strip(), int(m.group(2)), int(m.group(3)), _seconds(m.group(5))


def status_html(job: dict | None) -> str:
    """The job's phases (done / current / to do), a progress bar with step and ETA, message."""
    if not job:
        return "<p>No job yet: upload a clip and start training.</p>"
    state = job.get("state", "?")
    phases = job.get("phases") or []
    current = int(job.get("phase_index", -1))
    items = []
    for i, name in enumerate(phases):
        mark = (
            "&#10003;"
            if i < current or state == "done"
            else ("&#9654;" if i == current else "&middot;")
        )
        items.append(f"<li>{mark} {html.escape(name)}</li>")
    parts = [
        f"<p><b>{html.escape(job['id'])}</b>: <span class='job-state'>{html.escape(state)}</span>"
        f" &mdash; {html.escape(str(job.get('message', '')))}</p>"
    ]
    if items:
        parts.append("<ul class='job-phases'>" + "".join(items) + "</ul>")
    bar = bar_progress(read_log(job)) if state == "running" else None
    if bar:
        label, done, total, eta = bar
        left = "ETA: measuring" if eta is None else f"ETA {_duration(eta)}"
        parts.append(
            f"<progress value='{done}' max='{total}' style='width:100%'></progress>"
            f"<p class='job-steps'>{html.escape(label)}: {done} / {total}, {left}</p>"
        )
    return "\n".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def metrics_rows(job: dict | None, last: int = 8) -> list[list]:
    """The last `last` metric records of the running (or last) stage, as table rows."""
    rows = read_metrics((job or {}).get("run"), last)
    out = []
    for r in rows:
        out.append([_fmt(r.get(k)) for k in METRIC_COLUMNS])
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def latest_sample(job: dict | None) -> str | None:
    """The newest ``samples/step_*.png`` of the job's current (or last) stage, or None."""
    run = (job or {}).get("run")
    found = sorted(glob.glob(os.path.join(run, "samples", "step_*.png"))) if run else []
    return found[-1] if found else None


def log_tail(job: dict | None, lines: int = 15) -> str:
    """The last `lines` lines of the job's log, each progress bar at its latest redraw."""
    text = read_log(job).replace("\r\n", "\n")
    shown = [ln.rsplit("\r", 1)[-1] for ln in text.split("\n")]
    return "\n".join([ln for ln in shown if ln.strip()][-lines:])
