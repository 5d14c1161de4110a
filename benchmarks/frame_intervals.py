"""Frame-interval spread of constant- and variable-rate clips: where `VFR_TOLERANCE` comes from.

  python benchmarks/frame_intervals.py [--data ../shared/data/portraits] [--out DIR]

Measures each sample clip, its remux to 1 ms ticks (mkv, stream copy: the timestamp rounding
other containers add) and re-timed copies of the first 90 macron frames, re-encoded at 128 px
with chosen presentation times rounded to 1 ms (constant 30, 60 and 120 fps, phone-like jitter,
30 <-> 24 fps switching, dropped frames; the encoder stores them in 1/16000 s ticks). Prints the
median interval, the largest deviation from it and `data_prep.video.interval_spread` (the
deviation beyond one tick, as a fraction of the median), with the clip's classification at the
current `VFR_TOLERANCE`. Writes nothing outside --out (a temporary directory by default).
"""

import argparse
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep import video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIPS = ("macron_address_512.mp4", "news_anchor_de_512.mp4", "obama_address_450.mp4")
FRAMES = 90


def retimed(name: str) -> list[int]:
    """Presentation times in ms of `FRAMES` frames for each re-timed copy."""
    rng = np.random.default_rng(0)
    base = np.round(np.arange(FRAMES) * 1000 / 30)
    if name.startswith("cfr"):
        fps = int(name.split()[1])
        return np.round(np.arange(FRAMES) * 1000 / fps).astype(int).tolist()
    if name.startswith("jitter"):
        ms = int(name.split("+-")[1].split()[0])
        jitter = rng.integers(-ms, ms + 1, FRAMES)
        return np.maximum.accumulate(base + jitter).astype(int).tolist()
    if name == "30 <-> 24 fps":
        steps = [1000 / 30 if (i // 30) % 2 == 0 else 1000 / 24 for i in range(FRAMES - 1)]
        return np.round(np.concatenate([[0], np.cumsum(steps)])).astype(int).tolist()
    assert name == "dropped frame every 15", name
    steps = [2000 / 30 if i % 15 == 14 else 1000 / 30 for i in range(FRAMES - 1)]
    return np.round(np.concatenate([[0], np.cumsum(steps)])).astype(int).tolist()


RETIMED = (
    "cfr 30 fps",
    "cfr 60 fps",
    "cfr 120 fps",
    "jitter +-2 ms",
    "jitter +-3 ms",
    "30 <-> 24 fps",
    "dropped frame every 15",
)


def write_retimed(src: Path, dst: Path, pts_ms: list[int]) -> None:
    """The first len(pts_ms) frames of `src` at 128 px, H.264 with these times (1 ms ticks)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width = s.height = 128
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, frame in enumerate(inp.decode(video=0)):
            if i == len(pts_ms):
                break
            frame = frame.reformat(width=128, height=128, format="yuv420p")
            frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(s.encode(frame))
        out.mux(s.encode())


def remux_mkv(src: Path, dst: Path) -> None:
    """Stream copy of the video into Matroska, whose timestamps are in 1 ms ticks."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream_from_template(stream_in)
        for packet in inp.demux(stream_in):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)


def measure(path: Path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        steps = video.frame_intervals(container, stream)
        tick_ms = float(stream.time_base) * 1000
    median = float(np.median(steps))
    spread = video.interval_spread(steps)
    return {
        "intervals": len(steps),
        "median_ms": median * tick_ms,
        "max_dev_ms": float(np.max(np.abs(steps - median))) * tick_ms,
        "tick_ms": tick_ms,
        "spread": spread,
        "vfr": spread > video.VFR_TOLERANCE,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "portraits"))
    p.add_argument("--out", default=None, help="where the copies go (default: a temporary dir)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="frame-intervals-"))
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    rows = []
    for clip in CLIPS:
        rows.append((clip, measure(data / clip)))
        mkv = out / (Path(clip).stem + ".mkv")
        remux_mkv(data / clip, mkv)
        rows.append((f"{clip} -> mkv", measure(mkv)))
    for name in RETIMED:
        path = out / (name.replace(" ", "_").replace("<->", "to").replace("+-", "pm") + ".mp4")
        write_retimed(data / CLIPS[0], path, retimed(name))
        rows.append((f"macron, {name}", measure(path)))
    print(f"VFR_TOLERANCE = {video.VFR_TOLERANCE}")
    print("| clip | intervals | tick ms | median ms | max deviation ms | spread | VFR |")
    print("|---|---|---|---|---|---|---|")
    for name, m in rows:
        print(
            f"| {name} | {m['intervals']} | {m['tick_ms']:.4g} | {m['median_ms']:.2f} | "
            f"{m['max_dev_ms']:.2f} | {m['spread']:.3f} | {'yes' if m['vfr'] else 'no'} |"
        )


if __name__ == "__main__":
    main()
