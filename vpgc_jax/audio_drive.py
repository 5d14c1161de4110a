"""Audio -> the subject's landmark track: the audio model's expressions in a chosen head pose.

Used by ``vpgc_jax.reenact --audio`` (issue 20), `eval.evaluate --audio-model` and the quickstart.
Per frame (at the subject dataset's frame rate): the audio window (`data_prep.audio`) -> the
audio model's expression coefficients (`vpgc_jax.models.audio`), smoothed over
``smooth_frames`` -> the subject's mean shape + expression, placed by a head pose:

* ``subject`` (default): the pose of the subject's own held-out (test) frames, with their brows
  and eyes (blinks; speech does not predict them);
* ``still``: the subject's mean pose, mean brows and eyes;
* ``video:PATH``: another video's (or prepared dataset's) head motion, relative to its own mean,
  applied to the subject's mean pose (as `vpgc_jax.retarget` 'both' does for the pose).

When the audio is longer than the pose track, the pose track plays forward, then backward, and so
on (ping-pong: no jump at the loop). The audio source is a media file (any format PyAV reads) or a
prepared dataset, whose held-out audio (its test split) is used.
"""

import dataclasses
import os
from fractions import Fraction

import jax
import numpy as np

from data_prep import PrepareError, prepare
from data_prep import audio as audio_lib
from eval import audio as audio_eval
from vpgc_jax import expression, fullframe, outputs, parallel, retarget, runs
from vpgc_jax.data import frames as frames_lib

POSES = ("subject", "still", "video:PATH")


class AudioDriveError(ValueError):
    """Bad audio-driving input; the message names the file and the problem in one line."""


@dataclasses.dataclass
class AudioTrack:
    """An audio-driven landmark track of the subject.

    Attributes:
      landmarks: [T, 68, 2] float32 crop pixels at the subject dataset's size.
      fps: frame rate (the subject dataset's).
      audio_path: the file whose audio the output carries (None: none available).
      audio_start_s: where frame 0 is in that file, seconds.
      held_out: the audio is the subject's own test split in its own pose (self-reenactment).
      pose: the pose source's description.
    """

    landmarks: np.ndarray
    fps: Fraction
    audio_path: str | None
    audio_start_s: float
    held_out: bool
    pose: str


def check_pose(pose: str) -> str:
    """Returns `pose` if it is 'subject', 'still' or 'video:PATH'.

    Raises:
      AudioDriveError: anything else.
    """
    if pose in ("subject", "still") or (pose.startswith("video:") and len(pose) > 6):
        return pose
    raise AudioDriveError(f"--pose {pose!r}: use subject, still or video:PATH")


def check_subject(run: runs.AudioRun, target_meta: dict, target_dir: str) -> None:
    """Refuses a target prepared from another clip than the audio model's dataset (the model and
    its expression basis are person-specific).

    Raises:
      AudioDriveError: both datasets exist and their source videos differ (SHA-256).
    """
    trained_on = run.config.dataset_dir
    try:
        theirs = frames_lib.load_meta(trained_on)["source"].get("sha256")
    except (FileNotFoundError, ValueError, KeyError):
        return  # the training dataset moved: nothing to compare with
    if theirs and theirs != target_meta.get("source", {}).get("sha256"):
        raise AudioDriveError(
            f"{target_dir}: not the clip the audio model was trained on ({trained_on}); an audio "
            "model is person-specific: train one on the target's dataset"
        )


def audio_windows(run: runs.AudioRun, source: str, fps: float):
    """The audio windows of `source` at `fps`: ([T, W, M] float32, audio path, start s, is dataset).

    Raises:
      AudioDriveError: no such file, no audio stream, not audio, silent, or a dataset without
        audio features; features made with other settings than the run's.
    """
    saved = dict(run.config.features.settings)
    saved.pop("features", None)
    if {k: saved.get(k) for k in audio_lib.settings()} != audio_lib.settings():
        raise AudioDriveError(
            "the audio model was trained on features with other settings than this version's; "
            "re-prepare its dataset and retrain it"
        )
    if os.path.isfile(os.path.join(source, "meta.json")):
        try:
            windows = frames_lib.load_audio(source, "test")
        except frames_lib.NoAudioError as e:
            raise AudioDriveError(str(e)) from e
        meta = frames_lib.load_meta(source)
        path = meta.get("source", {}).get("path")
        if not (path and os.path.isfile(path)):
            print(f"warning: {source}: its source video {path} is gone; writing without audio")
            path = None
        return windows, path, meta["train_frames"] / float(meta["fps"]), True
    try:
        return audio_lib.features(source, fps), source, 0.0, False
    except audio_lib.AudioError as e:
        raise AudioDriveError(f"{e.path}: {e.reason}") from e


