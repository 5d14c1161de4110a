"""Reenactment CLI on real data at tiny size: self and cross, the mp4, and the bad inputs."""

import os

import av
import numpy as np
import pytest

from vpgc_jax import images, reenact, video_out
from vpgc_jax.data.frames import load_landmarks
from vpgc_jax.data.heatmaps import heatmap_stack
from vpgc_jax.inference import load_reenactor

# Mean |Y_mp4 - Y_model| (BT.601 luma, 8-bit levels) of the self-reenactment video: 1.8 measured
# (max 6.3). yuv420p halves the chroma resolution, so at 32 px RGB differs by ~18 levels; a blank,
# flipped or transposed result panel is 21-28 levels off in luma.
MP4_LUMA_ERROR = 4.0


@pytest.fixture
def driver_run(tiny_driver_run):
    return tiny_driver_run


def probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        return frames, v.average_rate, v.width, len(c.streams.audio)


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB frames [..., 3], float64 in 8-bit levels."""
    return np.asarray(frames, np.float64) @ np.array([0.299, 0.587, 0.114])


def decode(path) -> np.ndarray:
    """All frames of an mp4 as uint8 RGB [N, H, W, 3]."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def run(driver_run, target, driving, out, *extra) -> int:
    argv = [f"--driver={driver_run}", f"--target={target}", f"--driving={driving}", f"--out={out}"]
    return reenact.main([*argv, "--batch=8", *extra])


def test_self_reenactment_writes_the_test_split_with_audio(driver_run, tiny_dataset, tmp_path):
    out = tmp_path / "self.mp4"
    assert run(driver_run, tiny_dataset, tiny_dataset, out, "--side-by-side") == 0
    frames, rate, width, audio = probe(out)
    assert frames == 20 and rate == 30 and audio == 1  # the test split, with the clip's audio
    assert width == 3 * 32  # driving | heatmap | result at the model's 32 px

    # The video holds what the model renders for the test split's own heatmaps, within H.264's
    # error: the result panel is the last 32 columns of driving | heatmap | result.
    reenactor = load_reenactor(str(driver_run))
    assert reenactor.batch == 8 and reenactor.codebook_step == 2
    lms = load_landmarks(tiny_dataset, "test")["landmarks"] * (32 / 128)  # at 32 px
    stacks = np.stack([heatmap_stack(lms, t, 32) for t in range(20)])
    want = luma(
        images.to_uint8(np.concatenate([reenactor.drive(stacks[i : i + 8]) for i in (0, 8, 16)]))
    )
    got = luma(decode(out)[:, :, 64:])
    err = np.abs(got - want).mean()
    print(f"mp4 vs model: luma error {err:.2f} levels")
    assert err < MP4_LUMA_ERROR
    for wrong in (np.full_like(want, 128.0), want[:, ::-1], np.swapaxes(want, 1, 2)):
        assert np.abs(got - wrong).mean() > 3 * MP4_LUMA_ERROR  # blank, flipped, transposed


def test_cross_reenactment_with_another_person(driver_run, tiny_dataset, anchor_dataset, tmp_path):
    for mode in ("both", "expression", "pose"):
        out = tmp_path / f"cross_{mode}.mp4"
        assert run(driver_run, tiny_dataset, anchor_dataset, out, f"--transfer={mode}") == 0
        frames, rate, width, _ = probe(out)
        assert frames == 40 and rate == 25 and width == 32  # all anchor frames, at its fps


def test_retargeted_heatmaps_follow_the_driver(tiny_dataset, anchor_dataset):
    """The retargeted mouth opens and closes with the driver's, in the target's face."""
    args = reenact.parse_args(
        ["--driver=x", f"--target={tiny_dataset}", f"--driving={anchor_dataset}", "--out=x.mp4"]
    )
    driving = reenact.load_driving(args.driving, args.target, "unused")
    lms = reenact.target_landmarks(driving, args.target, "both")
    assert lms.shape == (40, 68, 2)

    def mouth(x):
        return np.linalg.norm(x[:, 66] - x[:, 62], axis=-1)  # inner lips, top-bottom

    assert np.corrcoef(mouth(lms), mouth(driving.landmarks))[0, 1] > 0.8


def test_bad_inputs_leave_nothing(driver_run, tiny_codebook_run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    assert run(driver_run, tiny_dataset, tmp_path / "missing.mp4", out) == 2
    assert "driving video or dataset not found" in capsys.readouterr().err
    assert run(tiny_codebook_run, tiny_dataset, tiny_dataset, out) == 2  # a stage-1 run
    assert "not a stage-2 (driver) run" in capsys.readouterr().err
    assert run(tmp_path / "nothing", tiny_dataset, tiny_dataset, out) == 2
    assert "missing; not a" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run(driver_run, tiny_dataset, tiny_dataset, blocker / "o.mp4") == 2
    assert f"cannot create {blocker} (File exists)" in capsys.readouterr().err
    assert run(driver_run, tiny_dataset, tiny_dataset, out, "--transfer=pose") == 2
    assert "needs a driving video of someone else" in capsys.readouterr().err

    # A driving video without a face: data_prep's error, no mp4, no half-prepared dataset.
    noise = np.random.default_rng(0).integers(0, 255, (30, 96, 96, 3), dtype=np.uint8)
    faceless = video_out.write_mp4(tmp_path / "noise.mp4", list(noise), 25).path
    assert run(driver_run, tiny_dataset, faceless, out) == 2
    assert "face" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["file", "noise.mp4"]
