"""Reenactment: a driving video (or dataset) -> an mp4 of the target person.

  python -m vpgc_jax.reenact --driver STAGE2_DIR [--codebook STAGE1_DIR] --target DATASET_DIR \
      --driving VIDEO_OR_DATASET --out OUT.mp4 [--transfer both|expression|pose] \
      [--side-by-side | --full-frame [--subject-video V] [--feather F]] [--crf N] \
      [--batch N] [--max-frames N]
  python -m vpgc_jax.reenact --driver STAGE2_DIR --audio-model AUDIO_RUN --audio SPEECH_OR_DATASET \
      --target DATASET_DIR --out OUT.mp4 [--pose subject|still|video:PATH] [--full-frame ...]

* Self-reenactment: ``--driving`` is the target dataset itself; its test split's landmarks drive
  the model directly (ground truth exists; `eval.evaluate` scores it).
* Cross-reenactment: any other video (prepared with `data_prep` into ``OUT_driving/``, reused on
  later runs) or prepared dataset (all its frames, train then test). Its landmarks are retargeted
  into the target's identity (`vpgc_jax.retarget`): ``both`` (default) takes the driver's
  expression and head pose, ``expression`` keeps the target's own pose track (its test split),
  ``pose`` keeps the target's own expressions. 2-D landmarks see yaw and pitch as shape change, so
  those travel with the expression (see `vpgc_jax.retarget`).

Heatmaps are drawn from the (retargeted) landmarks with the data-prep drawer as 7-frame stacks;
driver -> codebook -> decoder run as one jitted function of a fixed batch size (the last batch is
padded: no recompilation). The mp4 is H.264 at the driving fps, with the driving video's audio
(from the matching offset) when it has audio; ``--side-by-side`` writes driving frame | heatmap |
result. Nothing is left at ``--out`` unless the whole video was written.

Audio driving (``--audio``, issue 20): the audio model (``configs/audio.py``, trained on the
target's own clip) turns speech into the target's landmarks (`vpgc_jax.audio_drive`): expression
from the audio, head pose from the target's own test frames (``--pose subject``, with their blinks),
its mean pose (``still``) or another video's head motion (``video:PATH``), ping-pong looped when the
audio is longer. ``--audio`` is any file PyAV reads (resampled to 16 kHz; no audio stream, silence
or a file that is not audio is one error line), or a prepared dataset, whose held-out audio drives
it (the target's own: an audio-driven self-reenactment). The mp4 is at the target's frame rate and
carries that audio.

``--full-frame`` writes the target's original video instead of the crop: its resolution and frame
rate, each generated crop resized to the crop box and blended into the source frame with a
feathered border (`vpgc_jax.fullframe`, `vpgc_jax.paste`). The background is the same frame of the
source for self-reenactment; for cross-reenactment the source's frames in order, ping-pong looped
when the driving clip is longer, and the retargeted track is resampled to the target's frame rate.
The source is the video recorded in the dataset's meta.json, or ``--subject-video`` when it moved;
it must be that video (size, frame count, SHA-256).
"""

import argparse
import collections
import dataclasses
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction

import numpy as np
from absl import logging as absl_logging
from tqdm import tqdm

from data_prep import PrepareError
from vpgc_jax import audio_drive, fullframe, images, outputs, runs, video_out
from vpgc_jax import retarget as retarget_lib
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import heatmaps as heatmaps_lib
from vpgc_jax.inference import RunMismatchError, load_reenactor

# Model results waiting for the background thread that composites and encodes them.
PENDING_BATCHES = 2


class ReenactError(Exception):
    """Bad reenactment input; the message names the file and the problem."""


@dataclasses.dataclass
class Driving:
    """The driving sequence.

    Attributes:
      dataset_dir: its prepared dataset.
      splits: the splits used, in order ('test' for self-reenactment, else 'train', 'test').
      landmarks: [T, 68, 2] float32 crop pixels at the dataset size.
      fps: frame rate.
      audio_path: the source video when it has audio, else None.
      audio_start_s: where the first frame is in the source, seconds.
      is_target: the driving dataset is the target dataset (self-reenactment).
    """

    dataset_dir: str
    splits: tuple[str, ...]
    landmarks: np.ndarray
    fps: Fraction
    audio_path: str | None
    audio_start_s: float
    is_target: bool

    def frames(self):
        """Yields the driving frames, uint8 [S, S, 3], in order."""
        for split in self.splits:
            source = frames_lib.open_split(self.dataset_dir, split)
            for i in range(len(source)):
                yield source[i]["image"]


