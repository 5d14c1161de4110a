"""Export vpgc_jax runs to the reference PyTorch code's checkpoint formats (spec §6).

  python -m vpgc_jax.export_torch --codebook runs/cbref --out exported/ [--step N] [--with-loss]
      [--driver runs/drvref [--driver-step N]]

Writes into ``--out`` (built in a temporary sibling and renamed into place when complete):

  stage1.ckpt       ``{'state_dict': sd}`` with the reference VQGridModel's keys and shapes
                    (391 model keys; ``--with-loss`` adds the 65 ``loss.*`` keys: discriminator
                    with its BatchNorm statistics and the frozen LPIPS, to resume in PyTorch)
  Enc.ckpt          ``{'encoder': sd}``, keys prefixed ``module.`` (stage 2, with ``--driver``)
  Imp.ckpt          ``{'implicit': sd}``, keys prefixed ``module.``
  config.yaml       the stage-1 model in the reference's ``obama_sliding_4.yaml`` layout
  vpgc_jax.json     manifest: our configs, steps, files, and which loaders can read each file

With ``--driver``, the stage-1 step defaults to the one the stage-2 run was trained against.
A model the reference cannot express (square window, another grid or width, the paper's driver or
a 3-layer transformer, ablations) is written as ``stage1.vpgc.ckpt`` / ``Enc.vpgc.ckpt`` /
``Imp.vpgc.ckpt`` without config.yaml: same key names, but only
``vpgc_jax.interop.torch_modules.load_export`` reproduces it. Every ``.ckpt`` also carries a
``'vpgc_jax'`` entry (our model config and the window table), which the reference ignores.
"""

import argparse
import json
import os
import sys

import jax
import numpy as np
from absl import logging as absl_logging

from vpgc_jax import outputs, writers
from vpgc_jax import runs as vpgc_runs
from vpgc_jax.interop import convert, runs, torch_io

FORMAT = "vpgc_jax.export_torch"
FORMAT_VERSION = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vpgc_jax.export_torch", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--codebook", required=True, help="stage-1 run directory")
    p.add_argument("--step", type=int, default=None, help="stage-1 checkpoint step (latest)")
    p.add_argument("--driver", default=None, help="stage-2 run directory (optional)")
    p.add_argument("--driver-step", type=int, default=None, help="stage-2 step (latest)")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument(
        "--with-loss",
        action="store_true",
        help="also write loss.discriminator.* and loss.perceptual_loss.* (resume training)",
    )
    return p.parse_args(argv)


def stage1_files(config, fields: dict, step: int, with_loss: bool) -> tuple[dict, dict, str | None]:
    """The stage-1 ``.ckpt`` object, its manifest entry and config.yaml text (None if not needed).

    Args:
      config: the stage-1 run config.
      fields: its restored ``params`` (and with `with_loss` ``disc_params``, ``disc_batch_stats``;
        `vpgc_jax.interop.runs.read_stage1_run`).
      step: the checkpoint step.
      with_loss: include the discriminator (params, BatchNorm statistics, ``num_batches_tracked``
        = step) and LPIPS keys.
    """
    from vpgc_jax.models.codebook import window_table

    model = vpgc_runs.flat_stage1_model(config)  # the PyTorch modules' (and reference's) fields
    params = jax.device_get(fields["params"])
    disc = lpips_params = None
    if with_loss:
        from vpgc_jax.losses import lpips

        disc = {
            "params": jax.device_get(fields["disc_params"]),
            "batch_stats": jax.device_get(fields["disc_batch_stats"]),
            "step": step,
        }
        lpips_params = jax.device_get(lpips.load_lpips_params())
    sd = convert.stage1_state_dict(params, disc, lpips_params)
    issues = convert.stage1_reference_issues(model)
    meta = {"model": json.dumps(model), "step": step}
    if model["codebook"] == "grid":
        table = window_table(model["window"], model["grid_h"], model["grid_w"], model["r"])
        meta["window_table"] = torch_io.to_torch({"t": np.asarray(table, np.int64)})["t"]
    name = "stage1.ckpt" if not issues else "stage1.vpgc.ckpt"
    if not issues:
        path_note = (
            "hard lookup: reproduced by the reference's stage-1 test.py"
            if model["lookup"] == "hard"
            else "soft lookup: reproduced by the reference's stage-2 (Reenactment) rendering path; "
            "its stage-1 test.py would use hard lookup instead"
        )
        readers = f"reference VQGridModel (ckpt_path=..., config.yaml); {path_note}"
    else:
        readers = (
            "vpgc_jax.interop.torch_modules.load_export only (the reference cannot express it)"
        )
    entry = {
        "file": name,
        "step": step,
        "keys": len(sd),
        "with_loss": with_loss,
        "reference_compatible": not issues,
        "reference_issues": issues,
        "readers": readers,
        "config": config.to_dict(),
    }
    obj = {"state_dict": torch_io.to_torch(sd), torch_io.META_KEY: meta}
    yaml = None if issues else convert.reference_yaml(model)
    return obj, entry, yaml


