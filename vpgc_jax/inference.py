"""Trained runs for inference: a stage-2 driver and its frozen stage-1 autoencoder, jitted once.

`load_reenactor(driver_dir)` restores both runs (the stage-1 step the driver was trained against,
unless told otherwise), checks that they fit together, and returns a `Reenactor` whose `drive`
maps heatmap stacks to frames with one compiled function of a fixed batch size: the last, short
batch is padded, so a whole video never recompiles (spec §4.4 inference path, deterministic: no
dropout, unlike the reference's test script).
"""

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from vpgc_jax import exemplars as exemplars_lib
from vpgc_jax import parallel, runs
from vpgc_jax.models.driver import PriorGuidedDriver
from vpgc_jax.models.vqgan import VQModel


class RunMismatchError(ValueError):
    """A stage-2 run and a stage-1 run that do not fit together."""


@dataclasses.dataclass
class Reenactor:
    """Driver + frozen codebook autoencoder, ready to render.

    Attributes:
      config: the stage-2 run's config (with ``codebook_workdir`` / ``codebook_step`` used).
      cb_config: the stage-1 run's config.
      resolution: frame side R in pixels.
      batch: frames per compiled call (a multiple of the device count and of the driver's group).
      driver_step, codebook_step: checkpoint steps restored.
      exemplars: an exemplar driver's bank (``model.exemplar``, `vpgc_jax.exemplars`), else None.
    """

    config: ml_collections.ConfigDict
    cb_config: ml_collections.ConfigDict
    driver: PriorGuidedDriver
    vq: VQModel
    driver_params: dict
    vq_params: dict
    prior: jax.Array
    mesh: jax.sharding.Mesh
    batch: int
    driver_step: int
    codebook_step: int
    exemplars: exemplars_lib.ExemplarBank | None = None

    def __post_init__(self):
        self._drive = runs.Batched(runs.make_drive(self.driver, self.vq), self.mesh, self.batch)
        self._reconstruct = runs.Batched(runs.make_reconstruct(self.vq), self.mesh, self.batch)

    @property
    def resolution(self) -> int:
        return int(self.cb_config.resolution)

    def drive(self, heatmaps: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Renders frames from heatmap stacks.

        Args:
          heatmaps: [n <= batch, R, R, 7] float32 in [0, 1] (`heatmaps.heatmap_stack`), in frame
            order (the reference driver attends over groups of consecutive frames).
          landmarks: [n, 68, 2] float (x, y) at R px, the landmarks the stacks' centre heatmaps
            (channel 3) were drawn from; an exemplar driver looks its exemplars up by them
            (ignored by other drivers).

        Returns:
          [n, R, R, 3] float32, about [-1, 1].

        Raises:
          ValueError: more than ``batch`` frames, or an exemplar driver without `landmarks`.
        """
        inputs = heatmaps
        if self.exemplars is not None:
            if landmarks is None or len(landmarks) != len(heatmaps):
                raise ValueError(
                    "this driver was trained with exemplars (model.exemplar): pass the "
                    "landmarks of every heatmap stack's centre frame"
                )
            inputs = (heatmaps, self.exemplars.lookup(landmarks))
        return self._drive(self.driver_params, self.vq_params, self.prior, inputs)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray:
        """Stage-1 reconstruction: [n <= batch, R, R, 3] in [-1, 1] -> the same, about [-1, 1]."""
        return self._reconstruct(self.vq_params, frames)


def load_driver_config(driver_dir: str) -> ml_collections.ConfigDict:
    """The config.json of a stage-2 run.

    Raises:
      FileNotFoundError: no config.json (not a run directory).
      RunMismatchError: the directory holds a stage-1 run.
    """
    config = runs.load_run_config(driver_dir)
    if config.get("stage") != "driver":
        raise RunMismatchError(
            f"{driver_dir} is a {config.get('stage')!r} run, not a stage-2 (driver) run"
        )
    return config


def check_compatible(config, cb_config, driver_dir: str, codebook_dir: str) -> None:
    """Raises RunMismatchError when the stage-1 run is not the kind the driver was trained on.

    Compares the stage-1 model fields the driver depends on (resolution, z_channels, d_c, grid,
    codebook kind and size) with those recorded in the driver's config at training time.
    """
    recorded = config.get("codebook_model")
    if recorded is None:
        return  # written before the record existed; shapes are still checked on restore
    trained = {
        "resolution": config.get("resolution"),
        "encoder.z_channels": recorded.encoder.get("z_channels"),
        "encoder.ch_mult": recorded.encoder.get("ch_mult"),
        "codebook.kind": recorded.codebook.get("kind"),
        "codebook.d_c": recorded.codebook.get("d_c"),
        "codebook.K_c": recorded.codebook.get("K_c"),
    }
    cbm = cb_config.model
    given = {
        "resolution": cb_config.resolution,
        "encoder.z_channels": cbm.encoder.z_channels,
        "encoder.ch_mult": cbm.encoder.ch_mult,
        "codebook.kind": cbm.codebook.kind,
        "codebook.d_c": cbm.codebook.d_c,
        "codebook.K_c": cbm.codebook.K_c,
    }
    bad = [
        f"{f}: {trained[f]} vs {given[f]}"
        for f in trained
        if trained[f] is not None
        and tuple(np.atleast_1d(trained[f])) != tuple(np.atleast_1d(given[f]))
    ]
    if bad:
        raise RunMismatchError(
            f"stage-2 run {driver_dir} was trained on a different stage-1 model than "
            f"{codebook_dir} ({'; '.join(bad)})"
        )


def load_reenactor(
    driver_dir: str,
    codebook_dir: str | None = None,
    driver_step: int = -1,
    batch: int = 8,
) -> Reenactor:
    """Restores a stage-2 run and its stage-1 run for rendering.

    Args:
      driver_dir: a stage-2 run directory.
      codebook_dir: its stage-1 run (default: the one recorded in the driver's config); the
        stage-1 step is the one the driver recorded.
      driver_step: stage-2 checkpoint step; -1 for the latest.
      batch: frames per compiled call; rounded up to a multiple of the device count and of the
        reference driver's frame group.

    Returns:
      A `Reenactor`.

    Raises:
      FileNotFoundError: a missing run directory, config.json or checkpoint.
      RunMismatchError: not a stage-2 run, or a stage-1 run that does not fit it.
    """
    config = load_driver_config(driver_dir)
    codebook_dir = codebook_dir or config.codebook_workdir
    mesh = parallel.make_mesh()
    repl = parallel.replicated(mesh)
    cb_config, vq, vq_params, cb_step = runs.load_codebook(codebook_dir, config.codebook_step, repl)
    check_compatible(config, cb_config, driver_dir, codebook_dir)
    try:
        _, driver, driver_params, step = runs.load_driver(driver_dir, cb_config, driver_step, repl)
    except ValueError as e:
        raise RunMismatchError(f"stage-2 run {driver_dir} does not fit {codebook_dir}: {e}") from e
    bank = None
    if driver.exemplar:
        try:
            bank = exemplars_lib.ExemplarBank.load(os.path.join(driver_dir, exemplars_lib.FILENAME))
        except FileNotFoundError as e:
            raise RunMismatchError(str(e)) from e
        if bank.resolution != int(cb_config.resolution) or bank.features.shape[1:] != (
            *driver.grid,
            driver.dim,
        ):
            raise RunMismatchError(
                f"{driver_dir}: its exemplar bank ({bank.resolution} px, features "
                f"{bank.features.shape[1:]}) does not fit the stage-1 run {codebook_dir}"
            )
    group = runs.frame_group(driver)
    multiple = int(np.lcm(mesh.size, group))
    batch = max(batch, multiple)
    batch += (-batch) % multiple
    return Reenactor(
        config=config,
        cb_config=cb_config,
        driver=driver,
        vq=vq,
        driver_params=driver_params,
        vq_params=vq_params,
        prior=runs.texture_prior(vq, vq_params, driver),
        mesh=mesh,
        batch=batch,
        driver_step=int(step),
        codebook_step=cb_step,
        exemplars=bank,
    )
