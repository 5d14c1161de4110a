"""Audio features aligned to video frames: windows of 80-band log-mel at 16 kHz (issue 20).

The audio-to-expression model (`vpgc_jax.models.audio`) reads, for video frame t, the log-mel
frames within +-`CONTEXT_HOPS` hops (+-0.2 s) of frame t's time. `data_prep.prepare` stores these
windows with the dataset (``audio.npz``, `write_features`); `vpgc_jax.reenact --audio` computes
them the same way from any file PyAV reads.

Features: the audio is decoded with PyAV and resampled to 16 kHz mono (any input rate or layout);
a 25 ms periodic Hann window every 10 ms, zero-padded to a 512-point FFT and centred on its hop
(librosa's ``stft(center=True)`` framing with its default constant padding), power spectra through
librosa's Slaney mel filterbank (80 bands, 55-7600 Hz), natural log floored at 1e-5, then each
band normalised to zero mean and unit variance over the clip (cepstral mean and variance
normalisation: a louder microphone or another room shifts every band of a clip alike). The STFT
is numpy's: librosa's own compiles numba kernels on first use (18 s measured here).

Time 0 of the audio is the first video frame's presentation time (the streams of a container may
start at different times: the macron sample's video starts 0.08 s after its audio), or the start
of the audio for an audio-only file.
"""

import os

import av
import numpy as np

from data_prep import PrepareError

SAMPLE_RATE = 16_000
N_FFT = 512
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
LOG_FLOOR = 1e-5
CONTEXT_HOPS = 20  # +-0.2 s around a frame
WINDOW = 2 * CONTEXT_HOPS + 1
# A clip whose loudest sample is below this (dB relative to full scale) is treated as silent.
SILENCE_DBFS = -50.0
FEATURES_FILE = "audio.npz"


class AudioError(PrepareError):
    """Audio that cannot be used: no audio stream, not decodable, or silent."""


def read_audio(path: str) -> np.ndarray:
    """Decodes the first audio stream of `path` to 16 kHz mono.

    Args:
      path: any container PyAV (FFmpeg) reads: wav, mp3, m4a, flac, ogg, or a video with audio.

    Returns:
      [n] float32 samples in [-1, 1], sample 0 at the first video frame's time (see the module
      docstring): leading audio before it is cut, a gap before the audio starts is zero-filled.

    Raises:
      AudioError: missing file, not a media file, no audio stream, or nothing decodable.
    """
    if not os.path.isfile(path):
        raise AudioError(path, "file not found" if not os.path.exists(path) else "not a file")
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise AudioError(
            path, f"not a readable audio or video file ({e.__class__.__name__})"
        ) from e
    with container:
        if not container.streams.audio:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise AudioError(path, f"has no audio stream (found: {kinds})")
        stream = container.streams.audio[0]
        video = container.streams.video[0] if container.streams.video else None
        origin = None
        if video is not None and video.start_time is not None:
            origin = float(video.start_time * video.time_base)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks, first_time = [], None
        try:
            for frame in container.decode(stream):
                if first_time is None and frame.time is not None:
                    first_time = float(frame.time)
                chunks.extend(c.to_ndarray().reshape(-1) for c in resampler.resample(frame))
            chunks.extend(c.to_ndarray().reshape(-1) for c in resampler.resample(None))
        except av.FFmpegError as e:
            if not chunks:
                raise AudioError(path, f"its audio does not decode ({e})") from e
    if not chunks:
        raise AudioError(path, "its audio stream holds no samples")
    samples = np.concatenate(chunks).astype(np.float32)
    if first_time is not None and origin is not None:
        shift = round((first_time - origin) * SAMPLE_RATE)
        if shift > 0:  # the audio starts after the first video frame
            samples = np.concatenate([np.zeros(shift, np.float32), samples])
        elif shift < 0:
            samples = samples[-shift:]
    return samples


def peak_dbfs(samples: np.ndarray) -> float:
    """The loudest sample in dB relative to full scale (-inf for digital silence)."""
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    return float(20.0 * np.log10(peak)) if peak > 0 else float("-inf")


def read_speech(path: str) -> np.ndarray:
    """`read_audio`, refusing silence: [n] float32 16 kHz mono.

    Raises:
      AudioError: as `read_audio`, or the peak is below `SILENCE_DBFS` (nothing to lip-sync to).
    """
    samples = read_audio(path)
    level = peak_dbfs(samples)
    if level < SILENCE_DBFS:
        raise AudioError(
            path, f"its audio is silent (peak {level:.0f} dBFS, below {SILENCE_DBFS:.0f} dBFS)"
        )
    return samples


