"""Full-frame output: the subject's source video as the background of a reenactment.

`open_subject` finds and checks the video a dataset was prepared from (the path and SHA-256 that
`data_prep.prepare` records in meta.json, or a moved copy given explicitly); `Background` streams
its frames in the dataset's frame numbering (the same resampling and truncation as the dataset)
in any order made of ascending and descending runs, seeking instead of decoding from the start, so
memory stays at a few frames whatever the length; `ping_pong` and `resample_track` give the frame
order and driving track of a cross-reenactment at the subject's frame rate. Frames are turned
upright and stretched to square pixels as data_prep decoded them (`data_prep.video`: display-matrix
rotation, sample aspect ratio), so the crop box lands where it was cut and the output is written
upright. The compositing itself is `vpgc_jax.paste`.
"""

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import numpy as np

from data_prep import PrepareError
from data_prep import video as video_lib
from data_prep.prepare import sha256
from vpgc_jax import paste
from vpgc_jax.data import frames as frames_lib

# Default blend band: 5 % of the crop side (~27 px for the 540 px box of a 1080p talking head).
FEATHER = 0.05
# H.264 settings of full-frame videos: CRF 16 with 'ultrafast' keeps a re-encoded 1080p background
# at ~0.37 levels mean absolute error (54.4 dB luma PSNR), at half the CPU time of 'superfast'
# (0.27 levels, 55.2 dB), which is the largest part of the full frame's cost; the price is larger
# files (~9.4 instead of ~6.2 Mbit/s at 1080p30). benchmarks/RESULTS.md, "Full-frame output".
CRF, PRESET = 16, "ultrafast"
# Decoded frames held to hand out a descending (ping-pong) run backwards: each pass seeks to the
# keyframe before its first frame, so fewer frames per pass means more decoding again.
REVERSE_BUFFER_BYTES = 256 << 20


class SubjectVideoError(Exception):
    """The subject's source video is missing or is not the one the dataset was made from."""


@dataclasses.dataclass(frozen=True)
class Subject:
    """A dataset's verified source video.

    Attributes:
      path: the video file.
      width, height: frame size in pixels.
      fps: the dataset's frame rate (the source's, or the rate it was resampled to).
      resample_fps: the rate passed to data_prep (None: every source frame).
      num_frames: frames in the dataset.
      train_frames: frames in its train split (the test split follows).
      box: the crop box (x0, y0, x1, y1) in source pixels.
      pts: [num_frames] int64 presentation timestamp of each dataset frame's source frame.
      rotation: counter-clockwise degrees that turn the stored frames upright (display matrix).
      sample_aspect: pixel width / pixel height of the stored frames.

    Sizes and the box are of the frames as shown (upright, square pixels), as in data_prep.
    """

    path: str
    width: int
    height: int
    fps: Fraction
    resample_fps: float | None
    num_frames: int
    train_frames: int
    box: tuple[int, int, int, int]
    pts: np.ndarray = dataclasses.field(repr=False)
    rotation: int = 0
    sample_aspect: float = 1.0


