"""Full-frame output from a subject video stored sideways or with non-square pixels (issue 18 / 17).

The clips are 8 frames of the macron sample at half size on a static blurred 640x360 (16:9)
border, stored as phones and anamorphic cameras store them (`test_video_geometry.write`): turned a
quarter turn clockwise (360x640) with a display matrix that turns them back, or squeezed to
480x360 with a 4:3 sample aspect ratio. data_prep crops the upright 640x360 frames; pasting the
dataset's own crops back must give upright 640x360 frames whose background is the clip as
data_prep decodes it.
"""

import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from test_video_geometry import write

from data_prep import prepare, video
from vpgc_jax import fullframe, paste, video_out
from vpgc_jax.data import frames as frames_lib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fullframe import make_wide_clip  # noqa: E402

N, SIZE = 8, (640, 360)
# Measured (8 frames, 128 px crops of a 260 px box), mean |error| in 8-bit RGB levels: outside the
# box 0.00 for the rotated clip (its planes are turned exactly), 0.16 for the stretched one
# (bicubic on the YUV planes against data_prep's bicubic on RGB); in the box's core 1.82 / 1.72
# (resizing 260 -> 128 -> 260); in the feather band 1.04 / 1.09. A wrong turn is tens of levels.
OUTSIDE = {"rotated": 0.05, "stretched": 0.5}
CORE, BAND = 2.5, 1.5


@pytest.fixture(scope="module")
def upright_frames(tmp_path_factory, macron_video) -> list[np.ndarray]:
    """N upright 640x360 RGB frames [360, 640, 3] uint8."""
    wide = tmp_path_factory.mktemp("geometry") / "wide.mp4"
    make_wide_clip(str(macron_video), str(wide), SIZE, 0.5, (192, 52), N, crf=0)
    with av.open(str(wide)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def stored_clip(kind: str, frames: list[np.ndarray], out: Path) -> str:
    if kind == "rotated":  # stored a quarter turn clockwise, the matrix turns it back
        return write(out, [np.ascontiguousarray(np.rot90(f, -1)) for f in frames], rotation=90)
    squeezed = [cv2.resize(f, (480, 360), interpolation=cv2.INTER_AREA) for f in frames]
    return write(out, squeezed, sar=Fraction(4, 3))


@pytest.mark.parametrize("kind", ["rotated", "stretched"])
def test_ground_truth_crops_paste_back_upright(kind, upright_frames, tmp_path):
    clip = stored_clip(kind, upright_frames, tmp_path / f"{kind}.mp4")
    dataset = tmp_path / "ds"
    argv = [f"--video={clip}", f"--out={dataset}", "--size=128", "--test-frames=2"]
    assert prepare.main(argv) == 0
    subject = fullframe.open_subject(str(dataset))
    assert (subject.width, subject.height, subject.num_frames) == (*SIZE, N)
    assert (subject.rotation, round(subject.sample_aspect, 3)) == (
        (90, 1.0) if kind == "rotated" else (0, 1.333)
    )
    crops = [
        source[i]["image"]
        for split in ("train", "test")
        for source in [frames_lib.open_split(dataset, split)]
        for i in range(len(source))
    ]
    paster = fullframe.Paster(subject, np.arange(N), fullframe.FEATHER)
    out = tmp_path / "full.mp4"
    with video_out.Mp4Writer(out, subject.fps, crf=0, preset=fullframe.PRESET) as writer:
        for crop in crops:
            writer.write(paster(crop))
    paster.close()

    # Written upright: the shown size, no display matrix; data_prep decodes it unchanged.
    info = video.probe(str(out))
    assert (info.width, info.height, info.rotation, info.sample_aspect) == (*SIZE, 0, 1.0)
    got = np.stack(list(video.decode_frames(info))).astype(int)  # [N, 360, 640, 3]
    expected = np.stack(list(video.decode_frames(video.probe(clip)))).astype(int)
    x0, y0, x1, y1 = subject.box
    band = paster.band
    inside, core = np.zeros(got.shape[1:3], bool), np.zeros(got.shape[1:3], bool)
    inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
    core[max(y0 + band, 0) : y1 - band, max(x0 + band, 0) : x1 - band] = True
    diff = np.abs(got - expected)
    assert diff[:, ~inside].mean() <= OUTSIDE[kind], diff[:, ~inside].mean()
    assert diff[:, core].mean() <= CORE, diff[:, core].mean()
    assert diff[:, inside & ~core].mean() <= BAND, diff[:, inside & ~core].mean()

    if kind == "rotated":  # the background's samples are the stored ones, turned exactly
        with av.open(clip) as c:
            stored = paste.as_420(next(c.decode(video=0)))
        with av.open(str(out)) as c:
            written = next(c.decode(video=0))
        for s, w in zip(paste.planes(stored), paste.planes(written), strict=True):
            turned = np.rot90(s, 1)
            rows = slice(0, max(y0, 0) * turned.shape[0] // SIZE[1])  # above the box
            np.testing.assert_array_equal(w[rows], turned[rows])