def is_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "meta.json"))


def prepare_driving_video(video: str, cache_dir: str, size: int) -> str:
    """Prepares a driving video with data_prep (crop, landmarks); reuses an identical one.

    Raises:
      ReenactError: the video is unreadable or has no usable face (data_prep's message).
    """
    from data_prep import prepare

    try:
        return prepare.prepare_cached(video, cache_dir, size)
    except (PrepareError, outputs.OutputError) as e:
        raise ReenactError(f"driving video: {e}") from e


def load_driving(driving: str, target_dir: str, cache_dir: str) -> Driving:
    """The driving landmarks, frame rate and audio of a video or a prepared dataset.

    Raises:
      ReenactError: a missing path, or a video data_prep cannot use.
    """
    if not os.path.exists(driving):
        raise ReenactError(f"{driving}: driving video or dataset not found")
    target_meta = frames_lib.load_meta(target_dir)
    if is_dataset(driving):
        dataset_dir = driving
    else:
        dataset_dir = prepare_driving_video(driving, cache_dir, int(target_meta["size"]))
    meta = frames_lib.load_meta(dataset_dir)
    is_target = os.path.samefile(dataset_dir, target_dir)
    splits = ("test",) if is_target else ("train", "test")
    landmarks = np.concatenate(
        [frames_lib.load_landmarks(dataset_dir, s)["landmarks"] for s in splits]
    ).astype(np.float32)
    fps = Fraction(float(meta["fps"])).limit_denominator(1001)
    source = meta.get("source", {}).get("path")
    audio = source if meta.get("has_audio") and source and os.path.isfile(source) else None
    if meta.get("has_audio") and audio is None:
        print(f"warning: the driving source {source} is gone; writing without audio")
    start = meta["train_frames"] / float(meta["fps"]) if is_target else 0.0
    return Driving(dataset_dir, splits, landmarks, fps, audio, start, is_target)


def target_landmarks(driving: Driving, target_dir: str, transfer: str) -> np.ndarray:
    """Landmarks [T, 68, 2] in the target's crop pixels that drive the target."""
    if driving.is_target:
        if transfer != "both":
            raise ReenactError("--transfer expression|pose needs a driving video of someone else")
        return driving.landmarks
    train = frames_lib.load_landmarks(target_dir, "train")["landmarks"]
    test = frames_lib.load_landmarks(target_dir, "test")["landmarks"]
    try:
        return retarget_lib.retarget(driving.landmarks, train, transfer, target_track=test)
    except ValueError as e:
        raise ReenactError(f"{driving.dataset_dir}: cannot retarget its landmarks ({e})") from e


def check_writable(out: str) -> None:
    """Fails early (before any work) when `out` cannot be written.

    Raises:
      ReenactError: `out` is a directory, or its directory cannot be made or written.
    """
    if os.path.isdir(out):
        raise ReenactError(f"{out}: is a directory; give an .mp4 path")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ReenactError(f"{out}: cannot create its directory ({e})") from e
    if not os.access(parent, os.W_OK):
        raise ReenactError(f"{out}: directory {parent} is not writable")


