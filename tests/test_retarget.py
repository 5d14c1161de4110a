"""Invariants of landmark retargeting (vpgc_jax.retarget) on real landmarks of two people.

Target: the macron tiny dataset (70 train, 20 test frames at 128 px); driver: 30 frames of the
news anchor (`anchor_dataset`), a different face.
"""

import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from vpgc_jax import retarget as rt
from vpgc_jax.data.frames import load_landmarks

# Maximum float error in pixels: outputs are float32 crop pixels at 128 px.
ATOL_PX = 1e-3


@pytest.fixture(scope="module")
def macron(tiny_dataset):
    return {s: load_landmarks(tiny_dataset, s)["landmarks"] for s in ("train", "test")}


@pytest.fixture(scope="module")
def anchor(anchor_dataset):
    return load_landmarks(anchor_dataset, "train")["landmarks"]


def _transform(points, scale, angle, shift):
    """Applies x -> scale * R(angle) x + shift to [..., 2] points."""
    c, s = np.cos(angle), np.sin(angle)
    return scale * np.asarray(points, np.float64) @ np.array([[c, s], [-s, c]]) + shift


def test_fit_similarity_recovers_known_transform(macron):
    src = macron["train"][0]
    dst = _transform(src, 1.7, 0.3, np.array([-12.0, 40.0]))
    fit = rt.fit_similarity(src, dst)
    np.testing.assert_allclose(fit.scale, 1.7, rtol=1e-9)
    np.testing.assert_allclose(fit.angle, 0.3, rtol=1e-9)
    np.testing.assert_allclose(fit.apply(src), dst, atol=1e-9)
    np.testing.assert_allclose(fit.inverse().apply(dst), src, atol=1e-9)


def test_fit_similarity_matches_umeyama_and_never_reflects(macron):
    # Two different real frames: a noisy fit, compared with skimage's Umeyama estimate.
    src, dst = macron["train"][3], macron["test"][7]
    expected = SimilarityTransform.from_estimate(src.astype(np.float64), dst.astype(np.float64))
    np.testing.assert_allclose(rt.fit_similarity(src, dst).matrix(), expected.params[:2], atol=1e-9)
    # A mirrored face is best matched by a reflection; the fit must stay a proper rotation.
    mirrored = src * np.array([-1.0, 1.0])
    assert np.linalg.det(rt.fit_similarity(src, mirrored).matrix()[:, :2]) > 0


def test_self_retarget_is_identity(macron):
    track = macron["train"]
    for mode in rt.MODES:
        out = rt.retarget(track, track, mode=mode, target_track=track)
        np.testing.assert_allclose(out, track, atol=ATOL_PX, err_msg=mode)


def test_pose_mode_keeps_target_expression_and_takes_driver_pose(macron, anchor):
    target = rt.decompose(macron["train"])
    own = rt.decompose(macron["test"], reference=target)
    out = rt.retarget(anchor, macron["train"], mode="pose", target_track=macron["test"])
    assert out.shape == anchor.shape and out.dtype == np.float32
    got = rt.decompose(out, reference=target)
    k = np.arange(len(anchor)) % len(macron["test"])  # 30 driving frames loop the 20 test frames
    np.testing.assert_allclose(got.shapes, own.shapes[k], atol=1e-5)
    driver = rt.decompose(anchor)
    np.testing.assert_allclose(got.poses.a, driver.poses.a, atol=1e-5)
    np.testing.assert_allclose(got.poses.b, driver.poses.b, atol=1e-5)
    # The pose did change: the output is not the target's own track.
    assert np.abs(out - macron["test"][k]).max() > 1.0


def test_expression_mode_keeps_target_pose_and_takes_driver_expression(macron, anchor):
    target = rt.decompose(macron["train"])
    own = rt.decompose(macron["test"], reference=target)
    out = rt.retarget(anchor, macron["train"], mode="expression", target_track=macron["test"])
    got = rt.decompose(out, reference=target)
    k = np.arange(len(anchor)) % len(macron["test"])
    np.testing.assert_allclose(got.transforms.a, own.transforms.a[k], atol=1e-5)
    np.testing.assert_allclose(got.transforms.b, own.transforms.b[k], atol=1e-4)

    # The mouth opening (inner lips 62-66, canonical units) follows the driver's.
    def opening(shapes):
        return np.linalg.norm(shapes[:, 62] - shapes[:, 66], axis=-1)

    driver = rt.decompose(anchor)
    assert np.ptp(opening(driver.shapes)) > 0.05  # the anchor speaks in these frames
    assert np.corrcoef(opening(got.shapes), opening(driver.shapes))[0, 1] > 0.95


def test_both_mode_keeps_target_identity(macron, anchor):
    out = rt.retarget(anchor, macron["train"])
    target, driver = rt.decompose(macron["train"]), rt.decompose(anchor)
    got = rt.decompose(out, reference=target)
    to_target = np.abs(got.shapes.mean(0) - target.mean_shape).mean()
    to_driver = np.abs(got.shapes.mean(0) - driver.mean_shape).mean()
    assert to_target < 0.2 * to_driver
    # Face size is the target's: the mean scale matches the target's within the driver's range.
    assert abs(np.log(got.mean_transform.scale / target.mean_transform.scale)) < 0.05


def test_scale_rotation_translation_invariance(macron, anchor):
    shift = np.array([7.0, -3.0])
    for mode in rt.MODES:
        ref = rt.retarget(anchor, macron["train"], mode, macron["test"])
        # The driver's own size, angle and position in its crop do not matter ...
        moved_driver = _transform(anchor, 2.5, 0.2, shift)
        out = rt.retarget(moved_driver, macron["train"], mode, macron["test"])
        np.testing.assert_allclose(out, ref, atol=ATOL_PX, err_msg=mode)
        # ... and moving the target's tracks moves the output the same way.
        moved = [_transform(macron[s], 0.5, -0.1, shift) for s in ("train", "test")]
        out = rt.retarget(anchor, moved[0], mode, moved[1])
        np.testing.assert_allclose(out, _transform(ref, 0.5, -0.1, shift), atol=ATOL_PX)


def test_bad_inputs(macron, anchor):
    with pytest.raises(ValueError, match="mode"):
        rt.retarget(anchor, macron["train"], mode="shape")
    with pytest.raises(ValueError, match=r"\[T, 68, 2\]"):
        rt.retarget(anchor[:, :67], macron["train"])
    bad = anchor.copy()
    bad[3, 10, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        rt.retarget(bad, macron["train"])
    with pytest.raises(ValueError, match="coincide"):
        rt.retarget(np.zeros_like(anchor), macron["train"])
