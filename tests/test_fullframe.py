"""Full-frame output (`reenact --full-frame`): paste-back on real frames, geometry, refusals.

The wide clip is the macron sample at half size on a static blurred 640x360 (16:9) border, 40
frames; its crop box lies inside the frame. The tiny dataset's macron box leaves the 512x512 frame
at the top and the right.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from data_prep import crop as crop_lib
from data_prep import video
from vpgc_jax import fullframe, paste, reenact, video_out
from vpgc_jax.data import frames as frames_lib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fullframe import make_wide_clip  # noqa: E402

WIDE, WIDE_FRAMES, WIDE_TEST = (640, 360), 40, 10
# Measured on the wide clip (40 frames, 128 px crops of a 260 px box, CRF 0): mean |error| 2.19
# levels in the box's core (resizing 260 -> 128 -> 260 alone: 2.17 over the whole box), signed
# -0.01..0.03 per channel, 0.94 in the feather band. With the default CRF 16 ('ultrafast'): 0.34
# outside the box, signed 0.007 ('superfast': 0.25, 0.014). Converting through RGB instead shifts
# luma by ~-1.1 levels.
CORE_OVER_RESIZE, BAND_ERROR, SHIFT = 0.3, 1.5, 0.3
CODEC_OUTSIDE, CODEC_SHIFT = 0.5, 0.1


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory, macron_video) -> Path:
    out = tmp_path_factory.mktemp("wide") / "wide.mp4"
    make_wide_clip(str(macron_video), str(out), WIDE, 0.5, (192, 52), WIDE_FRAMES)
    return out


@pytest.fixture(scope="module")
def wide_dataset(wide_clip) -> Path:
    from data_prep import prepare

    out = wide_clip.parent / "ds"
    argv = [f"--video={wide_clip}", f"--out={out}", "--size=128", f"--test-frames={WIDE_TEST}"]
    assert prepare.main(argv) == 0
    return out


def rgb_frames(path) -> np.ndarray:
    """All frames of a video as int64 RGB [N, H, W, 3] (PyAV's default conversion)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(int)


def dataset_crops(dataset) -> list[np.ndarray]:
    return [
        source[i]["image"]
        for split in ("train", "test")
        for source in [frames_lib.open_split(dataset, split)]
        for i in range(len(source))
    ]


def box_masks(shape, box, band):
    """(inside the box, the box's core: inside minus the feather band) [H, W] bool."""
    x0, y0, x1, y1 = box
    inside, core = np.zeros(shape, bool), np.zeros(shape, bool)
    inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
    core[max(y0 + band, 0) : y1 - band, max(x0 + band, 0) : x1 - band] = True
    return inside, core


def test_ground_truth_crops_paste_back_to_the_source(wide_dataset, tmp_path):
    subject = fullframe.open_subject(str(wide_dataset))
    assert (subject.width, subject.height, subject.num_frames) == (*WIDE, WIDE_FRAMES)
    crops = dataset_crops(wide_dataset)
    src = rgb_frames(subject.path)
    x0, y0, x1, y1 = subject.box
    assert 0 < x0 and 0 < y0 and x1 < WIDE[0] and y1 < WIDE[1]  # every edge is blended
    resized = [
        cv2.resize(crop_lib.crop_frame(f.astype(np.uint8), subject.box, 128), (x1 - x0, y1 - y0))
        for f in src
    ]
    resize_error = np.mean(
        [np.abs(r - f[y0:y1, x0:x1]).mean() for r, f in zip(resized, src, strict=True)]
    )
    for crf, outside_limit, shift_limit in ((0, 0.0, 0.0), (fullframe.CRF, CODEC_OUTSIDE, None)):
        paster = fullframe.Paster(subject, np.arange(WIDE_FRAMES), fullframe.FEATHER)
        out = tmp_path / f"crf{crf}.mp4"
        with video_out.Mp4Writer(out, subject.fps, crf=crf, preset=fullframe.PRESET) as writer:
            for crop in crops:
                writer.write(paster(crop))
        paster.close()
        diff = rgb_frames(out) - src  # [N, H, W, 3]
        inside, core = box_masks(src.shape[1:3], subject.box, paster.band)
        outside = diff[:, ~inside]
        # Outside the box: the source's own samples, so only the codec's error (none at CRF 0),
        # and no colour shift.
        assert np.abs(outside).mean() <= outside_limit
        assert np.abs(outside.mean(axis=(0, 1))).max() <= (shift_limit or CODEC_SHIFT)
        if crf:
            continue
        # Inside: resizing's error, no colour shift, and no seam in the band.
        assert np.abs(diff[:, core]).mean() <= resize_error + CORE_OVER_RESIZE
        assert np.abs(diff[:, core].mean(axis=(0, 1))).max() <= SHIFT
        assert np.abs(diff[:, inside & ~core]).mean() <= BAND_ERROR


def test_crop_box_partly_outside_the_frame(tiny_dataset):
    subject = fullframe.open_subject(str(tiny_dataset))
    x0, y0, x1, y1 = subject.box
    assert y0 < 0 and x1 > subject.width  # data_prep padded it at the top and the right
    paster = fullframe.Paster(subject, np.arange(4), fullframe.FEATHER)
    src = rgb_frames_first(subject.path, 4)
    out = [
        paster(crop_lib.crop_frame(f.astype(np.uint8), subject.box, 128)).to_ndarray(format="rgb24")
        for f in src
    ]
    paster.close()
    assert out[0].shape == (512, 512, 3)
    # The box clipped to the frame, widened to even bounds (whole chroma blocks).
    assert paster.compositor.region == (x0, 0, 512, y1 + y1 % 2)
    alpha, band = paster.compositor.alpha, paster.band
    # No ramp at the frame edges the box passes (top row, right column), a ramp at the others.
    assert alpha[0, band:].min() == 1.0 and alpha[band : y1 - band, -1].min() == 1.0
    assert alpha[band : y1 - band, 0].max() < 0.01 and alpha[y1 - 1, band:-band].max() < 0.01
    assert alpha[band : y1 - band, band:].min() == 1.0
    diff = np.stack(out).astype(int) - src
    inside, core = box_masks((512, 512), subject.box, band)
    assert np.abs(diff[:, ~inside]).max() == 0  # no codec here: the background is exact
    assert np.abs(diff[:, core]).mean() <= 3.0  # resizing 525 -> 128 -> 525: 1.6 measured


def rgb_frames_first(path, n) -> np.ndarray:
    with av.open(str(path)) as c:
        frames = [
            f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0), strict=False)
        ]
    return np.stack(frames).astype(int)


