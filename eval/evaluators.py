"""The trainers' held-out evaluators: the trainer hands over a predict function (big_vision style).

`HeldOutEvaluator` scores stage-1 reconstructions, `DriverEvaluator` self-reenactment from the
test split's landmarks, both on fixed test-split frames with `eval.metrics.Scores` (the report's
metrics and 8-bit convention, so ``eval.json`` and ``eval.evaluate``'s report agree on the same
frames). `evaluate_checkpoint` scores any saved step of a stage-1 run:

  python -c "from eval.evaluators import evaluate_checkpoint; \
      print(evaluate_checkpoint('runs/cb128', step=500))"

Frames stream through in fixed-size batches (a multiple of the device count; the last one is
padded) so nothing recompiles and a 1000-frame split at 512 px never sits in memory at once.
Periodic evaluations use ``num_eval_frames`` evenly spaced frames; the final one, written to
eval.json, uses the whole test split.
"""

import os
import time
from collections.abc import Callable

import jax
import numpy as np

from eval import metrics
from vpgc_jax import images, parallel, runs, writers
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib
from vpgc_jax.data import pipeline
from vpgc_jax.losses import lpips as lpips_lib

# predict_fn(params, x [B, R, R, C], ...) -> frames [B, R, R, 3] about [-1, 1], jitted, B = the
# batch; an exemplar driver's also takes the exemplar features [B, h, w, D].
PredictFn = Callable[..., jax.Array]


class HeldOutEvaluator:
    """Held-out stage-1 reconstruction metrics and sample grids on fixed test-split frames.

    Args:
      config: the run's config (dataset_dir, resolution, eval_batch_size, num_eval_frames,
        num_sample_frames).
      mesh: the data mesh batches are split over.
      predict_fn: ``predict_fn(params, x)`` for images x [B, R, R, 3] in [-1, 1]
        (`vpgc_jax.runs.make_reconstruct`).
      multiple: the batch is also a multiple of this (a driver's frame group).
    """

    def __init__(self, config, mesh, predict_fn: PredictFn, multiple: int = 1):
        self.config = config
        self.test_source = frames_lib.open_split(config.dataset_dir, "test")  # opened once
        self.num_test = len(self.test_source)
        size = float(frames_lib.load_meta(config.dataset_dir)["size"])
        self.test_landmarks = (  # [N, 68, 2] at the model resolution: the region scores' boxes
            frames_lib.load_landmarks(config.dataset_dir, "test")["landmarks"]
            * (config.resolution / size)
        )
        self.sample_idx = frames_lib.evenly_spaced(self.num_test, config.num_sample_frames)
        step = int(np.lcm(mesh.size, multiple))
        bs = max(config.eval_batch_size, step)
        self.batch = bs + (-bs) % step
        self.predict = runs.Batched(predict_fn, mesh, self.batch)
        self.lpips_params = None  # loaded on the first evaluation
        self._samples = None

    def _indices(self, final: bool) -> np.ndarray:
        """Test-split frames scored: all of them when `final`, else `num_eval_frames` spread out."""
        return frames_lib.evenly_spaced(self.num_test, 0 if final else self.config.num_eval_frames)

    def _frames(self, idx) -> np.ndarray:
        return pipeline.load_frames(self.test_source, idx, self.config.resolution)

    def _rows(self, params, idx: np.ndarray, x: np.ndarray, final: bool) -> dict[str, np.ndarray]:
        """{row name: frames [n, R, R, 3] in [-1, 1]} for test frames `idx` (ground truth `x`).

        '' is the model's own row; the final evaluation adds the 32 x 32 thumbnail baseline
        (skipped at resolutions <= 32, where it is the identity).
        """
        rows = {"": self.predict(params, x)}
        if final and self.config.resolution > metrics.THUMBNAIL_SIDE:
            thumb = metrics.thumbnail_baseline(images.to_uint8(x))
            rows[f"baseline_thumbnail{metrics.THUMBNAIL_SIDE}"] = images.to_signed(thumb)
        return rows

    def evaluate(self, params, final: bool = False) -> dict:
        """Mean held-out PSNR/SSIM/LPIPS; `final`: the whole split plus the extra rows.

        Returns:
          {'psnr', 'ssim', 'lpips', 'num_frames', 'resolution', 'eval_seconds'} (periodic
          evaluations add the mouth and eye scores of `eval.regions`: 'mouth_lpips', ...) for the
          model and,
          for each extra row of `_rows` (e.g. 'baseline_thumbnail32'), a dict of the same metrics.
        """
        t0 = time.perf_counter()
        if self.lpips_params is None:
            self.lpips_params = lpips_lib.load_lpips_params()
        scores = metrics.Scores(self.lpips_params, self.batch)
        idx = self._indices(final)
        for i in range(0, len(idx), self.batch):
            x = self._frames(idx[i : i + self.batch])
            rows = self._rows(params, idx[i : i + self.batch], x, final)
            scores.add(
                images.to_uint8(x),
                {k: images.to_uint8(v) for k, v in rows.items()},
                # periodic evaluations only: eval.json keeps its whole-frame rows
                gt_landmarks=None if final else self.test_landmarks[idx[i : i + self.batch]],
            )
        means = scores.means()
        out = means.pop("")
        out["num_frames"] = len(idx)
        out["resolution"] = self.config.resolution
        out.update(means)
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def _sample_columns(self, params) -> list[np.ndarray]:
        """Columns of the sample grid: input | reconstruction."""
        if self._samples is None:
            self._samples = self._frames(self.sample_idx)
        return [self._samples, self.predict.over(params, self._samples)]

    def save_samples(self, params, workdir: str, step: int, writer) -> None:
        """Writes samples/step_XXXXXXX.png of the fixed held-out frames (`_sample_columns`)."""
        grid = writers.image_grid(self._sample_columns(params))
        if jax.process_index() == 0:
            writers.save_png(os.path.join(workdir, "samples", f"step_{step:07d}.png"), grid)
            writer.write_image(step, "samples", grid)