def predict_expressions(run: runs.AudioRun, windows: np.ndarray, batch: int = 256) -> np.ndarray:
    """[T, W, M] windows -> [T, 68, 2] float64 canonical expressions (smoothed coefficients)."""
    mesh = parallel.make_mesh()
    batch += (-batch) % mesh.size
    predict = runs.Batched(runs.make_predict_coefficients(run.model), mesh, batch)
    params = jax.device_put(run.params, parallel.replicated(mesh))
    coefficients = audio_eval.smooth(predict.over(params, windows), run.config.smooth_frames)
    return run.basis.decode(coefficients)


def pose_track(
    basis: expression.ExpressionBasis, pose: str, target_dir: str, n: int, cache_dir: str
) -> tuple[retarget.Similarity, np.ndarray | None]:
    """The head poses (canonical -> crop pixels at ``basis.size``) of `n` frames, and the
    upper-face expressions [n, 68, 2] to keep (None: the mean's), ping-pong looped (see the module
    docstring).

    Raises:
      AudioDriveError: a pose video data_prep cannot use, or unusable landmarks.
    """
    if pose == "still":
        return basis.still_pose(n), None
    if pose == "subject":  # in the basis's pixels (its dataset's size)
        scale = basis.size / float(frames_lib.load_meta(target_dir)["size"])
        own = basis.track(frames_lib.load_landmarks(target_dir, "test")["landmarks"] * scale)
        k = fullframe.ping_pong(len(own.shapes), n)
        return own.transforms[k], own.expressions[k]
    path = pose.split(":", 1)[1]
    try:
        dataset = path
        if not os.path.isfile(os.path.join(path, "meta.json")):  # a video: prepared into cache
            if not os.path.exists(path):
                raise AudioDriveError(f"{path}: pose video not found")
            size = int(frames_lib.load_meta(target_dir)["size"])
            dataset = prepare.prepare_cached(path, cache_dir, size)
        lms = np.concatenate(
            [frames_lib.load_landmarks(dataset, s)["landmarks"] for s in frames_lib.SPLITS]
        )
        other = retarget.decompose(lms)
    except (PrepareError, outputs.OutputError, ValueError) as e:
        raise AudioDriveError(f"--pose {pose}: {e}") from e
    k = fullframe.ping_pong(len(other.shapes), n)
    mean = retarget.Similarity(np.asarray(basis.mean_a), np.asarray(basis.mean_b))
    return mean.compose(other.poses[k]), None


def audio_track(
    run: runs.AudioRun, source: str, target_dir: str, pose: str = "subject", cache_dir: str = ""
) -> AudioTrack:
    """The subject's landmarks driven by `source`'s audio (see the module docstring).

    Args:
      run: the restored audio model (`runs.load_audio_model`).
      source: a media file with audio, or a prepared dataset (its held-out audio).
      target_dir: the subject's prepared dataset (the model's subject).
      pose: 'subject', 'still' or 'video:PATH'.
      cache_dir: where a pose video is prepared.

    Raises:
      AudioDriveError: bad audio or pose input (one line).
    """
    check_pose(pose)
    meta = frames_lib.load_meta(target_dir)
    check_subject(run, meta, target_dir)
    fps = float(meta["fps"])
    windows, path, start, is_dataset = audio_windows(run, source, fps)
    held_out = is_dataset and os.path.samefile(source, target_dir) and pose == "subject"
    expressions = predict_expressions(run, windows)
    transforms, upper = pose_track(run.basis, pose, target_dir, len(expressions), cache_dir)
    if upper is not None:
        expressions[:, expression.UPPER_FACE] = upper[:, expression.UPPER_FACE]
    lms = run.basis.place(expressions, transforms) * (float(meta["size"]) / run.basis.size)
    return AudioTrack(lms, Fraction(fps).limit_denominator(1001), path, start, held_out, pose)
