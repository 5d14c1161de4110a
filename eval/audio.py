"""Scores of the audio-to-expression model on the held-out test split (issue 20).

The test split's real audio goes in; its real landmarks are the ground truth. Predicted
expressions are placed with each test frame's own head pose (`ExpressionBasis.track`), so the
scores measure expression only:

* mouth LMD: mean distance of the mouth landmarks (points 48-67) to the truth, in pixels at 512 px
  (the convention of AD-NeRF and ER-NeRF), over frames with detected landmarks;
* mouth-opening correlation: Pearson r of predicted and true mouth opening (the inner-lip gap,
  `eval.follow.mouth_opening`) over time, and the ratio of their standard deviations (opening
  range; 1: as lively as the truth, near 0: a mouth that does not move);
* flicker: mean |frame-to-frame change| of the predicted mouth points over the truth's (1: as
  smooth as the real track).

Baselines (`baselines`): the mean mouth (the subject's mean expression in every frame) and
retrieval of the training frame with the nearest audio window (L2 over the normalised log-mel
window), its expression placed the same way.
"""

import os

import numpy as np
from PIL import Image, ImageDraw

from eval import follow, report
from vpgc_jax import expression, runs, writers
from vpgc_jax.data import frames as frames_lib

LMD_SIZE = 512  # pixels the landmark distances are given at


def smooth(coefficients: np.ndarray, frames: int) -> np.ndarray:
    """Centred moving average over `frames` frames (edges use the frames that exist): [T, K]."""
    if frames <= 1 or len(coefficients) < 2:
        return coefficients
    half = frames // 2
    c = np.cumsum(np.pad(coefficients, ((1, 0), (0, 0))), axis=0)
    t = np.arange(len(coefficients))
    lo, hi = np.maximum(t - half, 0), np.minimum(t + half + 1, len(coefficients))
    return (c[hi] - c[lo]) / (hi - lo)[:, None]


def scores(pred: np.ndarray, true: np.ndarray, valid: np.ndarray, size: int) -> dict:
    """Mouth LMD, opening correlation and flicker of a predicted track (see the module docstring).

    Args:
      pred, true: [T, 68, 2] crop pixels at the dataset size `size`.
      valid: [T] bool, frames whose true landmarks were detected.

    Returns:
      {'mouth_lmd', 'lmd' (all 68 points), 'opening_corr' (NaN when either opening is constant),
       'opening_range', 'flicker'}; distances in pixels at 512 px.
    """
    k = LMD_SIZE / float(size)
    p, t = pred[valid] * k, true[valid] * k
    dist = np.linalg.norm(p - t, axis=-1)  # [T', 68]
    op, ot = follow.mouth_opening(p), follow.mouth_opening(t)
    mp, mt = pred[:, follow.MOUTH] * k, true[:, follow.MOUTH] * k
    flicker = np.abs(np.diff(mp, axis=0)).mean() / max(np.abs(np.diff(mt, axis=0)).mean(), 1e-9)
    return {
        "mouth_lmd": float(dist[:, follow.MOUTH].mean()),
        "lmd": float(dist.mean()),
        "opening_corr": follow.pearson(op, ot),
        "opening_range": float(op.std() / max(ot.std(), 1e-9)),
        "flicker": float(flicker),
    }


