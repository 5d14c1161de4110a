"""Writing reenactment results: H.264 mp4 with the driving video's audio, side-by-side frames.

`Mp4Writer` encodes frames as they come (libx264, yuv420p, constant frame rate) into a temporary
file next to the target and renames it into place only when everything succeeded, so a failure
(an exception while frames are produced, Ctrl-C, a full disk) leaves nothing behind and an
existing file at the target untouched. The audio of a source video (the driving clip) is muxed in,
interleaved with the video and trimmed to the video's length in whole audio packets (the last one
may overrun by up to one packet, ~21 ms for AAC at 48 kHz): AAC, MP3 and AC-3 packets are copied as
they are, other codecs are decoded and re-encoded to AAC.
"""

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import cv2
import numpy as np

# Audio codecs the mp4 muxer takes as they are; anything else is re-encoded to AAC.
COPY_AUDIO_CODECS = ("aac", "mp3", "ac3", "eac3")
AAC_BIT_RATE = 192_000


class OutputError(Exception):
    """The output cannot be written, or the audio source cannot be read.

    Attributes:
      path: the file or directory the error is about.
      reason: one line saying what is wrong.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class VideoSummary:
    """What `Mp4Writer.close` wrote.

    Attributes:
      path: the final file.
      frames: video frames written.
      fps: frame rate in frames per second.
      size: (width, height) in pixels of the encoded frames.
      audio: 'copy' (packets copied), 'aac' (re-encoded) or None (no audio stream).
    """

    path: str
    frames: int
    fps: Fraction
    size: tuple[int, int]
    audio: str | None

    @property
    def duration_s(self) -> float:
        """Video duration in seconds (frames / fps)."""
        return float(self.frames / self.fps)


def as_fraction(fps: Fraction | float | int | str) -> Fraction:
    """A frame rate as a Fraction; a float becomes the nearest fraction with denominator <= 1001.

    `float(Fraction(30000, 1001))` (what `meta.json` stores for NTSC video) gives back 30000/1001.

    Raises:
      ValueError: a rate that is not positive.
    """
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _temp_file(path: str) -> str:
    """Creates an empty temporary sibling of `path`; raises OutputError when that is impossible."""
    parent = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise OutputError(path, "is a directory; give a file name ending in .mp4")
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.tmp-", suffix=".mp4", dir=parent
        )
    except OSError as e:
        raise OutputError(
            path, f"output directory {parent} is not writable ({e.strerror or e})"
        ) from e
    os.close(fd)
    return tmp


class _AudioSource:
    """Audio of a source video, handed out in output time order as copied or re-encoded packets.

    Opened (and checked) when the writer is made; `attach` adds the output stream when the first
    frame fixes the video stream, so the video is stream 0.
    """

    def __init__(self, path: str, start_s: float = 0.0):
        try:
            self._input = av.open(path)
        except (OSError, av.FFmpegError) as e:
            raise OutputError(path, f"cannot read the audio source ({e})") from e
        self._stream = self._input.streams.audio[0] if self._input.streams.audio else None
        video = self._input.streams.video[0] if self._input.streams.video else None
        start = video.start_time * video.time_base if video and video.start_time else 0
        # Source seconds that become output time 0 (`start_s` into the source's video).
        self._start = Fraction(start) + Fraction(start_s).limit_denominator(1_000_000)
        self.mode = None
        if self._stream is not None:
            copy = self._stream.codec_context.name in COPY_AUDIO_CODECS
            self.mode = "copy" if copy else "aac"
        self._next = None

    def attach(self, output: av.container.OutputContainer) -> None:
        """Adds the audio stream to `output` (nothing when the source has no audio)."""
        if self.mode == "copy":
            self.out = output.add_stream_from_template(self._stream)
        elif self.mode == "aac":
            rate = self._stream.codec_context.sample_rate
            self.out = output.add_stream("aac", rate=rate)
            self.out.bit_rate = AAC_BIT_RATE
            # Mono stays mono, anything else becomes stereo (also layouts FFmpeg only knows as
            # "2 channels", which the AAC encoder refuses).
            mono = self._stream.codec_context.layout.nb_channels == 1
            self.out.layout = "mono" if mono else "stereo"
            self._resampler = av.AudioResampler("fltp", self.out.layout, rate, frame_size=1024)
        if self.mode is not None:
            self._pending = self._packets()

    def _packets(self) -> Iterator[tuple[Fraction, av.Packet]]:
        """Yields (output start time in seconds, packet for the output stream)."""
        tb = self._stream.time_base
        if self.mode == "copy":
            shift = round(self._start / tb)
            for packet in self._input.demux(self._stream):
                if packet.pts is None:  # the demuxer's final empty packet
                    continue
                if packet.pts + (packet.duration or 0) <= shift:  # ends before output time 0
                    continue
                packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                packet.stream = self.out
                yield packet.pts * tb, packet
            return
        samples = 0
        rate = self.out.codec_context.sample_rate

        def decoded():
            for frame in self._input.decode(self._stream):
                if frame.time is None or frame.time + frame.samples / rate > self._start:
                    yield frame
            yield None  # flushes the resampler's last partial chunk

        for frame in decoded():
            for chunk in self._resampler.resample(frame):
                chunk.pts, samples = samples, samples + chunk.samples
                chunk.time_base = Fraction(1, rate)
                for packet in self.out.encode(chunk):
                    yield packet.pts * packet.time_base, packet

    def until(self, t: Fraction) -> Iterator[av.Packet]:
        """The not yet handed out packets that start before output second `t`."""
        if self.mode is None:
            return
        while True:
            if self._next is None:
                self._next = next(self._pending, None)
                if self._next is None:
                    return
            start, packet = self._next
            if start >= t:
                return
            self._next = None
            yield packet

    def finish(self, end: Fraction) -> Iterator[av.Packet]:
        """The remaining packets that start before `end`, then (re-encoding) the encoder's flush."""
        yield from self.until(end)
        if self.mode == "aac":
            yield from (p for p in self.out.encode(None) if p.pts * p.time_base < end)

    def close(self) -> None:
        self._input.close()


