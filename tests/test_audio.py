"""Audio driving (issue 20) on real data at tiny size: features, the model's run, reenact."""

import json
import os
import shutil

import av
import jax
import ml_collections
import numpy as np
import pytest
from conftest import TINY_AUDIO, write_media
from test_readme_commands import train_flags_parsed
from test_reenact import MP4_LUMA_ERROR, decode, luma

from data_prep import audio as audio_lib
from data_prep import prepare
from eval import audio as audio_eval
from vpgc_jax import audio_drive, expression, images, parallel, reenact, runs, video_out
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data.heatmaps import heatmap_stack
from vpgc_jax.inference import load_reenactor


def loud_frames(windows: np.ndarray) -> np.ndarray:
    """Frames whose window centre (the middle mel frame), averaged over the bands, is above the
    middle of its range: a tone's onset and offset clicks, which reach every band."""
    e = windows[:, audio_lib.CONTEXT_HOPS].mean(-1)
    return np.flatnonzero(e > (e.max() + e.min()) / 2)


def test_features_follow_the_sound_in_time(tmp_path):
    # A tone from 1.0 to 1.2 s: its onset and offset at frames 25 and 30 of 25 fps, whatever the
    # rate, layout or container, and when the audio stream starts 0.4 s after the video (the tone
    # stays at 1.0 s of the video's time). Measured: exactly [25, 30] in all three.
    for name, kwargs in (
        ("a.mp4", {}),
        ("late_audio.mp4", {"audio_start_s": 0.4}),
        ("a.wav", {"video": False}),
    ):
        path = write_media(tmp_path / name, 2.0, tone=(1.0, 1.2), **kwargs)
        windows = audio_lib.features(str(path), 25.0)
        assert windows.shape[1:] == (audio_lib.WINDOW, audio_lib.N_MELS)
        assert abs(len(windows) - 50) <= 1  # 2 s at 25 fps
        loud = loud_frames(windows)
        assert abs(loud.min() - 25) <= 1 and abs(loud.max() - 30) <= 1, (name, loud)
    # A bad file is one line, whatever is wrong with it.
    (tmp_path / "text.wav").write_text("not audio")
    cases = {
        write_media(tmp_path / "mute.mp4", 1.0, audio_start_s=None): "has no audio stream",
        write_media(tmp_path / "silence.wav", 1.0, video=False): "its audio is silent",
        tmp_path / "text.wav": "not a readable audio or video file",
        tmp_path / "missing.wav": "file not found",
    }
    for path, message in cases.items():
        with pytest.raises(audio_lib.AudioError, match=message):
            audio_lib.features(str(path), 25.0)


def test_prepare_writes_frame_aligned_windows(tiny_dataset, macron_video):
    meta = frames_lib.load_meta(tiny_dataset)
    assert meta["audio"]["features"] == "audio.npz" and meta["audio"]["sample_rate"] == 16_000
    train, test = (frames_lib.load_audio(tiny_dataset, s) for s in frames_lib.SPLITS)
    assert train.shape == (70, audio_lib.WINDOW, audio_lib.N_MELS) and len(test) == 20
    # Frame t's window is centred on t / fps of the clip's audio, normalised over the clip.
    whole = audio_lib.normalise(audio_lib.log_mel(audio_lib.read_audio(str(macron_video))))
    centre = round(75 / 30.0 * audio_lib.SAMPLE_RATE / audio_lib.HOP_LENGTH)
    np.testing.assert_allclose(test[5, audio_lib.CONTEXT_HOPS], whole[centre], atol=2e-3)


