"""Video probing and decoding with PyAV, with optional constant-rate resampling.

Frames come out as a viewer shows them (`upright`): a display matrix (the rotation phones store
instead of turning the pixels; an old-style ``rotate`` tag reaches FFmpeg as one too) is applied
as FFmpeg's command line applies it (a quarter turn counter-clockwise per 90 degrees of
``av_display_rotation_get``), and non-square pixels (a sample aspect ratio other than 1:1) are
stretched to square ones, widening (or heightening) the frame so nothing is lost. Mirrored
matrices and rotations other than multiples of 90 degrees are refused. Variable-frame-rate input
(`probe` reads every packet's timestamp) is resampled to a constant rate by `decode_frames` at the
caller's ``fps`` (``prepare``: ``--fps``, else the clip's average rate).

Decoding is cheap next to landmarking (about 0.3 ms per 512x512 h264 frame), so `prepare` decodes
the clip several times (scan, landmarks, write) instead of holding every frame in memory.
"""

import dataclasses
from collections.abc import Iterator
from fractions import Fraction

import av
import cv2
import numpy as np
from tqdm import tqdm

from data_prep import PrepareError

# A damaged file is used only if at least this fraction of its declared frames decodes.
MIN_DECODED_FRACTION = 0.9
# A clip is variable-frame-rate when a frame interval differs from the median interval by more
# than this fraction of it, beyond one tick of the stream's time base (`interval_spread`: a 30 fps
# clip remuxed to 1 ms ticks alternates 33 and 34 ms). Measured with benchmarks/frame_intervals.py
# (benchmarks/RESULTS.md, "Frame-interval spread"): constant-rate clips spread 0.000 (the three
# sample clips, and their remuxes to 1 ms ticks), 0.028 / 0.055 / 0.117 (30 / 60 / 120 fps with
# times rounded to 1 ms, then stored in finer ticks); variable-rate copies of the macron clip 0.233
# (30 <-> 24 fps), 1.03 (a dropped frame every 15). 0.17 lies between them, 1.45x above the
# largest constant-rate spread and 1.37x below the smallest variable one; phone-like jitter of
# +-2 ms (0.150) passes as constant, +-3 ms (0.210) is resampled, which keeps every frame once.
VFR_TOLERANCE = 0.17


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream.

    Attributes:
      path: the file.
      width: frame width in pixels as decoded frames come out (upright, square pixels).
      height: frame height in pixels, likewise.
      fps: average source frame rate in frames per second.
      declared_frames: frame count from the container header (0 when the container does not say).
      duration_s: duration in seconds from the stream or container header (0.0 if unknown).
      has_audio: whether the container has an audio stream.
      codec: video codec name, e.g. 'h264'.
      stored_width: width of the stored (coded) frames in pixels.
      stored_height: height of the stored frames in pixels.
      rotation: counter-clockwise degrees applied to make frames upright (0, 90, 180, 270).
      sample_aspect: pixel width / pixel height of the stored frames (1.0: square pixels).
      variable_rate: frame intervals spread more than `VFR_TOLERANCE` (`interval_spread`).
    """

    path: str
    width: int
    height: int
    fps: float
    declared_frames: int
    duration_s: float
    has_audio: bool
    codec: str
    stored_width: int = 0
    stored_height: int = 0
    rotation: int = 0
    sample_aspect: float = 1.0
    variable_rate: bool = False

    def geometry(self) -> dict:
        """What decoding applies, for meta.json and the summary."""
        return {
            "stored_size": [self.stored_width, self.stored_height],
            "rotation_deg_ccw": self.rotation,
            "sample_aspect_ratio": self.sample_aspect,
            "output_size": [self.width, self.height],
            "variable_frame_rate": self.variable_rate,
        }


def upright(image: np.ndarray, info: "VideoInfo") -> np.ndarray:
    """A decoded frame [h, w(, c)] as shown: square pixels, then `info.rotation` applied.

    Returns:
      [info.height, info.width(, c)] uint8.
    """
    sar = info.sample_aspect
    if abs(sar - 1.0) > 1e-3:
        h, w = image.shape[:2]
        size = (round(w * sar), h) if sar > 1 else (w, round(h / sar))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    k = (info.rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def _display_rotation(path: str, frame: av.VideoFrame) -> int:
    """Counter-clockwise degrees of the frame's display matrix (0 without one).

    Raises:
      PrepareError: a mirrored matrix or an angle that is not a multiple of 90 degrees.
    """
    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            m = np.frombuffer(bytes(side), np.int32).astype(np.int64)
            if m[0] * m[4] - m[1] * m[3] < 0:
                raise PrepareError(path, "its display matrix mirrors the picture (not supported)")
            angle = float(frame.rotation)
            if abs(angle - 90 * round(angle / 90)) > 1:
                raise PrepareError(path, f"rotated by {angle:.1f} degrees (only 90-degree steps)")
            return int(90 * round(angle / 90)) % 360
    return 0


def frame_intervals(container: av.container.InputContainer, stream) -> np.ndarray:
    """[N - 1] float64 intervals between the sorted presentation times of the stream's N packets,
    in ticks of ``stream.time_base`` (reads every packet)."""
    times = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
    return np.diff(np.asarray(times, np.float64))


def interval_spread(steps: np.ndarray) -> float:
    """How far the frame intervals stray from their median, as a fraction of it, beyond the one
    tick timestamp rounding can add: max((|step - median| - 1) / median, 0); 0.0 for fewer than
    3 intervals or a median of 0."""
    if len(steps) < 3:
        return 0.0
    median = float(np.median(steps))
    if median <= 0:
        return 0.0
    return max(float(np.max(np.abs(steps - median))) - 1.0, 0.0) / median


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path)
    except FileNotFoundError as e:
        raise PrepareError(path, "file not found") from e
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise PrepareError(
            path, f"not a readable video container ({e.__class__.__name__}: {e})"
        ) from e


def probe(path: str) -> VideoInfo:
    """Reads the container header.

    Args:
      path: video file in any container and codec FFmpeg decodes (mp4, mov, mkv, webm, avi, ...).

    Returns:
      The `VideoInfo` of the first video stream.

    Raises:
      PrepareError: missing file, not a video container, or no video stream (e.g. audio only).
    """
    with _open(path) as container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise PrepareError(
                path, f"no video stream (found: {kinds}); an audio-only file cannot be used"
            )
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        duration_s = 0.0
        if stream.duration and stream.time_base:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration:
            duration_s = container.duration / av.time_base
        w, h = stream.codec_context.width, stream.codec_context.height
        sar = float(stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or 1)
        rotation = 0
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError:
            first = None  # decoding errors are reported by the decoding pass
        if first is not None:
            rotation = _display_rotation(path, first)
        container.seek(0)
        variable = interval_spread(frame_intervals(container, stream)) > VFR_TOLERANCE
        dw, dh = (round(w * sar), h) if sar >= 1 else (w, round(h / sar))
        if rotation in (90, 270):
            dw, dh = dh, dw
        return VideoInfo(
            path=path,
            width=dw,
            height=dh,
            fps=float(rate),
            declared_frames=int(stream.frames or 0),
            duration_s=duration_s,
            has_audio=bool(container.streams.audio),
            codec=stream.codec_context.name,
            stored_width=w,
            stored_height=h,
            rotation=rotation,
            sample_aspect=sar,
            variable_rate=variable,
        )


@dataclasses.dataclass
class DecodeStats:
    """Filled in while `decode_frames` runs.

    Attributes:
      source_frames: source frames decoded so far.
      output_frames: frames yielded so far (after resampling and truncation).
      error: the decoder error that ended decoding early, or None.
      stopped_early: True when `max_frames` ended decoding before the end of the stream.
    """

    source_frames: int = 0
    output_frames: int = 0
    error: str | None = None
    stopped_early: bool = False


def _source_frames(path: str, stats: DecodeStats) -> Iterator[tuple[float, av.VideoFrame]]:
    """Yields (time in seconds from the first frame, frame); a decoder error ends the stream."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        t0 = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / rate
                t0 = t if t0 is None else t0
                stats.source_frames += 1
                yield t - t0, frame
        except av.FFmpegError as e:
            stats.error = f"{e.__class__.__name__}: {e}"


