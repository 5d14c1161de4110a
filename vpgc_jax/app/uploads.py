"""Checks an uploaded clip before any job is made from it: size, a video, long enough, a face.

Each check fails with one `UploadError` line that the page shows; nothing is written. The face
check runs data_prep's own crop estimate (dlib) on the clip's first seconds, so a clip that passes
here is very likely to pass `data_prep.prepare` in the job; the job still reports prepare's own
error if it does not. Nothing here imports JAX.
"""

import dataclasses
import os

from data_prep import PrepareError, crop, video

# The face check decodes the first FACE_CHECK_FRAMES frames (two seconds) and looks for a face in
# every FACE_CHECK_STRIDE-th of them (dlib, as data_prep's crop estimate).
FACE_CHECK_FRAMES = 60
FACE_CHECK_STRIDE = 6


class UploadError(ValueError):
    """A clip that cannot be used; the message is one line for the page."""


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    """What the checks found.

    Attributes:
      path: the clip.
      frames: frame count (from the container, else duration x fps).
      fps: average frame rate in frames per second.
      seconds: duration in seconds.
      size: (width, height) in pixels, upright.
      has_audio: whether the clip has an audio stream.
      face_px: median detected face-box side in source pixels, over the checked frames.
    """

    path: str
    frames: int
    fps: float
    seconds: float
    size: tuple[int, int]
    has_audio: bool
    face_px: float

    def describe(self) -> str:
        audio = "with audio" if self.has_audio else "no audio"
        w, h = self.size
        return f"{self.frames} frames, {self.seconds:.1f} s at {self.fps:.3g} fps, {w}x{h}, {audio}"


def check_clip(path: str | None, min_frames: int, max_bytes: int, what: str = "clip") -> ClipInfo:
    """Checks that `path` is a usable talking-head video.

    Args:
      path: the uploaded file (None: nothing was uploaded).
      min_frames: fewest frames accepted.
      max_bytes: largest file size accepted, in bytes.
      what: the clip's role in messages ('subject clip', 'driving clip').

    Returns:
      The clip's `ClipInfo`.

    Raises:
      UploadError: no file, too large, not a video (or unreadable), too short, or no face in its
        first frames (data_prep's message).
    """
    if not path or not os.path.isfile(path):
        raise UploadError(f"no {what}: upload a video file or pick a sample clip")
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise UploadError(
            f"{name}: {size / 2**20:.0f} MiB is over the {max_bytes / 2**20:.0f} MiB upload limit "
            "(cut the clip or restart the app with a larger --max-upload-mb)"
        )
    try:
        info = video.probe(path)
        stats, sampler = video.DecodeStats(), crop.FrameSampler()
        sampler.stride = FACE_CHECK_STRIDE  # a few frames: this runs while the page waits
        for i, gray in enumerate(video.decode_frames(info, None, FACE_CHECK_FRAMES, "gray", stats)):
            sampler.add(i, gray)
        video.check_complete(info, stats)
        frames = info.declared_frames or int(round(info.duration_s * info.fps))
        frames = max(frames, stats.output_frames)
        if frames < min_frames:
            raise UploadError(
                f"{name}: too short for a {what}: {frames} frames "
                f"({info.duration_s:.1f} s), at least {min_frames} needed"
            )
        box = crop.estimate_crop_box(
            path, sampler, info.width, info.height, crop.DEFAULT_CROP_SCALE, 0.2
        )
    except PrepareError as e:
        raise UploadError(f"{name}: {e.reason}") from e
    return ClipInfo(
        path=path,
        frames=frames,
        fps=info.fps,
        seconds=info.duration_s,
        size=(info.width, info.height),
        has_audio=info.has_audio,
        face_px=box.face_size,
    )