def test_a_clip_without_audio_prepares_and_the_audio_model_refuses_it(
    macron_video, tmp_path, capsys
):
    with av.open(str(macron_video)) as c:
        decoded = zip(range(30), c.decode(video=0), strict=False)
        frames = [f.to_ndarray(format="rgb24") for _, f in decoded]
    mute = video_out.write_mp4(tmp_path / "mute.mp4", frames, 30).path
    ds = tmp_path / "ds"
    assert prepare.main([f"--video={mute}", f"--out={ds}", "--size=64", "--test-frames=10"]) == 0
    assert "audio: no" in capsys.readouterr().out
    assert not (ds / "audio.npz").exists()
    argv = ["--config=configs/audio.py:cpu", f"--workdir={tmp_path / 'run'}"]
    with train_flags_parsed([*argv, f"--config.dataset_dir={ds}"]) as train_lib:
        with pytest.raises(SystemExit) as e:
            train_lib.main(["vpgc_jax.train"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {ds}: has no audio features (the source has no audio stream)"
    assert not (tmp_path / "run").exists()


def test_quickstart_refuses_bad_speech_before_any_work(macron_video, tmp_path):
    from vpgc_jax import quickstart

    (tmp_path / "notes.wav").write_text("not audio")
    out = tmp_path / "qs"
    argv = [f"--video={macron_video}", f"--audio={tmp_path / 'notes.wav'}", f"--out={out}"]
    with pytest.raises(SystemExit, match="notes.wav: not a readable audio or video file"):
        quickstart.main(argv)
    assert not out.exists()


def test_the_audio_run_logs_scores_and_resumes(tiny_audio_run, tiny_dataset, tmp_path):
    run = tiny_audio_run
    scores = json.loads((run / "eval.json").read_text())
    for row in (scores, scores["baselines"]["mean_mouth"], scores["baselines"]["nearest_audio"]):
        assert {"mouth_lmd", "opening_corr", "opening_range", "flicker"} <= set(row)
        assert 0 < row["mouth_lmd"] < 40  # px at 512
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval_mouth_lmd" in r] == [2, 4]
    assert (run / "samples" / "audio_000004.png").is_file()
    restored = runs.load_audio_model(str(run))
    assert restored.step == 4 and restored.basis.num_components >= 1
    # The untrained model (its last layer starts at zero) is the mean-mouth baseline.
    config = ml_collections.ConfigDict(restored.config.to_dict())
    config.dataset_dir = str(tiny_dataset)
    evaluator = audio_eval.AudioEvaluator(
        config, restored.basis, runs.make_predict_coefficients(restored.model), parallel.make_mesh()
    )
    untrained = jax.tree.map(np.zeros_like, restored.params)
    mean = scores["baselines"]["mean_mouth"]["mouth_lmd"]
    assert evaluator.evaluate(untrained)["mouth_lmd"] == pytest.approx(mean, rel=1e-5)
    assert scores["mouth_lmd"] != pytest.approx(mean, rel=1e-5)

    # A resumed run continues from step 4 with the stored basis.
    work = tmp_path / "run"
    shutil.copytree(run, work)
    with train_flags_parsed(
        ["--config=configs/audio.py:cpu", f"--workdir={work}", "--config.num_steps=6"]
        + [f"--config.{k}={v}" for k, v in TINY_AUDIO.items() if k != "num_steps"]
        + [f"--config.dataset_dir={tiny_dataset}"]
    ) as train_lib:
        train_lib.main(["vpgc_jax.train"])
    assert runs.load_audio_model(str(work)).step == 6
    assert (work / runs.BASIS_FILE).read_bytes() == (run / runs.BASIS_FILE).read_bytes()


def test_reenact_with_speech(
    tiny_driver_run, tiny_audio_run, tiny_dataset, anchor_dataset, tmp_path, capsys
):
    speech = write_media(tmp_path / "speech.wav", 1.5, tone=(0.3, 1.2), video=False)
    out = tmp_path / "speech.mp4"
    argv = [f"--driver={tiny_driver_run}", f"--audio-model={tiny_audio_run}"]
    argv += [f"--target={tiny_dataset}", "--batch=8"]
    assert reenact.main([*argv, f"--audio={speech}", f"--out={out}"]) == 0
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1 and c.streams.video[0].average_rate == 30
    got = decode(out)
    assert abs(len(got) - 45) <= 1  # 1.5 s at the subject's 30 fps

    # The video holds what the model renders for the audio-driven track, within H.264's error.
    # The subject's 20 test frames give the head pose of its 45 frames, played forward, back and
    # forward again (ping-pong).
    run = runs.load_audio_model(str(tiny_audio_run))
    track = audio_drive.audio_track(run, str(speech), str(tiny_dataset), "subject")
    assert len(track.landmarks) == len(got)
    upper = track.landmarks[:, expression.UPPER_FACE]  # brows and eyes: the pose track's own
    np.testing.assert_allclose(upper[19 + 5], upper[19 - 5], atol=1e-4)  # mirrored at 19
    np.testing.assert_allclose(upper[38 + 3], upper[38 - 3], atol=1e-4)  # and at 38
    assert np.abs(upper[5] - upper[6]).max() > 1e-3  # (the head does move)
    lms = track.landmarks * (32 / 128)
    stacks = np.stack([heatmap_stack(lms, t, 32) for t in range(len(lms))])
    reenactor = load_reenactor(str(tiny_driver_run))
    want = luma(
        images.to_uint8(
            np.concatenate([reenactor.drive(stacks[i : i + 8]) for i in range(0, len(stacks), 8)])
        )
    )
    assert np.abs(luma(got) - want).mean() < MP4_LUMA_ERROR

    # The subject's own held-out audio, in its own pose: one frame per test frame; another
    # person's head motion (a prepared dataset of 40 frames).
    held = tmp_path / "held.mp4"
    assert reenact.main([*argv, f"--audio={tiny_dataset}", f"--out={held}"]) == 0
    assert len(decode(held)) == 20
    moved = tmp_path / "moved.mp4"
    pose = f"--pose=video:{anchor_dataset}"
    assert reenact.main([*argv, f"--audio={speech}", f"--out={moved}", pose]) == 0
    assert len(decode(moved)) == len(got)
    capsys.readouterr()

    # Bad audio: one line, nothing written.
    (tmp_path / "notes.wav").write_text("not audio")
    cases = {
        tmp_path / "notes.wav": "not a readable audio or video file",
        write_media(tmp_path / "silence.wav", 1.0, video=False): "its audio is silent",
        tmp_path / "missing.wav": "file not found",
    }
    for path, message in cases.items():
        bad = tmp_path / "bad.mp4"
        assert reenact.main([*argv, f"--audio={path}", f"--out={bad}"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not bad.exists()
    with pytest.raises(SystemExit):
        reenact.main([*argv, f"--audio={speech}", f"--out={tmp_path / 'bad.mp4'}", "--pose=x"])
    assert "use subject, still or video:PATH" in capsys.readouterr().err
    assert not [n for n in os.listdir(tmp_path) if n.startswith("bad")]