def nearest_audio(train_mel: np.ndarray, test_mel: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Index of the training frame with the nearest audio window, per test frame: [T] int.

    Args:
      train_mel: [N, W, M] training windows.
      test_mel: [T, W, M] query windows.
    """
    a = train_mel.reshape(len(train_mel), -1).astype(np.float32)
    a2 = np.sum(a * a, axis=1)
    out = []
    for i in range(0, len(test_mel), chunk):
        q = test_mel[i : i + chunk].reshape(-1, a.shape[1]).astype(np.float32)
        out.append(np.argmin(a2[None] - 2.0 * q @ a.T, axis=1))
    return np.concatenate(out)


def baseline_tracks(
    basis: expression.ExpressionBasis, dataset_dir: str, test_mel=None, poses=None
) -> dict[str, np.ndarray]:
    """The baselines' landmark tracks on a dataset's test split (see the module docstring).

    Args:
      basis: the subject's expression basis.
      dataset_dir: the subject's prepared dataset (with audio features).
      test_mel: its test windows, if already loaded.
      poses: the test frames' transforms (`ExpressionBasis.track`), if already computed.

    Returns:
      {'mean_mouth': [T, 68, 2], 'nearest_audio': [T, 68, 2]} float32 crop pixels.
    """
    if test_mel is None:
        test_mel = frames_lib.load_audio(dataset_dir, "test")
    if poses is None:
        poses = basis.track(frames_lib.load_landmarks(dataset_dir, "test")["landmarks"]).transforms
    train = frames_lib.load_landmarks(dataset_dir, "train")
    keep = np.flatnonzero(train["valid"])
    train_expr = basis.track(train["landmarks"][keep]).expressions
    nearest = nearest_audio(frames_lib.load_audio(dataset_dir, "train")[keep], test_mel)
    return {
        "mean_mouth": basis.place(np.zeros((len(test_mel), 68, 2)), poses),
        "nearest_audio": basis.place(train_expr[nearest], poses),
    }


class AudioEvaluator:
    """Held-out scores of an audio-to-expression model on a dataset's test split.

    Args:
      config: the run's config (dataset_dir, smooth_frames, eval_batch_size).
      basis: the run's `ExpressionBasis`.
      predict_fn: ``predict_fn(params, mel [B, W, M]) -> coefficients [B, K]`` (jitted).
      mesh: the data mesh the batches are split over.
    """

    def __init__(self, config, basis: expression.ExpressionBasis, predict_fn, mesh):
        self.config, self.basis = config, basis
        self.size = int(frames_lib.load_meta(config.dataset_dir)["size"])
        self.test_mel = frames_lib.load_audio(config.dataset_dir, "test")
        test = frames_lib.load_landmarks(config.dataset_dir, "test")
        self.true, self.valid = test["landmarks"], test["valid"]
        self.poses = basis.track(self.true).transforms  # [T] canonical -> pixels
        step = mesh.size
        bs = max(config.eval_batch_size, step)
        self.predict = runs.Batched(predict_fn, mesh, bs + (-bs) % step)

    def predict_track(self, params) -> np.ndarray:
        """[T, 68, 2] float32 predicted landmarks of the test split, in its own head poses."""
        coefficients = smooth(self.predict.over(params, self.test_mel), self.config.smooth_frames)
        return self.basis.place(self.basis.decode(coefficients), self.poses)

    def evaluate(self, params, final: bool = False) -> dict:
        """The model's scores (`scores`); with `final`, also the baselines' (`baselines`)."""
        out = scores(self.predict_track(params), self.true, self.valid, self.size)
        if final:
            out["baselines"] = self.baselines()
        return out

    def baselines(self) -> dict:
        """{'mean_mouth': scores, 'nearest_audio': scores} on the same frames."""
        tracks = baseline_tracks(self.basis, self.config.dataset_dir, self.test_mel, self.poses)
        return {k: scores(v, self.true, self.valid, self.size) for k, v in tracks.items()}

    def save_samples(self, params, workdir: str, step: int, writer) -> None:
        """``workdir/samples/audio_{step:06d}.png``: predicted and true mouth opening over the
        test split (pixels at 512 px); also to TensorBoard."""
        k = LMD_SIZE / float(self.size)
        series = {
            "true": follow.mouth_opening(self.true) * k,
            "predicted": follow.mouth_opening(self.predict_track(params)) * k,
        }
        image = opening_plot(series, f"mouth opening at step {step} (px at {LMD_SIZE} px)")
        path = os.path.join(workdir, "samples", f"audio_{step:06d}.png")
        writers.save_png(path, image)
        writer.write_image(step, "samples/mouth_opening", image)


def opening_plot(series: dict[str, np.ndarray], title: str) -> np.ndarray:
    """A uint8 [H, W, 3] plot of each series against the test frame."""
    font = report._font(14)
    width, height, margin = 900, 380, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    box = (margin, 40, width - 20, height - 90)
    data = {
        name: {"frame": list(range(len(v))), "opening": [float(x) for x in v]}
        for name, v in series.items()
    }
    report._panel(draw, box, data, "opening", title, font, x_key="frame", x_label="test frame")
    y = height - 40
    x = margin
    for colour, label in zip(report.COLOURS, series, strict=False):
        draw.line([(x, y + 8), (x + 30, y + 8)], fill=colour, width=3)
        draw.text((x + 40, y), label, fill="black", font=font)
        x += 200
    return np.asarray(image)
