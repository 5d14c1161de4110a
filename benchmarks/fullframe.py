"""Full-frame reenactment at 1080p on CPU: wall time with and without paste-back, and peak memory.

  python benchmarks/fullframe.py --work /tmp/ff1080 [--frames 300] [--driver STAGE2_DIR]

1. Makes a 1920x1080 clip from the macron sample (`make_wide_clip`: the 512 px clip enlarged to
   1080 px high on a static blurred 16:9 border, with its audio) and prepares it at 128 px.
2. Unless `--driver` is given, trains `configs/{codebook,driver}.py:cpu128` for one step each on it
   (time does not depend on the weights).
3. Prints the CRF table (the clip re-encoded as it is), then runs the cross-reenactment driven by
   the macron clip itself (30 fps like the subject; 600 frames, ping-pong over the subject's 300),
   each in its own process, back to back: crop only, full frame, crop only, full frame; then full
   frame with 150 and 900 frames, to show that peak memory does not grow with length. Prints one
   row per run (wall s, CPU s of the process, peak RSS MiB) and the summary, and writes still.png
   (`still`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import av
import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vpgc_jax import fullframe, video_out  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(ROOT), "shared", "data", "portraits")


def make_wide_clip(
    source: str,
    out: str,
    size: tuple[int, int],
    scale: float,
    offset: tuple[int, int],
    max_frames: int,
    crf: int = 16,
) -> None:
    """Writes a wider video made from `source`: its frames scaled on a static border.

    Args:
      source: a video (the sample clips); its audio is copied.
      out: the mp4 to write.
      size: (width, height) of the new frames in pixels.
      scale: the source frames' enlargement.
      offset: (x, y) of the scaled frame's top-left corner; the part outside the frame is cut.
      max_frames: frames to write.
      crf: H.264 quality.

    The border is the first frame, stretched over the whole frame and blurred, the same in every
    frame (a static camera's background).
    """
    width, height = size
    x, y = offset
    with av.open(source) as container:
        stream = container.streams.video[0]
        writer = video_out.Mp4Writer(
            out, stream.average_rate, audio_from=source, crf=crf, preset="veryfast"
        )
        with writer:
            border = None
            for i, frame in enumerate(container.decode(stream)):
                if i >= max_frames:
                    break
                rgb = frame.to_ndarray(format="rgb24")
                if border is None:
                    border = cv2.GaussianBlur(cv2.resize(rgb, (width, height)), (0, 0), 12)
                big = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
                canvas = border.copy()
                h, wd = big.shape[:2]
                x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + wd, width), min(y + h, height)
                canvas[y0:y1, x0:x1] = big[y0 - y : y1 - y, x0 - x : x1 - x]
                writer.write(canvas)


def train_tiny_runs(dataset: str, work: str) -> str:
    """One-step `cpu128` stage-1 and stage-2 runs on `dataset`; returns the driver run."""
    from configs import codebook as cb_config
    from configs import driver as drv_config
    from vpgc_jax.trainers import codebook, driver

    cb_dir, drv_dir = os.path.join(work, "cb"), os.path.join(work, "drv")
    if not os.path.isdir(os.path.join(drv_dir, "checkpoints")):
        config = cb_config.get_config("cpu128")
        config.update(dict(dataset_dir=dataset, num_steps=1, eval_every=0, final_eval=False))
        codebook.train_and_evaluate(config, cb_dir)
        config = drv_config.get_config("cpu128")
        config.update(dict(codebook_workdir=cb_dir, num_steps=1, eval_every=0, final_eval=False))
        driver.train_and_evaluate(config, drv_dir)
    return drv_dir


def crf_rows(clip: str, work: str, frames: int = 60) -> list[str]:
    """Re-encodes the clip's first frames as they are (yuv420p) at several CRFs: the error full
    frame adds to an untouched background. Returns markdown rows."""
    with av.open(clip) as c:
        source = [f for _, f in zip(range(frames), c.decode(video=0), strict=False)]
        fps = c.streams.video[0].average_rate
    ref = np.stack([f.to_ndarray(format="rgb24") for f in source]).astype(np.float64)
    rows = []
    for crf in (12, 14, 16, 18, 20):
        out = os.path.join(work, f"crf{crf}.mp4")
        t = time.perf_counter()
        with video_out.Mp4Writer(out, fps, crf=crf, preset=fullframe.PRESET) as writer:
            for f in source:
                writer.write(f.reformat(format="yuv420p"))
        enc_ms = 1e3 * (time.perf_counter() - t) / frames
        with av.open(out) as c:
            got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        d = got.astype(np.float64) - ref
        psnr = 10 * np.log10(255**2 / np.mean(d**2))
        mbps = os.path.getsize(out) * 8 / (frames / float(fps)) / 1e6
        rows.append(
            f"| {crf} | {np.abs(d).mean():.2f} | {np.abs(d.mean(axis=(0, 1, 2))).max():.3f} | "
            f"{np.percentile(np.abs(d), 99.9):.0f} | {psnr:.1f} | {mbps:.1f} | {enc_ms:.0f} |"
        )
    return rows


def still(dataset: str, out: str, index: int, width: int = 640) -> None:
    """Pastes the dataset's own crop of frame `index` (what a perfect model would render at its
    size) into that frame and saves it as a PNG `width` px wide."""
    from vpgc_jax.data import frames as frames_lib

    subject = fullframe.open_subject(dataset)
    split, k = (
        ("train", index) if index < subject.train_frames else ("test", index - subject.train_frames)
    )
    crop = frames_lib.open_split(dataset, split)[k]["image"]
    paster = fullframe.Paster(subject, np.array([index]), fullframe.FEATHER)
    rgb = paster(crop).to_ndarray(format="rgb24")
    paster.close()
    h = round(rgb.shape[0] * width / rgb.shape[1])
    small = cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA)
    cv2.imwrite(out, cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def run_one(argv: list[str]) -> None:
    """Child process: one reenactment; prints a JSON line with wall time and peak RSS."""
    from vpgc_jax import reenact

    t = time.perf_counter()
    summary = reenact.reenact(reenact.parse_args(argv))
    # VmHWM: this process image's peak resident memory (ru_maxrss would include the parent's
    # peak, which a forked child inherits).
    with open("/proc/self/status") as f:
        rss = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024  # MiB
    wall = time.perf_counter() - t
    cpu = sum(os.times()[:2])  # user + system seconds of all this process's threads
    keep = ("frames", "size", "model_fps", "paste_s")
    result = {"wall_s": wall, "cpu_s": cpu, "rss_mib": rss, **{k: summary[k] for k in keep}}
    print("RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--frames", type=int, default=300, help="frames of the 1080p subject clip")
    p.add_argument("--driver", default=None)
    p.add_argument("--one", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        return run_one(args.one)
    os.makedirs(args.work, exist_ok=True)
    clip = os.path.join(args.work, "macron_1080p.mp4")
    if not os.path.isfile(clip):
        src = os.path.join(SAMPLES, "macron_address_512.mp4")
        make_wide_clip(src, clip, (1920, 1080), 1080 / 512, (420, 0), args.frames)
    dataset = os.path.join(args.work, "subject")
    from data_prep import prepare

    assert prepare.main([f"--video={clip}", f"--out={dataset}", "--size=128"]) == 0
    print(
        "| CRF | mean abs error | largest channel shift | 99.9th pct | PSNR dB | Mbit/s "
        "| encode ms/frame |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(crf_rows(clip, args.work)), flush=True)
    drv = args.driver or train_tiny_runs(dataset, args.work)
    # The macron clip itself drives (cross-reenactment, 30 fps like the subject: the same frame
    # count with and without --full-frame), prepared once here and not timed.
    driving = os.path.join(args.work, "driving_macron")
    src = os.path.join(SAMPLES, "macron_address_512.mp4")
    assert prepare.main([f"--video={src}", f"--out={driving}", "--size=128"]) == 0
    base = [f"--driver={drv}", f"--target={dataset}", f"--driving={driving}"]
    rows = []
    plan = [("crop", ["--max-frames=600"]), ("full", ["--full-frame", "--max-frames=600"])] * 2
    plan += [
        ("full, 150 frames", ["--full-frame", "--max-frames=150"]),
        ("full, 900 frames", ["--full-frame", "--max-frames=900"]),
    ]
    still(dataset, os.path.join(args.work, "still.png"), 200)
    for i, (name, extra) in enumerate(plan):
        out = os.path.join(args.work, f"out_{i}.mp4")
        cmd = [sys.executable, __file__, "--work", args.work, "--one", *base, f"--out={out}"]
        res = subprocess.run([*cmd, *extra], capture_output=True, text=True, cwd=ROOT)
        line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        if res.returncode or not line:
            sys.exit(f"run {name} failed:\n{res.stderr[-3000:]}")
        rows.append((name, json.loads(line[0][7:])))
        print(name, rows[-1][1], flush=True)
    cols = (
        "run",
        "frames",
        "size",
        "wall s",
        "CPU s",
        "model frames/s",
        "decode+paste s",
        "peak RSS MiB",
    )
    print("\n| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|")
    for name, r in rows:
        w, h = r["size"]
        print(
            f"| {name} | {r['frames']} | {w}x{h} | {r['wall_s']:.1f} | {r['cpu_s']:.0f} | "
            f"{r['model_fps']:.1f} | {r['paste_s']:.1f} | {r['rss_mib']:.0f} |"
        )
    crop = np.mean([r["wall_s"] for n, r in rows if n == "crop"])
    full = np.mean([r["wall_s"] for n, r in rows if n == "full"])
    print(f"\npaste-back adds {100 * (full / crop - 1):.0f} % (mean of two runs each)")


if __name__ == "__main__":
    main()
