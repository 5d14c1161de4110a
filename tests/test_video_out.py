"""The mp4 writer (vpgc_jax.video_out): frames, rate, audio muxing, atomic output; side by side.

Audio comes from the news-anchor sample clip (AAC 44.1 kHz, copied) and from a small synthetic
Matroska file with PCM audio (re-encoded to AAC).
"""

import os
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import ANCHOR

from data_prep import video
from vpgc_jax import video_out
from vpgc_jax.data.heatmaps import draw_heatmap

# Odd frame counts and an odd width; rates that are not the source's.
N_FRAMES, HEIGHT, WIDTH = 23, 64, 90


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Real frames: the anchor clip's first N_FRAMES, resized to HEIGHT x WIDTH."""
    import cv2

    if not ANCHOR.is_file():
        pytest.skip(f"shared sample data not found at {ANCHOR}")
    decoded = video.decode_frames(video.probe(str(ANCHOR)), max_frames=N_FRAMES)
    return [cv2.resize(f, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) for f in decoded]


def _streams(path) -> dict:
    """{'frames', 'rate', 'size', 'audio': None or (codec, seconds decoded)} read back with PyAV."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        out = {"rate": v.average_rate, "size": (v.codec_context.width, v.codec_context.height)}
        out["frames"] = sum(1 for _ in c.decode(v))
    with av.open(str(path)) as c:
        out["audio"] = None
        if c.streams.audio:
            a = c.streams.audio[0]
            seconds = sum(f.samples for f in c.decode(a)) / a.codec_context.sample_rate
            out["audio"] = (a.codec_context.name, seconds)
    return out


def _pcm_source(path, seconds=2.0, fps=10, rate=16000) -> None:
    """A Matroska file: black h264 video and a stereo 440 Hz sine as pcm_s16le."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width = v.height = 32
        v.pix_fmt = "yuv420p"
        a = c.add_stream("pcm_s16le", rate=rate)
        a.layout = "stereo"
        for _ in range(round(seconds * fps)):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")))
        t = np.arange(round(seconds * rate)) / rate
        sine = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        for k in range(0, len(sine), 1600):
            chunk = np.repeat(sine[k : k + 1600][None], 2, axis=0).T.reshape(1, -1)  # interleaved
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
            frame.sample_rate, frame.pts = rate, k
            c.mux(a.encode(frame))
        c.mux(v.encode())
        c.mux(a.encode())


def test_frames_rate_and_copied_audio(tmp_path, frames):
    fps = Fraction(30000, 1001)
    summary = video_out.write_mp4(tmp_path / "out.mp4", frames, fps, audio_from=ANCHOR)
    got = _streams(tmp_path / "out.mp4")
    assert got["frames"] == summary.frames == N_FRAMES
    assert got["rate"] == fps and summary.size == got["size"] == (WIDTH, HEIGHT)
    assert summary.audio == "copy" and got["audio"][0] == "aac"
    # Trimmed to the video (0.77 s of a 20 s source), overrunning by less than one AAC packet.
    assert 0 <= got["audio"][1] - summary.duration_s < 1024 / 44100
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_audio_from_an_offset_into_the_source(tmp_path, frames):
    """A clip starting 5 s into the source (e.g. a test split) gets the audio from 5 s on."""
    summary = video_out.write_mp4(
        tmp_path / "out.mp4", frames, 25, audio_from=ANCHOR, audio_start_s=5.0
    )
    with av.open(str(summary.path)) as c:
        stream = c.streams.audio[0]
        first = next(p for p in c.demux(stream) if p.pts is not None)
        start = float(first.pts * stream.time_base)
    assert -1024 / 44100 < start <= 0.0  # no packets from before the offset
    assert 0 <= _streams(summary.path)["audio"][1] - summary.duration_s < 2 * 1024 / 44100


def test_reencoded_audio_and_odd_size(tmp_path, frames):
    _pcm_source(tmp_path / "src.mkv")
    odd = [f[:63, :89] for f in frames]
    summary = video_out.write_mp4(tmp_path / "out.mp4", odd, 25, audio_from=tmp_path / "src.mkv")
    got = _streams(tmp_path / "out.mp4")
    assert summary.audio == "aac" and got["audio"][0] == "aac"
    assert 0 <= got["audio"][1] - N_FRAMES / 25 < 1024 / 16000
    assert got["size"] == summary.size == (90, 64)  # padded to even sides
    assert got["frames"] == N_FRAMES and got["rate"] == 25


def test_no_audio_when_source_has_none(tmp_path, frames):
    silent = video_out.write_mp4(tmp_path / "silent.mp4", frames[:5], 25)
    assert silent.audio is None and _streams(silent.path)["audio"] is None
    summary = video_out.write_mp4(tmp_path / "out.mp4", frames, 25, audio_from=silent.path)
    assert summary.audio is None and _streams(summary.path)["audio"] is None


def test_unwritable_output_is_a_clear_error(tmp_path, frames):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(video_out.OutputError, match="not writable") as e:
        video_out.write_mp4(blocker / "out.mp4", frames, 25)
    assert str(blocker) in str(e.value)
    with pytest.raises(video_out.OutputError, match="is a directory"):
        video_out.write_mp4(tmp_path, frames, 25)
    if os.geteuid() != 0:  # root writes into read-only directories anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(video_out.OutputError, match="not writable"):
            video_out.write_mp4(locked / "out.mp4", frames, 25)
        assert os.listdir(locked) == []
    assert sorted(os.listdir(tmp_path)) == ["not_a_dir"]


def test_failure_midway_leaves_nothing_and_keeps_existing_file(tmp_path, frames):
    target = tmp_path / "out.mp4"

    def failing():
        yield from frames[:7]
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        video_out.write_mp4(target, failing(), 25, audio_from=ANCHOR)
    assert os.listdir(tmp_path) == []
    video_out.write_mp4(target, frames[:3], 25)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="earlier frames"):
        video_out.write_mp4(target, [frames[0], frames[1][:32]], 25)
    with pytest.raises(ValueError, match="no frames"):
        video_out.write_mp4(target, [], 25)
    with pytest.raises(video_out.OutputError, match="audio source not found"):
        video_out.write_mp4(target, frames, 25, audio_from=tmp_path / "missing.mp4")
    assert os.listdir(tmp_path) == ["out.mp4"] and target.read_bytes() == before


def test_side_by_side(tiny_dataset, frames):
    from vpgc_jax.data.frames import load_landmarks, open_split

    item = open_split(tiny_dataset, "test")[0]
    result = item["image"]  # [128, 128, 3]
    heat = draw_heatmap(load_landmarks(tiny_dataset, "test")["landmarks"][0], 128)
    driving = frames[0]  # 64 x 90, enlarged to 128 x 180
    out = video_out.side_by_side(driving, heat, result)
    assert out.shape == (128, 180 + 128 + 128, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, -128:], result)
    np.testing.assert_array_equal(out[:, 180:308], np.repeat(heat[..., None], 3, axis=2))
    assert np.abs(out[:, :180].astype(float).mean() - driving.mean()) < 2.0
    as_float = video_out.side_by_side(driving, heat / 255.0, result)
    np.testing.assert_array_equal(as_float, out)
    with pytest.raises(ValueError, match="heatmap"):
        video_out.side_by_side(driving, heat[:64], result)
