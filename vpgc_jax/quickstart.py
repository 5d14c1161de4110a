"""The main job: one command from a talking-head video to reenactment videos and a report.

  python -m vpgc_jax.quickstart [--video V] [--driving D] [--audio SPEECH] [--out DIR] \
      [--budget 30m|2h] [--codebook-steps N] [--driver-steps N] [--size 128] [--no-full-frame]

Phases, each skipped when its result is already in DIR (so a re-run resumes):

1. prepare the subject video and the driving video (`data_prep`) -> DIR/data/{subject,driving};
2. stage 1 (`configs/codebook.py:cpu128`) -> DIR/runs/codebook;
3. stage 2 (`configs/driver.py:cpu128`) -> DIR/runs/driver, and the audio-to-expression model
   (`configs/audio.py:cpu`, issue 20) -> DIR/runs/audio when the subject's clip has audio;
4. the audio-driven video -> DIR/videos/audio.mp4: the subject speaking ``--audio`` (any file
   PyAV reads), or by default its own held-out audio (`vpgc_jax.reenact --audio`); then
   self-reenactment of the subject's test split and cross-reenactment with the driving video
   -> DIR/videos/{self,cross}.mp4 (driving | heatmap | result), and the cross-reenactment pasted
   into the subject's own video at its resolution -> DIR/videos/cross_full_frame.mp4
   (``vpgc_jax.reenact --full-frame``; ``--no-full-frame`` skips it);
5. evaluation (`eval.evaluate`) -> DIR/report/{report.md,metrics.json}: held-out self-reenactment
   (landmark- and audio-driven) against baselines, the audio model's lips against its baselines,
   and whether the cross-reenactment follows the driving clip's mouth.

Defaults: the shared sample clips (macron as the subject, the news anchor as the driver) when
``../shared/data`` exists next to the repository. The default budget ('30m') is sized for a 2-core
CPU to finish in about 30 minutes; ``--budget 2h`` trains longer for better models, and the step
flags set any length.
"""

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from absl import logging as absl_logging

from vpgc_jax import outputs

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "portraits"
DEFAULT_VIDEO = SAMPLES / "macron_address_512.mp4"
DEFAULT_DRIVING = SAMPLES / "news_anchor_de_512.mp4"
# --budget presets: (stage-1 steps, stage-2 steps). '30m' fits about 30 minutes of a 2-core CPU
# (benchmarks/RESULTS.md, Quickstart; stage 1 at batch 2, so 500 steps are the 250 of batch 4 it
# was sized with); '2h' trains ~5x / 3x longer for about two hours there (the stage-1 GAN term of
# configs/codebook.py:cpu128 starts at step 2000).
BUDGETS = {"30m": (500, 1000), "2h": (2400, 3000)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vpgc_jax.quickstart", description=__doc__.split("\n")[0]
    )
    p.add_argument("--video", default=None, help="the subject's video (default: the sample clip)")
    p.add_argument("--driving", default=None, help="a driving video of someone else")
    p.add_argument(
        "--audio",
        default=None,
        help="speech for videos/audio.mp4 (default: the subject's own held-out audio)",
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--size", type=int, default=128, help="crop side in pixels (the cpu configs)")
    p.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default="30m",
        help="training-length preset (stage-1 / stage-2 steps): "
        + "; ".join(f"{k}: {v[0]} / {v[1]}" for k, v in BUDGETS.items()),
    )
    p.add_argument(
        "--codebook-steps",
        type=int,
        default=None,
        help="stage-1 training steps (overrides --budget)",
    )
    p.add_argument(
        "--driver-steps", type=int, default=None, help="stage-2 training steps (overrides --budget)"
    )
    p.add_argument(
        "--cross-frames", type=int, default=300, help="frames of the cross-reenactment video"
    )
    p.add_argument("--max-frames", type=int, default=0, help="use only the first N video frames")
    p.add_argument("--eval-frames", type=int, default=0, help="score at most N test frames")
    p.add_argument(
        "--full-frame",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write the cross video in the subject's full frame",
    )
    args = p.parse_args(argv)
    codebook_steps, driver_steps = BUDGETS[args.budget]
    if args.codebook_steps is None:
        args.codebook_steps = codebook_steps
    if args.driver_steps is None:
        args.driver_steps = driver_steps
    return args