def log_mel(samples: np.ndarray) -> np.ndarray:
    """80-band log-mel spectrogram, one frame every 10 ms (see the module docstring).

    Args:
      samples: [n] float32 16 kHz mono.

    Returns:
      [1 + n // HOP_LENGTH, N_MELS] float32 natural-log mel power; frame j is centred on sample
      j * HOP_LENGTH.
    """
    import librosa  # the mel filterbank; imported here (1.3 s) so data_prep's other users skip it

    x = np.pad(np.asarray(samples, np.float32), N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH]
    hann = np.hanning(WIN_LENGTH + 1)[:-1]  # periodic
    left = (N_FFT - WIN_LENGTH) // 2
    window = np.zeros(N_FFT, np.float32)
    window[left : left + WIN_LENGTH] = hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # [M, N_FFT // 2 + 1]
    basis = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX
    )  # [N_MELS, N_FFT // 2 + 1]
    return np.log(np.maximum(power @ basis.T, LOG_FLOOR)).astype(np.float32)


def normalise(mel: np.ndarray) -> np.ndarray:
    """Each band to zero mean and unit variance over the clip: [M, N_MELS] float32."""
    return ((mel - mel.mean(0)) / (mel.std(0) + 1e-5)).astype(np.float32)


def frame_windows(mel: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """The log-mel window around each video frame.

    Frame i is at i / fps seconds; its window holds the `WINDOW` mel frames centred on the
    nearest one. Windows reaching past either end of the audio repeat each band's lowest value
    (silence).

    Args:
      mel: [M, N_MELS] float32 (`normalise(log_mel(...))`).
      fps: video frames per second.
      n_frames: number of frames.

    Returns:
      [n_frames, WINDOW, N_MELS] float32.
    """
    centre = np.round(np.arange(n_frames) / fps * SAMPLE_RATE / HOP_LENGTH)
    pad = np.broadcast_to(mel.min(0), (CONTEXT_HOPS, mel.shape[1]))
    padded = np.concatenate([pad, mel, pad])
    index = centre.astype(np.int64)[:, None] + np.arange(WINDOW)  # in `padded`: centre + k
    index = np.clip(index, 0, len(padded) - 1)
    last = len(mel) + CONTEXT_HOPS - 1  # a frame past the audio's end sees silence only
    index[centre.astype(np.int64) > last] = 0
    return padded[index]


def windows(samples: np.ndarray, fps: float, n_frames: int | None = None) -> np.ndarray:
    """The normalised log-mel window of every frame (`frame_windows`) of 16 kHz mono samples.

    Args:
      samples: [n] float32 (`read_speech`).
      fps: video frames per second.
      n_frames: frames to cover; None: as many as the audio lasts (at least one).

    Returns:
      [n_frames, WINDOW, N_MELS] float32.
    """
    if n_frames is None:
        n_frames = max(1, int(np.ceil(len(samples) / SAMPLE_RATE * fps)))
    return frame_windows(normalise(log_mel(samples)), fps, n_frames)


def features(path: str, fps: float, n_frames: int | None = None) -> np.ndarray:
    """`windows` of `path`'s audio: [n_frames, WINDOW, N_MELS] float32.

    Raises:
      AudioError: no usable audio, or silence (`read_speech`).
    """
    return windows(read_speech(path), fps, n_frames)


def write_features(out_dir: str, windows: dict[str, np.ndarray]) -> None:
    """Writes ``audio.npz``: {split}_mel [N, WINDOW, N_MELS] float16 per split, and the settings."""
    np.savez(
        os.path.join(out_dir, FEATURES_FILE),
        **{f"{split}_mel": w.astype(np.float16) for split, w in windows.items()},
        sample_rate=SAMPLE_RATE,
        hop_length=HOP_LENGTH,
        context_hops=CONTEXT_HOPS,
        n_mels=N_MELS,
    )


def settings() -> dict:
    """The feature settings, for meta.json and the audio runs' config check."""
    return {
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "win_length": WIN_LENGTH,
        "hop_length": HOP_LENGTH,
        "n_mels": N_MELS,
        "fmin": FMIN,
        "fmax": FMAX,
        "context_hops": CONTEXT_HOPS,
    }
