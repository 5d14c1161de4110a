"""The GPU suite's outputs: ``gpu_suite.md`` (tables) and ``gpu_suite.json`` from its report dict.

The report (`gpu_suite.run_suite`) holds 'command', 'date', 'tiny', 'budget_s', 'elapsed_s' and
'sections' {name: {'title', 'status', 'seconds', 'cpu_s', 'budget_s', 'rows', 'skipped', 'notes',
'curve', 'baseline', 'settings', 'error', device fields}}; rows are `run_all.row` dicts.
"""

import json
import os

import run_all


def _mib(n) -> str:
    return "" if n is None else f"{n / 2**20:,.0f}"


def _tflop(r: dict) -> str:
    return f"{r['model_tflop_per_step']:.2f}" if r.get("model_tflop_per_step") else ""


def _mfu(r: dict) -> str:
    return f"{100 * r['mfu']:.1f} %" if r.get("mfu") else ""


def _in_budget(r: dict) -> str:
    return ("yes" if r["fits_budget"] else "no") + (", largest" if r.get("largest") else "")


# Columns after the common ones (`run_all.format_table`), per section.
EXTRA_COLUMNS = {
    "inference_bfloat16": [("device peak (MiB)", lambda r: _mib(r.get("device_peak_bytes")))],
    "stage1": [("model TFLOP/step", _tflop), ("MFU", _mfu), ("in budget", _in_budget)],
}
EXTRA_COLUMNS["inference_float32"] = EXTRA_COLUMNS["inference_bfloat16"]


def format_report(report: dict) -> str:
    """The markdown: header, section status table, one table per section."""
    sections = report["sections"]
    env = next((e for e in sections.values() if "device" in e), {})
    lines = [
        f"## GPU suite, {report['date']}, {env.get('device', '?')}, jax {env.get('jax', '?')}",
        "",
        f"`{report['command']}` ({'tiny shapes, ' if report['tiny'] else ''}"
        f"{report.get('elapsed_s', 0):.0f} s of a {report['budget_s']:.0f} s budget; "
        f"MFU against {env.get('peak_tflops') or '?'} TFLOP/s dense bf16)",
        "",
        "| section | status | time (s) | host CPU (s) | budget (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {e['status']} | {e['seconds']} | {e.get('cpu_s', '')} | {e['budget_s']} |"
        for n, e in sections.items()
    ]
    for name, e in sections.items():
        lines += ["", f"### {e['title']}", ""]
        if e.get("rows"):
            lines.append(run_all.format_table(e["rows"], e["device"], EXTRA_COLUMNS.get(name, ())))
        if e.get("curve"):
            lines += [""] * bool(e.get("rows")) + format_curve(e)
        lines += [f"- skipped: {s['what']}: {s['why']}" for s in e.get("skipped", [])]
        lines += [f"- {n}" for n in e.get("notes", [])]
        if e.get("error"):
            lines += ["", f"{e['status']}:", "", "```", e["error"], "```"]
    return "\n".join(lines) + "\n"


def format_curve(e: dict) -> list[str]:
    """The training run's table: held-out PSNR / LPIPS against training time."""
    s = e.get("settings", {})
    lines = [
        f"{s.get('variant')} at {s.get('resolution')} px, batch {s.get('batch_size')} "
        f"(groups of {s.get('frames_per_group')} consecutive frames), lr {s.get('lr')}, GAN from "
        f"step {s.get('disc_start')}, {s.get('compute_dtype')}; "
        f"{(e.get('steps_per_s') or 0):.2f} steps/s",
        "",
        "| step | images | train time (s) | wall (s) | loss | held-out PSNR (dB) | LPIPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in e["curve"]:
        lines.append(
            f"| {p['step']} | {p['images']} | {p['train_s']:.1f} | {p['wall_s']:.1f} "
            f"| {p['loss']:.4f} | {p['psnr']:.2f} | {p['lpips']:.4f} |"
        )
    if "baseline" in e:
        base = e["baseline"]
        lines.append(f"| {base['what']} | | | | | {base['psnr']:.2f} | {base['lpips']:.4f} |")
    return lines


def write_outputs(out: str, report: dict) -> None:
    """Writes gpu_suite.json and gpu_suite.md atomically."""
    for name, text in (
        ("gpu_suite.json", json.dumps(report, indent=1, default=float)),
        ("gpu_suite.md", format_report(report)),
    ):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))
