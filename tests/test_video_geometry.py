"""Real-world video geometry (issue 17): rotation metadata, non-square pixels, variable frame rate.

Test clips are the first frames of the macron sample re-encoded with PyAV: stored sideways with a
display matrix that turns them upright (what phones write), stored squeezed to 384 px wide with a
4:3 sample aspect ratio, and with uneven timestamps. Decoding must give the upright, undistorted
frames; the rotated clip, which was refused as "no face found" before, prepares to the same crop.
"""

import json
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from data_prep import prepare, video

N = 8


@pytest.fixture(scope="module")
def frames(macron_video) -> list[np.ndarray]:
    out = []
    with av.open(str(macron_video)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if len(out) == N:
                return out


def write(path, images, *, rotation=0, sar=None, pts_ms=None) -> str:
    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as o:
        s = o.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "12"}
        if rotation:
            s.set_display_rotation(rotation)
        if sar:
            s.codec_context.sample_aspect_ratio = sar
        if pts_ms:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(frame):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    return str(path)


def mean_abs(a, b) -> float:
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def test_display_matrix_rotation_is_applied(frames, tmp_path):
    # Stored a quarter turn clockwise; the matrix asks for a quarter turn counter-clockwise.
    clip = write(
        tmp_path / "phone.mp4", [np.ascontiguousarray(np.rot90(f, -1)) for f in frames], rotation=90
    )
    info = video.probe(clip)
    assert (info.rotation, info.width, info.height) == (90, 512, 512)
    decoded = list(video.decode_frames(info))
    # Upright: close to the source frames (H.264 at crf 12), far from the sideways ones.
    upright = [mean_abs(d, f) for d, f in zip(decoded, frames, strict=True)]
    sideways = [mean_abs(d, np.rot90(f, -1)) for d, f in zip(decoded, frames, strict=True)]
    assert max(upright) < 3.0 and min(sideways) > 20.0, (upright, sideways)


def test_non_square_pixels_are_stretched_to_square(frames, tmp_path):
    squeezed = [cv2.resize(f, (384, 512), interpolation=cv2.INTER_AREA) for f in frames]
    clip = write(tmp_path / "anamorphic.mp4", squeezed, sar=Fraction(4, 3))
    info = video.probe(clip)
    assert (info.stored_width, info.width, info.height) == (384, 512, 512)
    assert info.sample_aspect == pytest.approx(4 / 3)
    decoded = list(video.decode_frames(info))
    assert decoded[0].shape == (512, 512, 3)
    err = [mean_abs(d, f) for d, f in zip(decoded, frames, strict=True)]
    assert max(err) < 6.0, err  # down- and up-sampling loss only


def test_variable_frame_rate_is_detected_and_resampled(frames, tmp_path):
    pts = [0, 33, 67, 150, 183, 217, 300, 333]  # 30 fps with two 83 ms gaps
    clip = write(tmp_path / "vfr.mp4", frames, pts_ms=pts)
    info = video.probe(clip)
    assert info.variable_rate
    args = prepare.parse_args(["--video", clip, "--out", str(tmp_path / "x")])
    fps = prepare.output_fps(args, info)
    assert fps == pytest.approx(info.fps)
    out = list(video.decode_frames(info, fps))
    assert len(out) == round((pts[-1] / 1000 + 1 / info.fps) * fps)  # constant rate, gaps filled
    cfr = video.probe(write(tmp_path / "cfr.mp4", frames))
    assert not cfr.variable_rate


# Nearest to `video.VFR_TOLERANCE` on either side of benchmarks/frame_intervals.py's measurements.
@pytest.mark.parametrize(
    "pts, variable",
    [
        ([round(i * 1000 / 120) for i in range(16)], False),  # 120 fps, rounded to 1 ms: 0.117
        (
            [round(i * 1000 / 30) for i in range(9)]
            + [300 + round(i * 1000 / 24) for i in range(1, 8)],
            True,
        ),  # 30 <-> 24 fps: 0.233
    ],
    ids=["120 fps rounded to 1 ms", "30 then 24 fps"],
)
def test_frame_rate_threshold_between_measured_spreads(frames, tmp_path, pts, variable):
    small = [np.ascontiguousarray(f[::4, ::4]) for f in frames * 2]  # 128 px: quick to encode
    info = video.probe(write(tmp_path / "clip.mp4", small, pts_ms=pts))
    assert info.variable_rate == variable


def test_rotated_phone_clip_prepares_like_the_upright_one(frames, tmp_path, capsys):
    clip = write(
        tmp_path / "phone.mp4", [np.ascontiguousarray(np.rot90(f, 1)) for f in frames], rotation=-90
    )
    upright = write(tmp_path / "upright.mp4", frames)
    metas = []
    for name, path in (("rot", clip), ("up", upright)):
        argv = [f"--video={path}", f"--out={tmp_path / name}", "--size=64", "--test-frames=2"]
        assert prepare.main(argv) == 0
        metas.append(json.loads((tmp_path / name / "meta.json").read_text()))
    rot, up = metas
    assert rot["geometry"]["rotation_deg_ccw"] == 270 and up["geometry"]["rotation_deg_ccw"] == 0
    assert "rotated 270 deg counter-clockwise" in capsys.readouterr().out
    assert rot["detection_rate"] == 1.0
    np.testing.assert_allclose(rot["crop_box"], up["crop_box"], atol=2)