def test_background_frames_follow_the_prepared_numbering(macron_video, monkeypatch):
    """Resampled (30 -> 20 fps), forwards and ping-pong: the frames data_prep decoded."""
    monkeypatch.setattr(fullframe, "REVERSE_BUFFER_BYTES", 5 * 512 * 512 * 3 // 2)  # 5 frames
    n = 30
    info = video.probe(str(macron_video))
    expected = list(video.decode_frames(info, fps=20.0, max_frames=n))
    pts, times = fullframe.frame_times(str(macron_video))
    subject = fullframe.Subject(
        str(macron_video), 512, 512, 20, 20.0, n, 20, (0, 0, 512, 512),
        pts=pts[fullframe.source_index(times, 20.0, n)],
    )  # fmt: skip
    background = fullframe.Background(subject)
    order = list(fullframe.ping_pong(n, 2 * n + 5, start=n - 8)) + [3, 9]  # down, up, jumps
    got = [f.to_ndarray(format="rgb24") for f in background.frames(order)]
    background.close()
    assert [k for k in order[:10]] == [22, 23, 24, 25, 26, 27, 28, 29, 28, 27]
    for k, frame in zip(order, got, strict=True):
        np.testing.assert_array_equal(frame, expected[k])


def test_ping_pong_and_track_resampling():
    np.testing.assert_array_equal(fullframe.ping_pong(4, 9), [0, 1, 2, 3, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(fullframe.ping_pong(1, 3), [0, 0, 0])
    track = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 68, 2))  # [10, 68, 2]
    up = fullframe.resample_track(track, 25, 30)  # 0.4 s at 30 fps
    assert up.shape == (12, 68, 2)
    np.testing.assert_allclose(up[:, 0, 0], np.minimum(np.arange(12) * 25 / 30, 9), atol=1e-6)


def run(driver, target, driving, out, *extra) -> int:
    argv = [f"--driver={driver}", f"--target={target}", f"--driving={driving}", f"--out={out}"]
    return reenact.main([*argv, "--batch=8", "--full-frame", *extra])


def test_self_and_cross_full_frame(tiny_driver_run, wide_dataset, anchor_dataset, tmp_path):
    subject = fullframe.open_subject(str(wide_dataset))
    src = rgb_frames(subject.path)
    inside, _ = box_masks(src.shape[1:3], subject.box, 1)

    # Self: the test split's frames behind the result, the source's size, rate and audio.
    out = tmp_path / "self.mp4"
    assert run(tiny_driver_run, wide_dataset, wide_dataset, out) == 0
    frames = rgb_frames(out)
    assert frames.shape == (WIDE_TEST, WIDE[1], WIDE[0], 3)
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == 30 and len(c.streams.audio) == 1
    background = frames[:, ~inside] - src[WIDE_FRAMES - WIDE_TEST :, ~inside]
    assert np.abs(background).mean() <= CODEC_OUTSIDE

    # Cross, longer than the subject: 40 frames at 25 fps -> 48 at 30 fps, the background
    # ping-pongs (39 then 38, ...). Lossless, so the background is the source frame exactly.
    out = tmp_path / "cross.mp4"
    assert run(tiny_driver_run, wide_dataset, anchor_dataset, out, "--crf=0") == 0
    frames = rgb_frames(out)
    assert frames.shape == (48, WIDE[1], WIDE[0], 3)
    for k, expected in ((0, 0), (39, 39), (40, 38), (47, 31)):
        np.testing.assert_array_equal(frames[k][~inside], src[expected][~inside])
    assert np.abs(src[31][~inside] - src[7][~inside]).max() > 0  # a plain loop would differ


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_mismatched_subject_video_is_refused(
    wide_dataset, wide_clip, macron_video, tmp_path, capsys
):
    out = tmp_path / "out" / "x.mp4"
    driver = tmp_path / "not-loaded"  # the check comes before the model is loaded
    shorter = tmp_path / "shorter.mp4"  # same size, one frame less
    make_wide_clip(str(macron_video), str(shorter), WIDE, 0.5, (192, 52), WIDE_FRAMES - 1)
    shifted = tmp_path / "shifted.mp4"  # same size and frame count, other content
    make_wide_clip(str(wide_clip), str(shifted), WIDE, 1.0, (4, 0), WIDE_FRAMES)
    small = tmp_path / "small.mp4"
    make_wide_clip(str(wide_clip), str(small), (320, 180), 0.5, (0, 0), WIDE_FRAMES)
    cases = {
        small: "320x180, but",
        shorter: f"{WIDE_FRAMES - 1} frames, but",
        shifted: "SHA-256 differs",
        tmp_path / "missing.mp4": "not found",
    }
    for clip, message in cases.items():
        argv = [f"--subject-video={clip}"]
        assert run(driver, wide_dataset, wide_dataset, out, *argv) == 2
        assert message in one_line_error(capsys)
        assert not out.parent.exists() or not os.listdir(out.parent)

    # A dataset that does not record its source: asks for --subject-video, then checks it.
    old = tmp_path / "old_ds"
    shutil.copytree(wide_dataset, old)
    meta = json.loads((old / "meta.json").read_text())
    for key in ("path", "sha256"):
        meta["source"].pop(key)
    (old / "meta.json").write_text(json.dumps(meta))
    assert run(driver, old, old, out) == 2
    assert "pass --subject-video" in one_line_error(capsys)
    assert fullframe.open_subject(str(old), str(wide_clip)).num_frames == WIDE_FRAMES
    with pytest.raises(fullframe.SubjectVideoError, match="frames, but"):
        fullframe.open_subject(str(old), str(shorter))


def test_compositor_refuses_a_box_off_the_frame():
    with pytest.raises(ValueError, match="not a square overlapping"):
        paste.Compositor((700, 0, 800, 100), 640, 360, 4, np.eye(3, 4))