def decode_frames(
    info: VideoInfo,
    fps: float | None = None,
    max_frames: int | None = None,
    fmt: str = "rgb24",
    stats: DecodeStats | None = None,
    desc: str | None = None,
) -> Iterator[np.ndarray]:
    """Decodes frames in order, optionally resampled to a constant rate.

    Resampling picks for output frame k the source frame whose timestamp is nearest to k / fps
    (frames are repeated or dropped; no blending).

    Args:
      info: from `probe`.
      fps: output frame rate in frames per second; None keeps every source frame.
      max_frames: stop after this many output frames; None decodes to the end.
      fmt: PyAV pixel format: 'rgb24' gives [H, W, 3] uint8, 'gray' gives [H, W] uint8.
      stats: optional `DecodeStats` updated as frames are decoded.
      desc: progress-bar label; None shows no bar.

    Yields:
      [H, W, 3] (or [H, W]) uint8 frames in source pixels.
    """
    stats = stats if stats is not None else DecodeStats()
    total = max_frames
    if total is None and info.declared_frames:
        total = (
            info.declared_frames if fps is None else round(info.declared_frames * fps / info.fps)
        )
    bar = tqdm(total=total, desc=desc, unit="frame", disable=desc is None, leave=False)

    def emit(frame: av.VideoFrame) -> np.ndarray:
        stats.output_frames += 1
        bar.update(1)
        return upright(frame.to_ndarray(format=fmt), info)

    try:
        prev = None  # (time, frame) of the previous source frame, only used when resampling.
        for t, frame in _source_frames(info.path, stats):
            if max_frames is not None and stats.output_frames >= max_frames:
                stats.stopped_early = True
                return
            if fps is None:
                yield emit(frame)
                continue
            if prev is not None:
                # Output times nearer the previous frame than this one take the previous frame.
                while stats.output_frames / fps < (prev[0] + t) / 2:
                    if max_frames is not None and stats.output_frames >= max_frames:
                        break
                    yield emit(prev[1])
            prev = (t, frame)
        if fps is not None and prev is not None:
            end = prev[0] + 0.5 / info.fps
            while stats.output_frames / fps < end:
                if max_frames is not None and stats.output_frames >= max_frames:
                    break
                yield emit(prev[1])
    finally:
        bar.close()


def check_complete(info: VideoInfo, stats: DecodeStats) -> None:
    """Refuses a clip that decoded to nothing or to much less than its header declares.

    Args:
      info: from `probe`.
      stats: the `DecodeStats` of a full decoding pass.

    Raises:
      PrepareError: zero frames decoded, or a decoder error before `MIN_DECODED_FRACTION` of the
        declared frames (the file is truncated or corrupt).
    """
    if stats.output_frames == 0:
        why = f" ({stats.error})" if stats.error else ""
        raise PrepareError(info.path, f"no video frames could be decoded{why}")
    if stats.stopped_early:
        return
    declared = info.declared_frames
    if declared and stats.source_frames < MIN_DECODED_FRACTION * declared:
        why = f"; decoder said {stats.error}" if stats.error else ""
        raise PrepareError(
            info.path,
            f"truncated or corrupt: only {stats.source_frames} of {declared} declared frames "
            f"decode "
            f"(need {MIN_DECODED_FRACTION:.0%}){why}",
        )
