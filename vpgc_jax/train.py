"""Training entry point for both stages (house style #1: thin; the stage's trainer does the work).

  python -m vpgc_jax.train --config configs/codebook.py:cpu128 --workdir runs/cb128 \
      --config.dataset_dir=runs/macron128

The config's ``stage`` field picks the trainer. Re-running the same command in an existing workdir
resumes from its latest checkpoint; SIGTERM saves and exits cleanly. Several processes (one per
host, or per GPU under SLURM) run the same command: `parallel.maybe_initialize_distributed` joins
them from the environment, and a config or workdir that differs between them stops all of them.
"""

import json
import os
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from vpgc_jax import memory, outputs, parallel
from vpgc_jax.trainers import common, resume

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/codebook.py:cpu128, configs/driver.py:cpu128, configs/audio.py:cpu.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples, eval.json).")
flags.mark_flags_as_required(["config", "workdir"])


def train_and_evaluate(config, workdir: str) -> dict:
    """Runs the trainer of ``config.stage`` ('codebook', 'driver' or 'audio') in `workdir`.

    The one door to the trainers for other modules (e.g. `vpgc_jax.quickstart`), which do not
    import `vpgc_jax.trainers` themselves.

    Raises:
      ValueError: an unknown stage, or the trainer's own errors.
    """
    if config.stage == "codebook":
        from vpgc_jax.trainers import codebook as trainer
    elif config.stage == "driver":
        from vpgc_jax.trainers import driver as trainer
    elif config.stage == "audio":
        from vpgc_jax.trainers import audio as trainer
    else:
        raise ValueError(f"unknown stage {config.stage!r} in the config")
    return trainer.train_and_evaluate(config, workdir)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a misspelt ``--config.x`` field as one line and exit status 2.

    ml_collections raises AttributeError (with its "did you mean" suggestion) for a field the
    config does not have; absl would print it as a traceback.
    """
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:
        text = str(e).replace("\\n", " ").replace("\\'", "'")
        field = re.search(r"'(\w+)'", text)
        name = field.group(1) if field else "?"
        given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        flag = next((a for a in given if a.split(".")[-1] == name), f"--config.{name}")
        hint = re.search(r'Did you mean "(\w+)"', text)
        fix = f" (did you mean {flag.rsplit('.', 1)[0]}.{hint.group(1)}?)" if hint else ""
        print(f"error: {flag}: the config has no field {name!r}{fix}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = FLAGS.config
    workdir = outputs.resolve(FLAGS.workdir)
    try:
        parallel.maybe_initialize_distributed()
        # Every process must run the same job; a difference would hang a later collective.
        job = json.dumps({"config": config.to_dict(), "workdir": FLAGS.workdir}, default=str)
        parallel.assert_same_on_all_processes(job, "the config or --workdir")
        with config.unlocked():
            for field in resume.PATH_FIELDS:
                if config.get(field):
                    config[field] = os.path.expanduser(config[field])
        if jax.process_count() > 1:  # every process writes: no single-writer lock
            train_and_evaluate(config, workdir)
        else:
            outputs.check_writable(workdir)
            with outputs.lock(workdir):
                train_and_evaluate(config, workdir)
    except (
        common.NonFiniteLossError,
        memory.MemoryEstimateError,
        ValueError,
        FileNotFoundError,
        PermissionError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
