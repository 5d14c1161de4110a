"""Video -> vpgc_jax dataset CLI.

  python -m data_prep.prepare --video clip.mp4 --out DIR [--size 512] [--test-frames N] [--fps F]
      [--max-frames N] [--landmarks dlib|face_alignment] [--crop-scale S] [--smooth W]
      [--max-missing-frac 0.2] [--overwrite]

Phases: scan (decode, sample frames for the face box), crop (one stable box, §3.1 wants pre-cropped
square portraits), landmarks (68 iBUG points per cropped frame, gaps interpolated), audio (per frame
a +-0.2 s window of 80-band log-mel at 16 kHz, `data_prep.audio`, for the audio-to-expression model;
a clip without audio, or with silent or undecodable audio, still prepares, without them), write
(TFDS ArrayRecord, landmarks.npz, audio.npz, meta.json, contact_sheet.png). The last
`--test-frames` frames are the test split (the paper holds out 1000 consecutive frames, Sec. 4.1 of
Wang et al. 2023). Everything is written to a temporary sibling of DIR and renamed into place only
on success. Bad input prints `error: <file>: <reason>` and exits 2.
"""

import argparse
import hashlib
import logging
import os
import shutil
import sys
import time

import numpy as np
from tqdm import tqdm

from data_prep import PrepareError, audio, contact_sheet, crop, landmarks, video, writer
from vpgc_jax import outputs

# Bump when the output changes for the same source and settings (a rerun then rebuilds).
FORMAT_VERSION = "1.2.0"  # 1.2.0: audio.npz
# Arguments that change the output; a rerun with the same values and source is a no-op.
SETTINGS = (
    "size",
    "test_frames",
    "fps",
    "max_frames",
    "landmarks",
    "crop_scale",
    "smooth",
    "max_missing_frac",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m data_prep.prepare", description=__doc__.split("\n")[0]
    )
    p.add_argument("--video", required=True, help="input video (any container FFmpeg reads)")
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--size", type=int, default=512, help="output crop side in pixels")
    p.add_argument(
        "--test-frames",
        type=int,
        default=None,
        help="last N frames are test; default min(1000, 20%%)",
    )
    p.add_argument(
        "--fps", type=float, default=None, help="resample to this frame rate (default: source rate)"
    )
    p.add_argument(
        "--max-frames", type=int, default=None, help="use only the first N (resampled) frames"
    )
    p.add_argument(
        "--landmarks", choices=("dlib", "face_alignment"), default="dlib", help="landmark backend"
    )
    p.add_argument(
        "--crop-scale",
        type=float,
        default=crop.DEFAULT_CROP_SCALE,
        help="crop side / face-box side",
    )
    p.add_argument(
        "--smooth", type=int, default=0, help="centred moving-average window in frames; 0/1 = off"
    )
    p.add_argument(
        "--max-missing-frac",
        type=float,
        default=0.2,
        help="tolerated fraction of frames without a face",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what is at --out, even an identical dataset",
    )
    args = p.parse_args(argv)
    for name, ok in (
        ("size", args.size >= 16),
        ("crop-scale", args.crop_scale > 0),
        ("max-missing-frac", 0 <= args.max_missing_frac < 1),
        ("smooth", args.smooth >= 0),
        ("fps", args.fps is None or args.fps > 0),
        ("max-frames", args.max_frames is None or args.max_frames > 0),
        ("test-frames", args.test_frames is None or args.test_frames > 0),
    ):
        if not ok:
            p.error(f"invalid --{name}")
    return args


def sha256(path: str) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _existing_matches(out: str, digest: str, settings: dict) -> bool:
    """Whether `out` already holds the dataset these inputs would produce."""
    try:
        meta = writer.json_load(os.path.join(out, "meta.json"))
    except (OSError, ValueError):
        return False
    return (
        meta.get("version") == FORMAT_VERSION
        and meta.get("source", {}).get("sha256") == digest
        and meta.get("settings") == settings
    )


def output_fps(args: argparse.Namespace, info: video.VideoInfo) -> float | None:
    """The constant rate frames are resampled to: --fps, else the average rate of a
    variable-frame-rate clip; None keeps every source frame."""
    return args.fps or (info.fps if info.variable_rate else None)


def _detect_all(info, args, box, n, lm_size):
    """Landmarks for every frame: ([n, 68, 2] float32 in output-crop pixels, [n] bool valid)."""
    model = landmarks.make_landmarker(args.landmarks)
    pts = np.zeros((n, 68, 2), np.float32)
    valid = np.zeros(n, bool)
    frames = video.decode_frames(info, output_fps(args, info), n, desc="landmarks")
    for i, frame in enumerate(frames):
        found = model(crop.crop_frame(frame, box, lm_size))
        if found is not None:
            pts[i] = (found + 0.5) * (args.size / lm_size) - 0.5
            valid[i] = True
    if (~valid).mean() > args.max_missing_frac:
        bad = ", ".join(map(str, np.flatnonzero(~valid)[:10]))
        raise PrepareError(
            info.path,
            f"no face in {(~valid).sum()} of {n} frames (> {args.max_missing_frac:.0%}); "
            f"first frames without a face: {bad}",
        )
    pts = landmarks.fill_missing(landmarks.smooth(pts, valid, args.smooth), valid)
    return pts, valid