class Mp4Writer:
    """Streams frames into an H.264 mp4, atomically (see the module docstring).

    Use as a context manager: leaving the block normally finalises the file, an exception deletes
    the temporary file and re-raises.

        with Mp4Writer("out.mp4", Fraction(25), audio_from="driving.mp4") as w:
            for frame in frames:
                w.write(frame)
        summary = w.summary

    Args:
      path: output file; its directory is created if missing.
      fps: frame rate (a Fraction such as 30000/1001, or int/float/str).
      audio_from: a video or audio file whose first audio stream is muxed in; None for none, and a
        source without audio gives a file without audio.
      audio_start_s: seconds into `audio_from` that line up with the first frame (e.g. the start
        of a dataset's test split).
      crf: libx264 constant rate factor (0 lossless .. 51; 18 is visually near-lossless).
      preset: libx264 preset ('ultrafast' .. 'veryslow').

    Raises:
      OutputError: the output directory is missing and cannot be made or is not writable, the path
        is a directory, or `audio_from` cannot be read. Raised before any frame is taken.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: Fraction | float | int | str,
        audio_from: str | os.PathLike | None = None,
        crf: int = 18,
        preset: str = "medium",
        audio_start_s: float = 0.0,
    ):
        self.path = os.path.abspath(os.fspath(path))
        self.fps = as_fraction(fps)
        self._tmp = _temp_file(self.path)
        try:
            self._out = av.open(self._tmp, "w", format="mp4")
            self._audio = None
            if audio_from is not None:
                if not os.path.isfile(audio_from):
                    raise OutputError(os.fspath(audio_from), "audio source not found")
                self._audio = _AudioSource(os.fspath(audio_from), audio_start_s)
        except BaseException:
            self._discard()
            raise
        self._crf, self._preset = crf, preset
        self._video = None
        self._size = None
        self.frames = 0
        self.summary: VideoSummary | None = None

    def _open_streams(self, height: int, width: int, tags: av.VideoFrame | None = None) -> None:
        self._size = (width + width % 2, height + height % 2)  # yuv420p needs even sides
        self._video = self._out.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = self._size
        self._video.pix_fmt = "yuv420p"
        for tag in ("colorspace", "color_range", "color_primaries", "color_trc"):
            if tags is not None:  # a source's colour metadata, as it is (unspecified stays so)
                setattr(self._video.codec_context, tag, getattr(tags, tag))
        self._video.codec_context.time_base = 1 / self.fps
        self._video.options = {"crf": str(self._crf), "preset": self._preset}
        if self._audio is not None:
            self._audio.attach(self._out)

    def write(self, frame: np.ndarray | av.VideoFrame) -> None:
        """Encodes one frame.

        Args:
          frame: [H, W, 3] uint8 RGB, the same size for every frame; odd sides are padded by one
            replicated row/column (yuv420p needs even sides). Or a yuv420p `av.VideoFrame` of even
            sides (`vpgc_jax.paste`), encoded as it is; the first one's colour metadata
            (matrix, range, primaries, transfer) tags the stream.

        Raises:
          ValueError: wrong dtype, shape, or a size different from the first frame's.
        """
        if isinstance(frame, av.VideoFrame):
            if frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2:
                raise ValueError(f"frames must be even-sided yuv420p, got {frame.format.name}")
            if self._video is None:
                self._open_streams(frame.height, frame.width, tags=frame)
            self._encode(frame, frame.width, frame.height)
            return
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be [H, W, 3] uint8, got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        if self._video is None:
            self._open_streams(h, w)
        if h % 2 or w % 2:
            frame = cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self._encode(video_frame, w, h)

    def _encode(self, video_frame: av.VideoFrame, w: int, h: int) -> None:
        """Encodes a frame of (unpadded) size w x h, and the audio up to its end."""
        if (w + w % 2, h + h % 2) != self._size:
            raise ValueError(f"frame {self.frames} is {w}x{h}; earlier frames were {self._size}")
        video_frame.pts = self.frames
        self._out.mux(self._video.encode(video_frame))
        self.frames += 1
        if self._audio is not None:
            self._out.mux(list(self._audio.until(self.frames / self.fps)))

    def close(self) -> VideoSummary:
        """Flushes the encoders, muxes the rest of the audio and moves the file into place.

        Returns:
          The `VideoSummary`.

        Raises:
          ValueError: no frame was written (nothing is left behind).
          OutputError: the file could not be moved into place.
        """
        if self.summary is not None:
            return self.summary
        try:
            if self._video is None:
                raise ValueError(f"{self.path}: no frames to write")
            self._out.mux(self._video.encode(None))
            audio = None
            if self._audio is not None:
                end = Fraction(self.frames) / self.fps
                self._out.mux(list(self._audio.finish(end)))
                audio = self._audio.mode
                self._audio.close()
            self._out.close()
            os.chmod(self._tmp, 0o666 & ~_umask())
            try:
                os.replace(self._tmp, self.path)
            except OSError as e:
                raise OutputError(self.path, f"cannot move the video into place ({e})") from e
        except BaseException:
            self._discard()
            raise
        self.summary = VideoSummary(self.path, self.frames, self.fps, self._size, audio)
        return self.summary

    def _discard(self) -> None:
        """Closes everything and deletes the temporary file (idempotent)."""
        for closable in (getattr(self, "_audio", None), getattr(self, "_out", None)):
            try:
                if closable is not None:
                    closable.close()
            except Exception:  # Already failing: the original error is the one to report.
                pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: Fraction | float | int | str,
    audio_from: str | os.PathLike | None = None,
    **kwargs,
) -> VideoSummary:
    """Writes all `frames` with `Mp4Writer` (same arguments and errors); returns its summary."""
    with Mp4Writer(path, fps, audio_from, **kwargs) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.summary


def side_by_side(driving: np.ndarray, heatmap: np.ndarray, result: np.ndarray) -> np.ndarray:
    """Composes one frame: driving frame | landmark heatmap | result, all at the result's height.

    Args:
      driving: [Hd, Wd, 3] uint8 RGB driving frame; resized (area or linear) to height R keeping
        its aspect ratio.
      heatmap: [R, R] uint8 (0..255, `vpgc_jax.data.heatmaps.draw_heatmap`) or float in [0, 1];
        shown in grey.
      result: [R, R', 3] uint8 RGB generated frame.

    Returns:
      [R, W + R + R', 3] uint8 RGB, W = round(Wd * R / Hd).

    Raises:
      ValueError: shapes or dtypes other than the above.
    """
    r = result.shape[0]
    if result.dtype != np.uint8 or result.ndim != 3 or result.shape[2] != 3:
        raise ValueError(f"result must be [R, R, 3] uint8, got {result.shape} {result.dtype}")
    if driving.dtype != np.uint8 or driving.ndim != 3 or driving.shape[2] != 3:
        raise ValueError(f"driving must be [H, W, 3] uint8, got {driving.shape} {driving.dtype}")
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2 or heatmap.shape[0] != r:
        raise ValueError(f"heatmap must be [{r}, {r}], got {heatmap.shape}")
    if heatmap.dtype != np.uint8:
        heatmap = (np.clip(heatmap, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    hd, wd = driving.shape[:2]
    if hd != r:
        interp = cv2.INTER_AREA if hd > r else cv2.INTER_LINEAR
        driving = cv2.resize(driving, (max(1, round(wd * r / hd)), r), interpolation=interp)
    return np.concatenate([driving, np.repeat(heatmap[..., None], 3, axis=2), result], axis=1)