def resolve_inputs(args) -> tuple[str, str | None]:
    """(subject video, driving video or None).

    Raises:
      SystemExit: no --video and no sample data to default to.
    """
    video = args.video or (str(DEFAULT_VIDEO) if DEFAULT_VIDEO.is_file() else None)
    if video is None:
        raise SystemExit(
            f"error: no --video given and the sample clips are not at {SAMPLES}; "
            "run `python -m vpgc_jax.quickstart --video YOUR_CLIP.mp4 [--driving OTHER.mp4]`"
        )
    driving = args.driving
    if driving is None and args.video is None and DEFAULT_DRIVING.is_file():
        driving = str(DEFAULT_DRIVING)
    return video, driving


class Phases:
    """Runs named phases, timing each; prints one line per phase."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - t
        print(f"=== {name}: {self.times[name]:.0f} s ===", flush=True)
        return out

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t0


def prepare(video: str, out: str, size: int, max_frames: int) -> None:
    from data_prep import prepare as prep

    argv = [f"--video={video}", f"--out={out}", f"--size={size}"]
    if max_frames:
        argv.append(f"--max-frames={max_frames}")
    code = prep.main(argv)
    if code:
        raise SystemExit(code)


def finished(workdir: str, num_steps: int) -> bool:
    return os.path.isdir(os.path.join(workdir, "checkpoints", str(num_steps)))


def train(
    stage: str,
    workdir: str,
    steps: int,
    checkpoint_every: int = 0,
    variant: str = "cpu128",
    **fields,
) -> None:
    """Trains `configs/<stage>.py:<variant>` with `fields` set for `steps` steps (skipped if done).

    Periodic and final evaluations are off: `eval.evaluate` scores the runs at the end. A
    checkpoint is saved at the end and every `checkpoint_every` steps (0: only at the end); a
    stopped run resumes from the last one (the app's jobs use this).
    """
    from vpgc_jax import train as train_lib

    if finished(workdir, steps):
        print(f"{workdir}: already trained to step {steps}")
        return
    config = importlib.import_module(f"configs.{stage}").get_config(variant)
    config.update(fields)
    config.num_steps = steps
    config.eval_every = 0
    config.checkpoint_every = checkpoint_every or steps
    config.final_eval = False
    train_lib.train_and_evaluate(config, workdir)


def reenact(
    driver_run: str, target: str, driving: str, out: str, max_frames: int, view="--side-by-side"
) -> dict:
    from vpgc_jax import reenact as reenact_lib

    argv = [f"--driver={driver_run}", f"--target={target}", f"--driving={driving}", f"--out={out}"]
    argv.append(view)
    if max_frames:
        argv.append(f"--max-frames={max_frames}")
    return reenact_lib.reenact(reenact_lib.parse_args(argv))


def audio_status(dataset: str) -> str | None:
    """None when the prepared subject has audio features, else why not (meta.json's reason)."""
    from vpgc_jax.data import frames as frames_lib

    audio = frames_lib.load_meta(dataset).get("audio") or {}
    return None if audio.get("features") else audio.get("reason", "no audio features")


def check_speech(speech: str) -> None:
    """Exits with one line when `speech` holds no usable audio (`data_prep.audio`).

    Raises:
      SystemExit: no such file, no audio stream, not audio, or silence.
    """
    from data_prep import audio as audio_lib

    try:
        audio_lib.read_speech(outputs.resolve(speech))
    except audio_lib.AudioError as e:
        raise SystemExit(f"error: {e.path}: {e.reason}") from e


def reenact_audio(driver_run, audio_run, target, audio, out, max_frames) -> dict:
    from vpgc_jax import reenact as reenact_lib

    argv = [f"--driver={driver_run}", f"--audio-model={audio_run}", f"--audio={audio}"]
    argv += [f"--target={target}", f"--out={out}"]
    if max_frames:
        argv.append(f"--max-frames={max_frames}")
    return reenact_lib.reenact(reenact_lib.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    video, driving_video = resolve_inputs(args)
    out = outputs.resolve(args.out)
    data = os.path.join(out, "data")
    subject = os.path.join(data, "subject")
    cb_run = os.path.join(out, "runs", "codebook")
    drv_run = os.path.join(out, "runs", "driver")
    phases = Phases()

    if args.audio:  # before any work: bad speech input fails in a second
        check_speech(args.audio)
    phases.run("prepare subject", prepare, video, subject, args.size, args.max_frames)
    no_audio = audio_status(subject)
    if args.audio and no_audio:  # before any training
        raise SystemExit(
            f"error: {video}: {no_audio}; the audio model learns from the subject's own speech"
        )
    driving_ds = None
    if driving_video:
        driving_ds = os.path.join(data, "driving")
        phases.run("prepare driving video", prepare, driving_video, driving_ds, args.size, 0)
    phases.run(
        "stage 1: grid codebook",
        train,
        "codebook",
        cb_run,
        args.codebook_steps,
        dataset_dir=subject,
    )
    phases.run(
        "stage 2: driver", train, "driver", drv_run, args.driver_steps, codebook_workdir=cb_run
    )
    videos = {}
    audio_run = None
    if no_audio:
        print(f"\nno audio model: {no_audio}")
    else:
        audio_run = os.path.join(out, "runs", "audio")
        config = importlib.import_module("configs.audio").get_config("cpu")
        phases.run(
            "audio model",
            train,
            "audio",
            audio_run,
            config.num_steps,
            variant="cpu",
            dataset_dir=subject,
        )
        videos["audio"] = phases.run(
            "audio-driven reenactment",
            reenact_audio,
            drv_run,
            audio_run,
            subject,
            outputs.resolve(args.audio) if args.audio else subject,
            os.path.join(out, "videos", "audio.mp4"),
            0 if args.audio else args.eval_frames,
        )
    videos["self"] = phases.run(
        "self-reenactment",
        reenact,
        drv_run,
        subject,
        subject,
        os.path.join(out, "videos", "self.mp4"),
        args.eval_frames,
    )
    if driving_ds:
        videos["cross"] = phases.run(
            "cross-reenactment",
            reenact,
            drv_run,
            subject,
            driving_ds,
            os.path.join(out, "videos", "cross.mp4"),
            args.cross_frames,
        )
        if args.full_frame:
            videos["cross_full_frame"] = phases.run(
                "cross-reenactment, full frame",
                reenact,
                drv_run,
                subject,
                driving_ds,
                os.path.join(out, "videos", "cross_full_frame.mp4"),
                args.cross_frames,
                "--full-frame",
            )

    from eval import evaluate as evaluate_lib

    report_dir = os.path.join(out, "report")
    metrics = phases.run(
        "evaluation",
        evaluate_lib.evaluate,
        cb_run,
        subject,
        report_dir,
        driver_dir=drv_run,
        max_frames=args.eval_frames,
        driving=[driving_ds] if driving_ds else [],
        driving_frames=args.cross_frames,
        audio_model_dir=audio_run,
    )
    summary = {
        "video": video,
        "driving": driving_video,
        "phases_s": {k: round(v, 1) for k, v in phases.times.items()},
        "total_s": round(phases.total, 1),
        "videos": {k: v["out"] for k, v in videos.items()},
        "report": os.path.join(report_dir, "report.md"),
    }
    with open(os.path.join(out, "quickstart.json"), "w") as f:
        json.dump({**summary, "metrics": metrics}, f, indent=2, default=str)
    print(f"\nquickstart finished in {phases.total / 60:.1f} min; outputs in {out}")
    for name, seconds in phases.times.items():
        print(f"  {name:<24} {seconds:7.0f} s")
    report_md = os.path.join(report_dir, "report.md")
    if os.path.isfile(report_md):
        print("\n" + Path(report_md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