def _write_audio(info: video.VideoInfo, out_dir: str, fps: float, ranges: dict) -> dict:
    """Writes ``audio.npz`` (`data_prep.audio`) for the clip's frames; returns meta.json's 'audio'.

    A clip without an audio stream, or whose audio is silent or does not decode, gets no features
    (one warning line for the last two): the dataset still serves stages 1 and 2, and the audio
    model refuses it with the reason recorded here.
    """
    if not info.has_audio:
        return {"features": None, "reason": "the source has no audio stream"}
    try:
        samples = audio.read_speech(info.path)
    except audio.AudioError as e:
        logging.warning("%s: %s; the dataset gets no audio features", e.path, e.reason)
        return {"features": None, "reason": e.reason}
    windows = audio.windows(samples, fps, max(hi for _, hi in ranges.values()))
    audio.write_features(out_dir, {s: windows[lo:hi] for s, (lo, hi) in ranges.items()})
    return {
        "features": audio.FEATURES_FILE,
        "seconds": round(len(samples) / audio.SAMPLE_RATE, 3),
        "peak_dbfs": round(audio.peak_dbfs(samples), 1),
        **audio.settings(),
    }


def build(
    args: argparse.Namespace, tmp: str, info: video.VideoInfo, digest: str, settings: dict
) -> dict:
    """Runs all phases into the empty directory `tmp`; returns meta.json's content."""
    times = {}
    t = time.perf_counter()
    stats, sampler = video.DecodeStats(), crop.FrameSampler()
    for i, gray in enumerate(
        video.decode_frames(
            info, output_fps(args, info), args.max_frames, "gray", stats, desc="scan"
        )
    ):
        sampler.add(i, gray)
    video.check_complete(info, stats)
    n = stats.output_frames
    box = crop.estimate_crop_box(
        info.path, sampler, info.width, info.height, args.crop_scale, args.max_missing_frac
    )
    times["scan+crop"] = time.perf_counter() - t

    t = time.perf_counter()
    pts, valid = _detect_all(info, args, box.box, n, max(args.size, landmarks.MIN_LANDMARK_SIZE))
    times["landmarks"] = time.perf_counter() - t

    test = args.test_frames if args.test_frames is not None else min(1000, int(0.2 * n))
    if not 0 < test < n:
        raise PrepareError(
            info.path, f"--test-frames {test} leaves no train frames out of {n} (or no test frames)"
        )
    ranges = {"train": (0, n - test), "test": (n - test, n)}
    sheet_at = set(contact_sheet.pick_frames(n))
    cells = {}

    def examples(split):
        lo, hi = ranges[split]
        frames = video.decode_frames(info, output_fps(args, info), hi, desc=f"write {split}")
        for i, frame in enumerate(frames):
            if i >= lo:
                image = crop.crop_frame(frame, box.box, args.size)
                if i in sheet_at:
                    cells[i] = contact_sheet.render_pair(image, pts[i], valid[i], i)
                yield i, image, pts[i], valid[i]

    t = time.perf_counter()
    audio_meta = _write_audio(info, tmp, args.fps or info.fps, ranges)
    times["audio"] = time.perf_counter() - t

    t = time.perf_counter()
    writer.write_tfds(tmp, args.size, examples)
    index = np.arange(n, dtype=np.int32)
    writer.write_landmarks(
        tmp,
        {
            s: dict(landmarks=pts[lo:hi], valid=valid[lo:hi], frame_index=index[lo:hi])
            for s, (lo, hi) in ranges.items()
        },
    )
    contact_sheet.write_contact_sheet(
        os.path.join(tmp, "contact_sheet.png"), [cells[i] for i in sorted(cells)]
    )
    times["write"] = time.perf_counter() - t
    return {
        "version": FORMAT_VERSION,
        "source": {
            "path": info.path,
            "sha256": digest,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "declared_frames": info.declared_frames,
            "decoded_frames": stats.source_frames,
            "duration_s": info.duration_s,
            "codec": info.codec,
        },
        "geometry": {**info.geometry(), "resampled_to_fps": output_fps(args, info)},
        "fps": args.fps or info.fps,
        "num_frames": n,
        "train_frames": n - test,
        "test_frames": test,
        "size": args.size,
        "crop_box": list(box.box),
        "crop_scale": args.crop_scale,
        "face_size_px": box.face_size,
        "landmark_backend": args.landmarks,
        "smooth": args.smooth,
        "has_audio": info.has_audio,
        "audio": audio_meta,
        "detection_rate": float(valid.mean()),
        "missing_frames": np.flatnonzero(~valid).tolist(),
        "multi_face_frames_sampled": box.multi_face_frames,
        "tfds_dir": writer.TFDS_SUBDIR,
        "settings": settings,
        "timings_s": {k: round(v, 2) for k, v in times.items()},
    }