class DriverEvaluator(HeldOutEvaluator):
    """Held-out self-reenactment: test-split heatmaps -> driver -> frozen codebook + decoder.

    Scores against the ground-truth frames; the final evaluation (the whole split, in frame order)
    adds the stage-1 reconstruction of the same frames (the upper bound: the driver can at best
    predict the stage-1 encoder's features) and the frame-to-frame statistics of `TemporalStats`.

    Args:
      config: the stage-2 run's config (with its dataset and resolution filled in).
      mesh: the data mesh.
      predict_fn: ``predict_fn(params, heatmaps [B, R, R, 7][, exemplar [B, h, w, D]])`` ->
        frames (`runs.make_drive` with the stage-1 parameters and prior bound).
      stage1_fn: ``stage1_fn(x [B, R, R, 3])`` -> the stage-1 reconstruction (params bound).
      group: consecutive frames the driver attends over jointly (the reference variant's 4, else
        1); batches and sample rows hold whole groups.
      exemplars: an exemplar driver's `vpgc_jax.exemplars.ExemplarBank` (each test frame gets the
        features of the training frame with the nearest landmarks); None for other drivers.
    """

    def __init__(
        self, config, mesh, predict_fn: PredictFn, stage1_fn, group: int = 1, exemplars=None
    ):
        super().__init__(config, mesh, predict_fn, multiple=group)
        self.group = group
        self.exemplars = exemplars
        self.stage1 = runs.Batched(stage1_fn, mesh, self.batch)
        if group > 1:  # the reference driver attends over whole groups of consecutive frames
            starts = frames_lib.evenly_spaced(self.num_test // group, 1) * group
            self.sample_idx = starts[0] + np.arange(group)
        meta = frames_lib.load_meta(config.dataset_dir)
        lms = frames_lib.load_landmarks(config.dataset_dir, "test")["landmarks"]
        self.landmarks = lms * (config.resolution / float(meta["size"]))  # [N, 68, 2] at R px
        self._temporal = None

    def heatmaps(self, idx: np.ndarray) -> np.ndarray:
        """Heatmap stacks [len(idx), R, R, 7] of test frames `idx` (neighbours clamped, §3.2)."""
        r = self.config.resolution
        return np.stack([heatmaps_lib.heatmap_stack(self.landmarks, int(t), r) for t in idx])

    def inputs(self, idx: np.ndarray):
        """The driver's inputs for test frames `idx`: heatmap stacks, and for an exemplar driver
        also the exemplar features of their landmarks (a tuple, for `runs.Batched`)."""
        hm = self.heatmaps(idx)
        if self.exemplars is None:
            return hm
        return hm, self.exemplars.lookup(self.landmarks[idx])

    def _indices(self, final: bool) -> np.ndarray:
        """All frames in order (final), else whole groups of consecutive frames spread out."""
        if final or self.group == 1:
            return super()._indices(final)
        n_groups = max(1, self.config.num_eval_frames // self.group)
        starts = frames_lib.evenly_spaced(self.num_test // self.group, n_groups) * self.group
        return (starts[:, None] + np.arange(self.group)).reshape(-1)

    def _rows(self, params, idx: np.ndarray, x: np.ndarray, final: bool) -> dict[str, np.ndarray]:
        y = self.predict(params, self.inputs(idx))
        rows = {"": y}
        if final:
            rows["stage1_reconstruction"] = self.stage1(x)
            self._temporal.add(x, y)
        return rows

    def evaluate(self, params, final: bool = False) -> dict:
        self._temporal = TemporalStats() if final else None
        out = super().evaluate(params, final)
        if final:
            out.update(self._temporal.read())
        return out

    def _sample_columns(self, params) -> list[np.ndarray]:
        """heatmap of the current frame | prediction | target."""
        if self._samples is None:
            self._samples = self._frames(self.sample_idx)
        inputs = self.inputs(self.sample_idx)
        hm = inputs[0] if isinstance(inputs, tuple) else inputs
        return [hm[..., 3:4], self.predict.over(params, inputs), self._samples]


class TemporalStats:
    """Running frame-to-frame statistics of predictions y against ground truth x, fed in order.

    * ``temporal_error``: mean |(y_t - y_{t-1}) - (x_t - x_{t-1})|, 8-bit levels (jitter the
      ground truth does not have, plus motion the prediction misses);
    * ``motion_ratio``: mean |y_t - y_{t-1}| / mean |x_t - x_{t-1}| (above 1: extra motion;
      below 1: too static);
    * ``flicker_ratio``: mean |y_{t+1} - 2 y_t + y_{t-1}| / the same of x: the high-frequency
      (frame-to-frame reversing) part of the change, i.e. jitter, relative to the real video's.
    """

    def __init__(self):
        self._tail = None  # the last two frames of (x, y)
        self._sums = {"err": 0.0, "motion_y": 0.0, "motion_x": 0.0, "acc_y": 0.0, "acc_x": 0.0}
        self._n = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """x, y: [n, R, R, 3] in [-1, 1], consecutive frames continuing the previous call's."""
        if self._tail is not None:
            x = np.concatenate([self._tail[0], x])
            y = np.concatenate([self._tail[1], y])
            skip = len(self._tail[0]) - 1  # differences already counted
        else:
            skip = 0

        def mean_abs(a):
            return np.abs(a).mean(axis=(1, 2, 3))

        dx, dy = np.diff(x, axis=0)[skip:], np.diff(y, axis=0)[skip:]
        self._sums["err"] += float(mean_abs(dy - dx).sum())
        self._sums["motion_y"] += float(mean_abs(dy).sum())
        self._sums["motion_x"] += float(mean_abs(dx).sum())
        self._n += len(dx)
        skip2 = max(skip - 1, 0) if self._tail is not None else 0
        self._sums["acc_y"] += float(mean_abs(np.diff(y, 2, axis=0)[skip2:]).sum())
        self._sums["acc_x"] += float(mean_abs(np.diff(x, 2, axis=0)[skip2:]).sum())
        self._tail = (x[-2:], y[-2:])

    def read(self) -> dict:
        """{'temporal_error' (8-bit levels), 'motion_ratio', 'flicker_ratio'} so far."""
        s = self._sums
        return {
            "temporal_error": 127.5 * s["err"] / max(self._n, 1),
            "motion_ratio": s["motion_y"] / max(s["motion_x"], 1e-12),
            "flicker_ratio": s["acc_y"] / max(s["acc_x"], 1e-12),
        }


def evaluate_checkpoint(workdir: str, step: int | None = None, dataset_dir: str = "") -> dict:
    """Held-out metrics of a stage-1 checkpoint on the whole test split and the thumbnail baseline.

    Args:
      workdir: a stage-1 run directory.
      step: checkpoint step (default: the latest).
      dataset_dir: evaluate on this dataset instead of the run's own.

    Returns:
      The dict `HeldOutEvaluator.evaluate(final=True)` gives, with 'step'.

    Raises:
      FileNotFoundError: not a stage-1 run, or no checkpoint (at `step`).
    """
    mesh = parallel.make_mesh()
    config, model, params, step = runs.load_codebook(workdir, step, parallel.replicated(mesh))
    if dataset_dir:
        config.dataset_dir = os.path.expanduser(dataset_dir)
    evaluator = HeldOutEvaluator(config, mesh, runs.make_reconstruct(model))
    return {**evaluator.evaluate(params, final=True), "step": step}
