"""eval.metrics on known cases and real frames of the tiny macron dataset (128 px).

LPIPS runs on 24 frame pairs in all (VGG16 on a CPU costs ~0.3 s per 128-px pair).
"""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from eval import face_landmarks, metrics
from vpgc_jax.data.frames import load_landmarks, open_split


@pytest.fixture(scope="module")
def tiny(tiny_dataset):
    train, test = open_split(tiny_dataset, "train"), open_split(tiny_dataset, "test")
    return {
        "train": np.stack([train[i]["image"] for i in range(len(train))]),  # [70, 128, 128, 3]
        "test": np.stack([test[i]["image"] for i in range(len(test))]),  # [20, 128, 128, 3]
        "train_landmarks": load_landmarks(tiny_dataset, "train")["landmarks"],
        "test_landmarks": load_landmarks(tiny_dataset, "test")["landmarks"],
    }


def test_flmd_known_cases(tiny):
    gt = tiny["test_landmarks"]
    assert metrics.flmd(gt, gt, 128) == 0.0
    shifted = gt + np.array([3.0, 4.0], np.float32)  # every point 5 px away
    assert metrics.flmd(shifted, gt, 512) == pytest.approx(5.0)
    assert metrics.flmd(shifted, gt, 128) == pytest.approx(20.0)  # 128 px -> 512 px: x4
    worse = gt.copy()
    worse[:3] += 40.0
    valid = np.ones(len(gt), bool)
    valid[:3] = False
    assert metrics.flmd(worse, gt, 128, valid=valid) == 0.0
    assert np.isnan(metrics.flmd(gt, gt, 128, valid=np.zeros(len(gt), bool)))
    with pytest.raises(ValueError, match="68, 2"):
        metrics.flmd(gt[:, :67], gt[:, :67], 128)


def test_psnr_of_known_noise_and_ssim_against_skimage(tiny):
    x = tiny["test"][:5].clip(10, 245)
    pattern = np.where(np.indices(x.shape).sum(0) % 2 == 0, 5, -5)  # +-5 everywhere: MSE = 25
    y = (x.astype(np.int16) + pattern).astype(np.uint8)
    other = tiny["train"][:5]
    scores = metrics.image_metrics(y, x, with_lpips=False)
    assert set(scores) == {"psnr", "ssim"}
    np.testing.assert_allclose(scores["psnr"], 10 * np.log10(255**2 / 25), rtol=1e-5)
    want = [
        structural_similarity(a, b, channel_axis=-1, data_range=255)
        for a, b in zip(other, x, strict=True)
    ]
    got = metrics.image_metrics(other, x, with_lpips=False)["ssim"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.all(metrics.image_metrics(x, x, with_lpips=False)["psnr"] == np.inf)


def test_lpips_identity_and_ordering(tiny):
    x = tiny["test"][:2]
    noise = np.random.default_rng(0).standard_normal(x.shape)
    noisy = [np.clip(x + s * noise, 0, 255).astype(np.uint8) for s in (0.0, 4.0, 16.0, 48.0)]
    # One call, one batch of 8 pairs: (x, x), then three noise levels, for 2 frames.
    d = metrics.image_metrics(np.concatenate(noisy), np.concatenate([x] * 4), batch=8)["lpips"]
    d = d.reshape(4, 2)
    assert np.abs(d[0]).max() < 1e-6
    assert np.all(0 < d[1]) and np.all(d[1] < d[2]) and np.all(d[2] < d[3])


def test_detect_landmarks_on_real_frames(tiny):
    frames = tiny["test"][::4]  # 5 frames
    stored = tiny["test_landmarks"][::4]  # detected by data_prep on 256-px crops of the source
    for size in (128, face_landmarks.DETECT_SIZE):
        pts, _, ok = face_landmarks.FaceLandmarks(detect_size=size)(frames)
        assert pts.shape == (5, 68, 2) and pts.dtype == np.float32 and ok.all()
        assert metrics.flmd(pts, stored, 128) < 3.0
    pts, _, ok = face_landmarks.FaceLandmarks()(np.zeros((2, 128, 128, 3), np.uint8))
    assert not ok.any() and not pts.any()


def test_mean_frame_baseline(tiny):
    mean = metrics.mean_frame_baseline(iter(tiny["train"]))
    assert mean.shape == (128, 128, 3) and mean.dtype == np.uint8
    np.testing.assert_array_equal(mean, np.rint(tiny["train"].mean(0)).astype(np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        metrics.mean_frame_baseline([])


def test_retrieval_finds_the_frame_itself_and_shape_ignores_pose(tiny):
    train = tiny["train_landmarks"]
    picked = np.array([5, 17, 42, 3, 69])
    for match in metrics.RETRIEVAL_MATCH:
        np.testing.assert_array_equal(
            metrics.retrieval_baseline(train, train[picked], match), picked
        )
    # Shape matching is pose-invariant: a scaled, rotated, shifted copy still finds the frames.
    c, s = np.cos(0.2), np.sin(0.2)
    moved = 1.3 * train[picked] @ np.array([[c, s], [-s, c]]) + 9.0
    np.testing.assert_array_equal(metrics.retrieval_baseline(train, moved, "shape"), picked)
    assert not np.array_equal(metrics.retrieval_baseline(train, moved, "landmarks"), picked)
    idx = metrics.retrieval_baseline(train, tiny["test_landmarks"])
    assert idx.shape == (20,) and idx.min() >= 0 and idx.max() < len(train)
    with pytest.raises(ValueError, match="match"):
        metrics.retrieval_baseline(train, train, "pixels")


def test_score_baselines_on_tiny_dataset(tiny_dataset, tiny):
    out = metrics.score_baselines(str(tiny_dataset), progress=False, max_test_frames=8)
    assert out["info"] == {"resolution": 128, "test_frames": 8, "train_frames": 70}
    assert out["ground_truth"]["detection_rate"] == 1.0
    mean = np.rint(tiny["train"].mean(0))
    mse = ((tiny["test"][:8] - mean) ** 2).mean(axis=(1, 2, 3))
    assert out["mean_frame"]["psnr"] == pytest.approx(np.mean(10 * np.log10(255**2 / mse)), 1e-4)
    for row in ("mean_frame", "retrieval_shape", "retrieval_landmarks"):
        r = out[row]
        assert r["flmd_frames"] == 8 and 0 < r["flmd"] < 100, row
        assert 0 < r["ssim"] < 1 and 0 < r["lpips"] < 1 and 10 < r["psnr"] < 60, row