def prepare(args: argparse.Namespace) -> dict:
    """Prepares `args.video` into `args.out` atomically.

    Args:
      args: from `parse_args`.

    Returns:
      The dataset's meta.json content, plus 'noop': True when an identical dataset was already
      there.

    Raises:
      PrepareError: bad input (see the module docstring) or a different dataset already at --out.
    """
    out = outputs.resolve(args.out)
    source = outputs.resolve(args.video)
    if not os.path.isfile(source):
        raise PrepareError(
            args.video, "file not found" if not os.path.exists(source) else "not a file"
        )
    digest = sha256(source)
    settings = {k: getattr(args, k) for k in SETTINGS}
    with outputs.claim(out, "dataset", inputs=[source]) as exists:
        if exists and not args.overwrite and _existing_matches(out, digest, settings):
            meta = writer.json_load(os.path.join(out, "meta.json"))
            return {**meta, "noop": True}
        if exists and os.listdir(out) and not args.overwrite:
            raise PrepareError(
                out,
                "exists and is another dataset (other source, settings or version); "
                "pass --overwrite to replace it",
            )
        info = video.probe(source)
        tmp = outputs.make_temp_dir(out)
        try:
            t = time.perf_counter()
            meta = build(args, tmp, info, digest, settings)
            meta["timings_s"]["total"] = round(time.perf_counter() - t, 2)
            writer.write_meta(tmp, meta)
            outputs.move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {**meta, "noop": False}


def prepare_cached(video: str, out: str, size: int) -> str:
    """Prepares `video` into `out` at `size` px with the default settings, or reuses the identical
    dataset already there (a driving or pose video's landmarks); returns `out`.

    Raises:
      PrepareError, outputs.OutputError: as `prepare`.
    """
    meta = prepare(parse_args([f"--video={video}", f"--out={out}", f"--size={size}"]))
    print(("reusing" if meta.get("noop") else "prepared") + f" dataset {out}")
    return out


def summary(meta: dict, out: str) -> str:
    """The one-screen report printed at the end."""
    src = meta["source"]
    x0, y0, x1, y1 = meta["crop_box"]
    n = meta["num_frames"]
    missing = meta["missing_frames"]
    lines = [
        f"dataset   {out}",
        f"source    {src['path']} ({src['width']}x{src['height']}, {src['fps']:.2f} fps, "
        f"{src['codec']}, "
        f"{src['duration_s']:.1f} s, audio: {_audio_word(meta)})",
        f"frames    {n} at {meta['fps']:.2f} fps -> train {meta['train_frames']}, "
        f"test {meta['test_frames']}",
        f"faces     detected in {n - len(missing)}/{n} frames ({meta['detection_rate']:.1%}); "
        f"face {meta['face_size_px']:.0f} px; backend {meta['landmark_backend']}, "
        f"smooth {meta['smooth']}",
        f"crop      [{x0}, {y0}, {x1}, {y1}] (side {x1 - x0} px, scale {meta['crop_scale']}) "
        f"-> {meta['size']} px",
        _geometry_line(meta.get("geometry", {})),
        "time      " + ", ".join(f"{k} {v:.1f} s" for k, v in meta["timings_s"].items()),
        f"check     {os.path.join(out, 'contact_sheet.png')}",
    ]
    if missing:
        lines.insert(
            4,
            f"missing   frames {missing[:10]}{' ...' if len(missing) > 10 else ''} (interpolated)",
        )
    return "\n".join(lines)


def _audio_word(meta: dict) -> str:
    """'yes' (features written), 'no', or why a stream gave no features."""
    a = meta.get("audio") or {}
    if a.get("features"):
        return "yes"
    return "no" if not meta["has_audio"] else f"not used: {a.get('reason', 'unknown')}"


def _geometry_line(g: dict) -> str:
    """What decoding applied: rotation, pixel aspect, frame-rate resampling."""
    applied = []
    if g.get("rotation_deg_ccw"):
        applied.append(f"rotated {g['rotation_deg_ccw']} deg counter-clockwise (display matrix)")
    if abs(g.get("sample_aspect_ratio", 1.0) - 1.0) > 1e-3:
        w, h = g["stored_size"]
        applied.append(f"pixel aspect {g['sample_aspect_ratio']:.3f} ({w}x{h} stored)")
    if g.get("variable_frame_rate"):
        applied.append(f"variable frame rate resampled to {g['resampled_to_fps']:.2f} fps")
    w, h = g.get("output_size", ("?", "?"))
    return f"geometry  {w}x{h}: " + ("; ".join(applied) if applied else "as stored")


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 ok, 2 bad input)."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    args = parse_args(argv)
    try:
        meta = prepare(args)
    except (PrepareError, outputs.OutputError) as e:
        tqdm.write(f"error: {e.path}: {e.reason}", file=sys.stderr)
        return 2
    out = outputs.resolve(args.out)
    if meta["noop"]:
        print(f"{out}: already prepared from this source with these settings; nothing to do")
    else:
        print(summary(meta, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
