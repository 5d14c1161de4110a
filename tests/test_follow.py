"""eval.follow on real landmark tracks and frames: scores that tell a mouth following its driver
from one that does not (issue 16 item 7)."""

import numpy as np
import pytest

from eval import face_landmarks, follow
from vpgc_jax.data import frames as frames_lib

LAG = 10  # frames: a third of a second, longer than a syllable (measured r < 0 on macron)


@pytest.fixture(scope="module")
def track(tiny_dataset) -> np.ndarray:
    """The tiny macron dataset's 70 training landmarks, [70, 68, 2] px at 128."""
    return frames_lib.load_landmarks(tiny_dataset, "train")["landmarks"].astype(np.float64)


def test_mouth_opening_sees_speech(track):
    gap = follow.mouth_opening(track)
    assert gap.shape == (len(track),) and (gap >= 0).all()
    assert gap.max() > 2.0 and gap.std() > 0.5  # the speaker opens and closes the mouth (px at 128)


def test_scores_of_following_lagging_and_neutral_mouths(track):
    found = np.ones(len(track), bool)
    same = follow.follow_scores(track, track, found, 128)
    assert same["mouth_lmd"] == 0 and same["opening_corr"] == pytest.approx(1.0)
    assert same["opening_range"] == pytest.approx(1.0) and same["frames"] == len(track)

    # The right mouths, LAG frames late: the mouth moves as much but out of step.
    late = np.concatenate([track[:LAG], track[:-LAG]])
    lagging = follow.follow_scores(late, track, found, 128)
    assert lagging["opening_corr"] < 0.5 and lagging["mouth_lmd"] > 2.0

    # A neutral mouth: the closest-to-median frame's mouth pasted into every frame.
    gap = follow.mouth_opening(track)
    neutral = track.copy()
    median = track[np.argmin(np.abs(gap - np.median(gap)))]
    neutral[:, follow.MOUTH] = median[follow.MOUTH] - median[follow.MOUTH].mean(0)
    neutral[:, follow.MOUTH] += track[:, follow.MOUTH].mean(1, keepdims=True)
    still = follow.follow_scores(neutral, track, found, 128)
    assert still["opening_range"] < 1e-9 and np.isnan(still["opening_corr"])
    assert still["mouth_lmd"] > 0

    # Frames without a face are left out; none at all gives NaN scores.
    half = follow.follow_scores(track, track, np.arange(len(track)) % 2 == 0, 128)
    assert half["frames"] == len(track) // 2 and half["face_found"] == pytest.approx(0.5)
    none = follow.follow_scores(track, track, np.zeros(len(track), bool), 128)
    assert none["frames"] == 0 and np.isnan(none["mouth_lmd"])
    with pytest.raises(ValueError, match="68, 2"):
        follow.follow_scores(track[:, :20], track[:, :20], found, 128)


def test_detected_mouths_follow_their_own_frames_not_others(tiny_dataset):
    """dlib on real 128-px frames against the stored landmarks: its own frames' are close."""
    test = frames_lib.open_split(tiny_dataset, "test")
    frames = np.stack([test[i]["image"] for i in range(len(test))])
    stored = frames_lib.load_landmarks(tiny_dataset, "test")["landmarks"]
    points, _, found = face_landmarks.FaceLandmarks()(frames)
    assert found.all()
    own = follow.follow_scores(points, stored, found, 128)
    other = follow.follow_scores(points, np.roll(stored, LAG, axis=0), found, 128)
    assert own["mouth_lmd"] < 0.5 * other["mouth_lmd"]
    assert own["opening_corr"] > 0.5