def reenact(args: argparse.Namespace) -> dict:
    """Runs one reenactment (see the module docstring); returns its summary.

    Raises:
      ReenactError, RunMismatchError, FileNotFoundError, video_out.OutputError: bad input.
    """
    t_start = time.perf_counter()
    if not is_dataset(args.target):
        raise ReenactError(f"{args.target}: not a prepared dataset (no meta.json)")
    out = os.path.abspath(args.out)
    check_writable(out)
    subject = None
    if args.full_frame:
        try:
            subject = fullframe.open_subject(args.target, args.subject_video)
        except fullframe.SubjectVideoError as e:
            raise ReenactError(str(e)) from e
    cache = args.driving_cache or os.path.splitext(out)[0] + "_driving"
    reenactor = load_reenactor(args.driver, args.codebook, batch=args.batch)
    r = reenactor.resolution
    if args.audio:
        track = audio_drive.audio_track(
            runs.load_audio_model(args.audio_model), args.audio, args.target, args.pose, cache
        )
        driving = Driving(
            args.target,
            (),
            track.landmarks,
            track.fps,
            track.audio_path,
            track.audio_start_s,
            track.held_out,
        )
        lms, mode = track.landmarks, f"audio, pose {args.pose}"
    else:
        driving = load_driving(args.driving, args.target, cache)
        lms = target_landmarks(driving, args.target, args.transfer)
        mode = "self" if driving.is_target else f"cross ({args.transfer})"
    fps = driving.fps
    if subject is not None:  # at the target's frame rate (the same video for self-reenactment)
        lms = fullframe.resample_track(lms, driving.fps, subject.fps)
        fps = subject.fps
    if args.max_frames:
        lms = lms[: args.max_frames]
    lms = lms * (r / float(frames_lib.load_meta(args.target)["size"]))  # at the model resolution
    n = len(lms)

    model_s, timed_frames, written = 0.0, 0, 0
    driving_frames = driving.frames()
    paster, crf, preset = None, 18, "medium"
    if subject is not None:
        order = (
            subject.train_frames + np.arange(n)
            if driving.is_target
            else fullframe.ping_pong(subject.num_frames, n)
        )
        paster = fullframe.Paster(subject, order, args.feather)
        crf, preset = fullframe.CRF, fullframe.PRESET
    crf = crf if args.crf is None else args.crf

    def emit(result: np.ndarray, heatmaps: np.ndarray) -> int:
        """Composes (side by side, or pasted into the full frame) and encodes one batch [B, R,
        R, 3] uint8 with its heatmaps [B, R, R]; returns B."""
        for frame, heatmap in zip(result, heatmaps, strict=True):
            if args.side_by_side:
                frame = video_out.side_by_side(next(driving_frames), heatmap, frame)
            writer.write(frame if paster is None else paster(frame))
        return len(result)

    with video_out.Mp4Writer(
        out,
        fps,
        audio_from=driving.audio_path,
        audio_start_s=driving.audio_start_s,
        crf=crf,
        preset=preset,
    ) as writer:
        bar = tqdm(total=n, desc="reenact", unit="frame", dynamic_ncols=True)
        # Decoding, compositing and encoding run on one background thread, a batch behind the
        # model (FFmpeg, OpenCV and XLA release the GIL), so they use the CPU time the model
        # leaves idle; at most `PENDING_BATCHES` results wait for it.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reenact-write")
        pending: collections.deque[Future] = collections.deque()
        try:
            for first in range(0, n, reenactor.batch):
                idx = range(first, min(first + reenactor.batch, n))
                stacks = np.stack([heatmaps_lib.heatmap_stack(lms, t, r) for t in idx])
                t0 = time.perf_counter()
                result = images.to_uint8(reenactor.drive(stacks, lms[idx.start : idx.stop]))
                if first:  # the first call compiles
                    model_s += time.perf_counter() - t0
                    timed_frames += len(idx)
                pending.append(pool.submit(emit, result, stacks[..., 3]))
                while len(pending) > PENDING_BATCHES or (pending and pending[0].done()):
                    written += pending.popleft().result()  # re-raises the thread's error
                bar.update(len(idx))
            while pending:
                written += pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # before the writer closes or discards
            bar.close()
    if paster is not None:
        paster.close()
    total_s = time.perf_counter() - t_start
    summary = {
        "out": out,
        "frames": written,
        "fps": float(fps),
        "size": writer.summary.size,
        "crf": crf,
        "audio": writer.summary.audio,
        "model_fps": timed_frames / model_s if model_s else float("nan"),
        "end_to_end_fps": written / total_s,
        "mode": mode,
        "driver_step": reenactor.driver_step,
        "codebook_step": reenactor.codebook_step,
        "paste_s": paster.seconds if paster else 0.0,
    }
    w, h = writer.summary.size
    model_rate = (
        f"{summary['model_fps']:.1f} frames/s (batch {reenactor.batch}, after compilation)"
        if model_s
        else "not timed (one batch: all of it was compilation)"
    )
    print(
        f"wrote {out}: {written} frames of {w}x{h} at {float(fps):g} fps "
        f"({summary['mode']}, audio: {summary['audio'] or 'none'}); model-only {model_rate}, "
        f"end to end {summary['end_to_end_fps']:.1f} frames/s"
    )
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vpgc_jax.reenact", description=__doc__.split("\n")[0]
    )
    p.add_argument("--driver", required=True, help="stage-2 run directory")
    p.add_argument(
        "--codebook", default=None, help="stage-1 run directory (default: the driver's own)"
    )
    p.add_argument("--target", required=True, help="the target person's prepared dataset")
    p.add_argument("--driving", help="driving video, or a prepared dataset")
    p.add_argument(
        "--audio",
        help="drive by speech instead: an audio (or video) file, or a prepared dataset's held-out "
        "audio (needs --audio-model)",
    )
    p.add_argument("--audio-model", help="audio-model run directory (configs/audio.py)")
    p.add_argument(
        "--pose",
        default="subject",
        help="with --audio: head pose from the target's test frames (subject), its mean pose "
        "(still), or another video's head motion (video:PATH)",
    )
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--transfer", choices=retarget_lib.MODES, default="both")
    p.add_argument("--side-by-side", action="store_true", help="driving | heatmap | result")
    p.add_argument(
        "--full-frame",
        action="store_true",
        help="paste the result into the target's source video (its size and frame rate)",
    )
    p.add_argument(
        "--subject-video",
        default=None,
        help="the target's source video when it moved (default: the path in its meta.json)",
    )
    p.add_argument(
        "--feather",
        type=float,
        default=fullframe.FEATHER,
        help="full-frame blend band, fraction of the crop side",
    )
    p.add_argument(
        "--crf",
        type=int,
        default=None,
        help=f"H.264 quality, 0 (lossless) .. 51 (default 18; {fullframe.CRF} with --full-frame)",
    )
    p.add_argument("--batch", type=int, default=8, help="frames per model call")
    p.add_argument("--max-frames", type=int, default=0, help="render only the first N frames")
    p.add_argument(
        "--driving-cache", default=None, help="where a driving video is prepared (OUT_driving/)"
    )
    args = p.parse_args(argv)
    if bool(args.driving) == bool(args.audio):
        p.error("give one of --driving (a video or dataset) and --audio (speech)")
    if args.audio and not args.audio_model:
        p.error("--audio needs --audio-model (a run of configs/audio.py)")
    if args.audio and args.side_by_side:
        p.error("--side-by-side shows driving frames; --audio has none")
    if args.audio:
        try:
            audio_drive.check_pose(args.pose)
        except audio_drive.AudioDriveError as e:
            p.error(str(e))
    if args.full_frame and args.side_by_side:
        p.error("--full-frame and --side-by-side exclude each other")
    if args.subject_video and not args.full_frame:
        p.error("--subject-video needs --full-frame")
    if not 0 < args.feather <= 0.5 or not (args.crf is None or 0 <= args.crf <= 51):
        p.error("--feather must be in (0, 0.5] and --crf in 0..51")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in (
        "driver",
        "codebook",
        "target",
        "driving",
        "out",
        "driving_cache",
        "audio",
        "audio_model",
    ):
        if getattr(args, name):  # ~ and relative paths (orbax needs absolute ones)
            setattr(args, name, outputs.resolve(getattr(args, name)))
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's read-only restore notices
    try:
        for source in (args.driving or args.audio, args.target):
            if os.path.exists(args.out) and os.path.exists(source):
                if os.path.samefile(args.out, source):
                    raise ReenactError(f"{args.out}: is the input {source}; choose another --out")
        outputs.check_writable(args.out)
        with outputs.lock(args.out):
            reenact(args)
    except (
        ReenactError,
        audio_drive.AudioDriveError,
        RunMismatchError,
        FileNotFoundError,
        video_out.OutputError,
        outputs.OutputError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