def stage2_files(fields: dict, params, step: int, stage1_ok: bool = True):
    """The stage-2 ``Enc``/``Imp`` ``.ckpt`` objects and their manifest entry.

    Args:
      fields: the driver's fields (`convert.driver_fields` of the PriorGuidedDriver).
      params: PriorGuidedDriver params.
      step: the stage-2 checkpoint step.
      stage1_ok: whether the stage-1 file is in the reference's format (its GridFormer7_Model
        loads the VQ model from it).

    Returns:
      (encoder object, implicit object, manifest entry).
    """
    enc_sd, imp_sd = convert.driver_state_dicts(jax.device_get(params))
    issues = convert.driver_reference_issues(fields)
    if not stage1_ok:
        issues.append("the stage-1 model is not in the reference's format")
    suffix = ".ckpt" if not issues else ".vpgc.ckpt"
    meta = {"model": json.dumps(fields), "step": step}
    entry = {
        "encoder_file": "Enc" + suffix,
        "implicit_file": "Imp" + suffix,
        "step": step,
        "keys": [len(enc_sd), len(imp_sd)],
        "reference_compatible": not issues,
        "reference_issues": issues,
        "readers": (
            "the reference's test_grid.py / train_grid.py (dict_unite; keys carry 'module.')"
            if not issues
            else "vpgc_jax.interop.torch_modules.load_export only (the reference cannot express it)"
        ),
        "model": fields,
    }
    enc = {"encoder": torch_io.to_torch(enc_sd), torch_io.META_KEY: {"step": step}}
    imp = {"implicit": torch_io.to_torch(imp_sd), torch_io.META_KEY: meta}
    return enc, imp, entry


def export(
    codebook: str,
    out: str,
    step: int | None = None,
    driver: str | None = None,
    driver_step: int | None = None,
    with_loss: bool = False,
) -> dict:
    """Exports a stage-1 run (and optionally a stage-2 run) into ``out``.

    Args:
      codebook: stage-1 run directory.
      out: output directory; must not exist (written atomically).
      step: stage-1 checkpoint step; default the stage-1 step ``driver`` was trained against,
        else the latest.
      driver: optional stage-2 run directory trained against ``codebook``.
      driver_step: stage-2 checkpoint step (default: the latest).
      with_loss: also export the discriminator and LPIPS keys.

    Returns:
      The manifest written to ``out/vpgc_jax.json``.

    Raises:
      FileExistsError: ``out`` exists.
      FileNotFoundError: not a run directory, or no checkpoint at the step.
      ValueError: ``step`` is not the stage-1 step the stage-2 run was trained against, or the
        stage-2 run is an exemplar driver.
    """
    torch_io.require_torch()
    out = outputs.resolve(out)
    if os.path.lexists(out):  # checked again when writing; fail before the slow part
        raise FileExistsError(f"{out}: exists; choose a new --out")
    outputs.check_writable(out)
    d_config = None
    if driver is not None:
        d_config = vpgc_runs.load_run_config(driver, "driver")
        if d_config.model.get("exemplar", False):
            raise ValueError(
                f"{driver}: an exemplar driver (model.exemplar, beyond the paper) has no "
                "counterpart in the reference or in vpgc_jax.interop.torch_modules; it cannot be "
                "exported"
            )
        recorded = d_config.get("codebook_step", -1)
        if step is None and recorded >= 0:
            step = recorded
        elif step is not None and recorded >= 0 and step != recorded:
            raise ValueError(
                f"{driver} was trained against stage-1 step {recorded}, not --step {step}"
            )
    config, step, fields = runs.read_stage1_run(codebook, step, with_disc=with_loss)
    obj, entry, yaml = stage1_files(config, fields, step, with_loss)
    entry["run"] = os.path.abspath(codebook)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "stage1": entry, "stage2": None}
    files = {entry["file"]: obj}
    if driver is not None:
        d_config, module, d_params, d_step = runs.read_driver_run(driver, config, driver_step)
        enc, imp, entry2 = stage2_files(
            convert.driver_fields(module), d_params, d_step, entry["reference_compatible"]
        )
        entry2.update(run=os.path.abspath(driver), config=d_config.to_dict())
        trained_on = os.path.realpath(d_config.codebook_workdir)
        if trained_on != os.path.realpath(codebook):
            entry2["warning"] = f"trained against stage-1 run {d_config.codebook_workdir}"
        manifest["stage2"] = entry2
        files.update({entry2["encoder_file"]: enc, entry2["implicit_file"]: imp})
    with runs.atomic_directory(out) as tmp:
        for name, content in files.items():
            torch_io.save(os.path.join(tmp, name), content)
        if yaml is not None:
            with open(os.path.join(tmp, "config.yaml"), "w") as f:
                f.write(yaml)
        writers.write_json(os.path.join(tmp, torch_io.EXPORT_MANIFEST), manifest)
    return manifest


def summary(manifest: dict, out: str) -> str:
    """Lines saying what was written and which loaders read each file."""
    s1 = manifest["stage1"]
    lines = [f"exported to {out}"]
    lines.append(f"  {s1['file']}: stage-1 step {s1['step']}, {s1['keys']} keys; {s1['readers']}")
    if s1["reference_issues"]:
        lines.append("    not the reference's format because: " + "; ".join(s1["reference_issues"]))
    else:
        lines.append("  config.yaml: the reference's obama_sliding_4.yaml layout for this model")
    s2 = manifest.get("stage2")
    if s2:
        lines.append(
            f"  {s2['encoder_file']}, {s2['implicit_file']}: stage-2 step {s2['step']}; "
            f"{s2['readers']}"
        )
        if s2.get("warning"):
            lines.append(f"    warning: {s2['warning']}")
        if s2["reference_issues"]:
            lines.append(
                "    not the reference's format because: " + "; ".join(s2["reference_issues"])
            )
    lines.append("  vpgc_jax.json: manifest with our configs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 ok, 2 bad input)."""
    args = parse_args(argv)
    for name in ("codebook", "driver", "out"):
        if getattr(args, name):
            setattr(args, name, outputs.resolve(getattr(args, name)))
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about read-only managers
    try:
        manifest = export(
            args.codebook, args.out, args.step, args.driver, args.driver_step, args.with_loss
        )
    except (FileExistsError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(manifest, os.path.abspath(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