def frame_times(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(pts [N] int64 ascending, seconds from the first frame [N] float64).

    Of the first video stream, read from its packets (no decoding); the seconds are computed as
    PyAV's `Frame.time` does (`float(pts) * num / den`), so ties in `source_index` fall as in
    data_prep.
    """
    with av.open(path) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        tb = stream.time_base
    pts = np.asarray(pts, np.int64)
    seconds = pts.astype(np.float64) * tb.numerator / tb.denominator
    return pts, seconds - seconds[:1] if len(pts) else seconds


def open_subject(dataset_dir: str, subject_video: str | None = None) -> Subject:
    """Finds the video `dataset_dir` was prepared from and checks it is that video.

    Args:
      dataset_dir: a prepared dataset.
      subject_video: the source video when it moved; None for the path in meta.json.

    Returns:
      The `Subject`.

    Raises:
      SubjectVideoError: no recorded source and none given, a missing file, or a video whose size,
        frame count or SHA-256 differs from the one recorded at prepare time.
    """
    meta = frames_lib.load_meta(dataset_dir)
    src = meta.get("source", {})
    path = subject_video or src.get("path")
    if not path:
        raise SubjectVideoError(
            f"{dataset_dir}: meta.json does not record its source video; pass --subject-video"
        )
    if not os.path.isfile(path):
        hint = "" if subject_video else " (moved?); pass --subject-video"
        raise SubjectVideoError(f"{path}: subject video not found{hint}")
    try:  # the size as data_prep saw it: upright, square pixels
        info = video_lib.probe(path)
    except PrepareError as e:
        raise SubjectVideoError(f"{path}: not a readable video ({e.reason})") from e
    size, declared = (info.width, info.height), info.declared_frames
    want = (src.get("width"), src.get("height"))
    if None not in want and size != want:
        raise SubjectVideoError(
            f"{path}: {size[0]}x{size[1]}, but {dataset_dir} was prepared from a "
            f"{want[0]}x{want[1]} video"
        )
    pts, times = frame_times(path)
    settings = meta.get("settings", {})
    # The header's count where both have one, else the frames decoded at prepare time (a whole
    # pass only when --max-frames did not stop it early).
    if src.get("declared_frames") and declared:
        counts = (declared, src["declared_frames"])
    elif src.get("decoded_frames") and not settings.get("max_frames"):
        counts = (len(pts), src["decoded_frames"])
    else:
        counts = (len(pts), len(pts))
    if counts[0] != counts[1]:
        raise SubjectVideoError(
            f"{path}: {counts[0]} frames, but {dataset_dir} was prepared from a video of "
            f"{counts[1]}"
        )
    if src.get("sha256") and sha256(path) != src["sha256"]:
        raise SubjectVideoError(
            f"{path}: not the video {dataset_dir} was prepared from (its SHA-256 differs)"
        )
    n = int(meta["num_frames"])
    index = source_index(times, settings.get("fps"), n)
    if not len(pts) or index[-1] >= len(pts):
        raise SubjectVideoError(f"{path}: {len(pts)} frames, fewer than the dataset's {n}")
    pts = pts[index]
    return Subject(
        path=path,
        width=size[0],
        height=size[1],
        fps=Fraction(float(meta["fps"])).limit_denominator(1001),
        resample_fps=settings.get("fps"),
        num_frames=n,
        train_frames=int(meta["train_frames"]),
        box=tuple(int(v) for v in meta["crop_box"]),
        pts=pts,
        rotation=info.rotation,
        sample_aspect=info.sample_aspect,
    )


def source_index(times: np.ndarray, fps: float | None, n: int) -> np.ndarray:
    """Which source frame each of the first `n` dataset frames is.

    The rule of `data_prep.video.decode_frames`: without resampling frame k is source frame k;
    resampled to `fps`, dataset frame k is the source frame whose time is nearest to k / fps
    (ties to the later one).

    Args:
      times: [N] float64 source frame times in seconds from the first frame, ascending.
      fps: the rate the dataset was resampled to, or None. Rates such as 30 -> 20 fps put every
        other output time exactly between two source frames; the float arithmetic here is
        data_prep's, so those ties are broken the same way.
      n: dataset frames.

    Returns:
      [n] int64 source frame ordinals, non-decreasing.
    """
    if fps is None:
        return np.arange(n, dtype=np.int64)
    mids = (times[:-1] + times[1:]) / 2
    return np.searchsorted(mids, np.arange(n) / fps, side="right").astype(np.int64)


def _runs(indices: Iterable[int]) -> Iterator[list[int]]:
    """Splits a sequence into maximal runs that only step by +1 (or 0), or only by -1 (or 0)."""
    run: list[int] = []
    step = 0
    for k in indices:
        if run:
            d = k - run[-1]
            if abs(d) > 1 or (d and step and d != step):
                yield run
                run, step = [], 0
            else:
                step = step or d
        run.append(k)
    if run:
        yield run


class Background:
    """The subject's frames by dataset index, decoded in streaming fashion.

    Args:
      subject: from `open_subject`.

    `frames(indices)` yields one `av.VideoFrame` per index. Ascending runs decode forward from a
    seek; descending runs (ping-pong) decode up to `REVERSE_BUFFER_BYTES` of frames at a time
    (82 at 1080p) from a seek and hand them out backwards.
    """

    def __init__(self, subject: Subject):
        self.subject = subject
        self._pts = subject.pts
        self._container = av.open(subject.path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._chunk = max(1, REVERSE_BUFFER_BYTES // (subject.width * subject.height * 3 // 2))

    def _decode(self, first: int, last: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """Yields (dataset index, frame) for first..last ascending, from a seek before `first`."""
        self._container.seek(int(self._pts[first]), stream=self._stream, backward=True)
        k, frame = first, None
        for frame in self._container.decode(self._stream):
            if frame.pts is None or frame.pts < self._pts[k]:
                continue
            # Several dataset frames can be one source frame (resampled to a higher rate); a
            # frame the decoder dropped is stood in for by the next one.
            while k <= last and self._pts[k] <= frame.pts:
                yield k, frame
                k += 1
            if k > last:
                return
        if frame is None:
            raise SubjectVideoError(f"{self.subject.path}: no frame decodes after frame {first}")
        while k <= last:  # the stream ended early (a damaged tail): repeat the last frame
            yield k, frame
            k += 1

    def frames(self, indices: Iterable[int]) -> Iterator[av.VideoFrame]:
        """The frames at `indices` (dataset numbering, each in [0, num_frames)), in that order.

        Raises:
          IndexError: an index outside the dataset.
          SubjectVideoError: the video stopped decoding.
        """
        for run in _runs(indices):
            if min(run) < 0 or max(run) >= self.subject.num_frames:
                raise IndexError(f"background frames {run[0]}..{run[-1]} of {len(self._pts)}")
            if run[0] <= run[-1]:  # ascending: one streaming pass
                decoded = self._decode(run[0], run[-1])
                k, frame = -1, None
                for want in run:
                    while k < want:
                        k, frame = next(decoded)
                    yield frame
                continue
            i, got = 0, {}
            while i < len(run):  # descending: a buffer's worth per pass, handed out backwards
                hi = run[i]
                lo = max(run[-1], hi - self._chunk + 1)
                got.clear()  # before decoding the next pass: one buffer at a time
                got.update(self._decode(lo, hi))
                while i < len(run) and run[i] >= lo:
                    yield got[run[i]]
                    i += 1

    def close(self) -> None:
        self._container.close()


def ping_pong(n: int, length: int, start: int = 0) -> np.ndarray:
    """Indices 0..n-1, n-2..0, 1..n-1, ... (from position `start`), `length` of them: [length]."""
    if n == 1:
        return np.zeros(length, np.int64)
    period = 2 * (n - 1)
    t = (np.arange(length) + start) % period
    return np.where(t < n, t, period - t).astype(np.int64)


def resample_track(track: np.ndarray, fps: Fraction, to_fps: Fraction) -> np.ndarray:
    """A [T, ...] per-frame track at `fps` resampled to `to_fps` by linear interpolation.

    Output frame k is at time k / to_fps; the output covers the same duration (floor(T * to_fps /
    fps) frames, at least one). Returns [T', ...] float32.
    """
    if fps == to_fps:
        return np.asarray(track, np.float32)
    n = max(1, int(len(track) * to_fps / fps))
    t = np.minimum(np.arange(n) * float(fps / to_fps), len(track) - 1)  # in input frames
    i = np.floor(t).astype(np.int64)
    j = np.minimum(i + 1, len(track) - 1)
    w = (t - i).astype(np.float32).reshape(-1, *[1] * (np.ndim(track) - 1))
    return ((1 - w) * track[i] + w * track[j]).astype(np.float32)


class Paster:
    """Generated crops -> full frames, one call per output frame, in order.

    Args:
      subject: from `open_subject`.
      order: [T] dataset frame index of the background of each output frame.
      feather: blend band width as a fraction of the crop box side (at least one pixel).

    Calling it with a [R, R, 3] uint8 crop returns the next output frame (a yuv420p
    `av.VideoFrame`, `vpgc_jax.paste.Compositor.paste`) of the upright size (`paste.upright`).
    The colour conversion is fitted on the first background frame. `seconds` accumulates the time
    spent decoding and compositing.
    """

    def __init__(self, subject: Subject, order: np.ndarray, feather: float):
        self.subject = subject
        self.band = max(1, round(feather * (subject.box[2] - subject.box[0])))
        self.background = Background(subject)
        self._frames = self.background.frames(int(k) for k in order)
        self.compositor: paste.Compositor | None = None
        self.fit_rms = float("nan")
        self.seconds = 0.0

    def __call__(self, crop: np.ndarray) -> av.VideoFrame:
        t = time.perf_counter()
        s = self.subject
        bg = paste.upright(paste.as_420(next(self._frames)), s.rotation, s.sample_aspect)
        if self.compositor is None:
            matrix, self.fit_rms = paste.fit_rgb_to_yuv(bg)
            self.compositor = paste.Compositor(s.box, s.width, s.height, self.band, matrix)
        frame = self.compositor.paste(bg, crop)
        self.seconds += time.perf_counter() - t
        return frame

    def close(self) -> None:
        self.background.close()
