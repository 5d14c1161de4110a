"""Pasting a generated crop back into a full source frame, in the source's own YUV planes.

The composite is done on the decoded frame's 8-bit 4:2:0 planes, not on RGB: outside the crop box
every Y, U and V sample goes to the encoder exactly as it was decoded, so the untouched background
can only change by the encoder's own error (zero at CRF 0). Converting the frame to RGB and back
instead would move it: FFmpeg's default swscale path (what PyAV's `to_ndarray('rgb24')` uses)
shifts luma by about -1.1 levels per round trip on the sample clips, and re-subsampling chroma
blurs colour edges each time.

Only the generated crop is converted, RGB -> YUV, with the inverse of the decoder's own YUV -> RGB
(the conversion the dataset's crops went through): an affine map fitted by least squares on one
decoded frame and its RGB (`fit_rgb_to_yuv`). It absorbs whatever matrix (BT.601 / BT.709), range
and rounding the decoder used; the ideal BT.601 matrix is 1.1 luma levels off on the sample clips.

The crop is resized to the crop box's side in source pixels and blended with a weight that ramps
from 0 at the box edge to 1 at `band` pixels inside (smoothstep); edges of a box that reach the
frame edge or beyond (data_prep pads such boxes by replication) get no ramp, and the part outside
the frame is dropped.
"""

import av
import cv2
import numpy as np

# Y = 16 + 219 Y', U = 128 + 224 (B' - Y') / (2 (1 - Kb)), V likewise with R' (ITU-R BT.601 /
# BT.709, 8-bit limited range); full range uses 255 / 255 / 255. Fallback when a fit is degenerate.
KR_KB = {1: (0.2126, 0.0722)}  # AVCOL_SPC_BT709; everything else as swscale's default (BT.601)
KR_KB_601 = (0.299, 0.114)
# Planes the compositor takes as they are; other formats are converted to yuv420p first.
PLANAR_420 = ("yuv420p", "yuvj420p")
# Colour metadata copied from the source frame to the output frame (and by `video_out` to the
# stream): an untagged source stays untagged, so players guess the same matrix for both.
COLOUR_TAGS = ("colorspace", "color_range", "color_primaries", "color_trc")
# At least this many unclipped pixels for a fit (a 64x64 frame has 4096).
MIN_FIT_PIXELS = 1000


def planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """Views [h, w] uint8 (writable for frames we allocated) of the Y, U and V planes."""
    return [
        np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        for p in frame.planes
    ]


def as_420(frame: av.VideoFrame) -> av.VideoFrame:
    """`frame` itself when it is 8-bit 4:2:0, else converted to yuv420p (same matrix and range)."""
    if frame.format.name in PLANAR_420:
        return frame
    return frame.reformat(format="yuv420p")


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 means of [h, w, ...] with even h and w: [h / 2, w / 2, ...]."""
    h, w = x.shape[:2]
    return x.reshape(h // 2, 2, w // 2, 2, *x.shape[2:]).mean(axis=(1, 3))


def _pad_even(x: np.ndarray) -> np.ndarray:
    """Replicates the last row / column of [h, w, ...] so both sides are even."""
    h, w = x.shape[:2]
    widths = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (x.ndim - 2)
    return np.pad(x, widths, mode="edge") if h % 2 or w % 2 else x


def ideal_rgb_to_yuv(colorspace: int, full_range: bool) -> np.ndarray:
    """[3, 4] float64: (Y, U, V) = M[:, :3] @ (R, G, B) + M[:, 3], 8-bit levels (BT.601 / 709)."""
    kr, kb = KR_KB.get(int(colorspace), KR_KB_601)
    kg = 1.0 - kr - kb
    luma = np.array([kr, kg, kb])
    u = (np.array([0.0, 0.0, 1.0]) - luma) / (2 * (1 - kb))
    v = (np.array([1.0, 0.0, 0.0]) - luma) / (2 * (1 - kr))
    sy, sc, y0 = (1.0, 1.0, 0.0) if full_range else (219 / 255, 224 / 255, 16.0)
    return np.stack([np.r_[sy * luma, y0], np.r_[sc * u, 128.0], np.r_[sc * v, 128.0]])


def fit_rgb_to_yuv(frame: av.VideoFrame) -> tuple[np.ndarray, float]:
    """Fits the inverse of the decoder's YUV -> RGB on one decoded frame.

    Args:
      frame: a decoded 8-bit 4:2:0 frame (see `as_420`).

    Returns:
      ([3, 4] float64 M with (Y, U, V) = M[:, :3] @ (R, G, B) + M[:, 3] in 8-bit levels, RMS
      residual of the luma fit in levels). Pixels with a clipped channel (0 or 255) are left out;
      U and V are fitted at chroma resolution on 2x2-mean RGB. A frame with too few usable pixels
      (or too little colour variety) gives the ideal matrix of its colourspace and range.
    """
    rgb = _pad_even(frame.to_ndarray(format="rgb24").astype(np.float64))
    y, u, v = (_pad_even(p) for p in planes(frame))
    rgb_c = _halve(rgb)
    full = frame.format.name == "yuvj420p" or int(frame.color_range) == 2
    ideal = ideal_rgb_to_yuv(frame.colorspace, full)
    ok = np.all((rgb > 0) & (rgb < 255), axis=-1)
    ok_c = _halve(ok.astype(np.float64)) == 1.0
    fitted, rms = [], 0.0
    for k, (x, target, mask) in enumerate(((rgb, y, ok), (rgb_c, u, ok_c), (rgb_c, v, ok_c))):
        a = np.c_[x[mask], np.ones(mask.sum())]  # [P, 4]
        if len(a) < MIN_FIT_PIXELS or np.linalg.matrix_rank(a) < 4:
            return ideal, float("nan")
        coef, *_ = np.linalg.lstsq(a, target[mask].astype(np.float64), rcond=None)
        fitted.append(coef)
        if k == 0:
            rms = float(np.sqrt(np.mean((a @ coef - target[mask]) ** 2)))
    return np.stack(fitted), rms


def feather(lo: int, hi: int, size: int, band: int, start: int, stop: int) -> np.ndarray:
    """1-D blend weights over pixels [start, stop) for a box side [lo, hi) in a frame of `size`.

    0 outside [lo, hi); inside, smoothstep((distance from an edge + 0.5) / band) from each edge
    that lies inside the frame (0 < lo, hi < size), 1 elsewhere. Returns [stop - start] float32.
    """
    x = np.arange(start, stop, dtype=np.float64) + 0.5  # pixel centres
    w = np.ones_like(x)
    if lo > 0:
        w = np.minimum(w, np.clip((x - lo) / band, 0.0, 1.0))
    if hi < size:
        w = np.minimum(w, np.clip((hi - x) / band, 0.0, 1.0))
    w = w * w * (3.0 - 2.0 * w)
    w[(x < lo) | (x > hi)] = 0.0
    return w.astype(np.float32)


class Compositor:
    """Pastes generated crops into frames of one video (one crop box for the clip).

    Args:
      box: (x0, y0, x1, y1) square crop box in source pixels, half-open; may leave the frame.
      width, height: source frame size in pixels (odd sizes are padded by one replicated
        row / column: H.264 4:2:0 needs even sides).
      band: feather width in source pixels (>= 1).
      rgb_to_yuv: [3, 4] from `fit_rgb_to_yuv`.

    Raises:
      ValueError: the box does not overlap the frame, or band < 1.
    """

    def __init__(self, box, width: int, height: int, band: int, rgb_to_yuv: np.ndarray):
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 - x0 != y1 - y0 or x1 <= max(x0, 0) or x0 >= width or y0 >= height or y1 <= 0:
            raise ValueError(f"crop box {box}: not a square overlapping the {width}x{height} frame")
        if band < 1:
            raise ValueError(f"feather band must be at least 1 px, got {band}")
        self.box, self.side = (x0, y0, x1, y1), x1 - x0
        self.width, self.height = width, height
        self.out_size = (width + width % 2, height + height % 2)
        # The composited region: the box clipped to the (padded) frame, widened to even bounds so
        # it covers whole 2x2 chroma blocks.
        we, he = self.out_size
        self.region = (
            max(x0, 0) // 2 * 2,
            max(y0, 0) // 2 * 2,
            min(x1 + x1 % 2, we),
            min(y1 + y1 % 2, he),
        )
        rx0, ry0, rx1, ry1 = self.region
        self.alpha = np.minimum.outer(
            feather(y0, y1, height, band, ry0, ry1), feather(x0, x1, width, band, rx0, rx1)
        )  # [h, w]
        self.alpha_c = _halve(self.alpha).astype(np.float32)  # [h / 2, w / 2], chroma weights
        self._background_weights = (1.0 - self.alpha, 1.0 - self.alpha_c)
        self.matrix = np.asarray(rgb_to_yuv, np.float32)

    def _generated_yuv(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The crop resized to the box, over the region: Y [h, w] and UV [h / 2, w / 2, 2] float32.

        Converted to YUV at the crop's size, then resampled straight to the luma and chroma grids
        (bilinear, pixel-centre aligned like `cv2.resize`; a chroma sample sits at the centre of
        its 2x2 luma block). The conversion is affine, so this equals converting after resizing.
        """
        if self.side < crop.shape[0]:  # shrinking: area-average first, as data_prep does
            crop = cv2.resize(crop, (self.side, self.side), interpolation=cv2.INTER_AREA)
        yuv = cv2.transform(crop.astype(np.float32), self.matrix)  # [r, r, 3]
        k = crop.shape[0] / self.side  # crop pixels per source pixel
        x0, y0 = self.box[:2]
        rx0, ry0, rx1, ry1 = self.region
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        planes_out = []
        for step, centre, (w, h), channels in (
            (1, 0.5, (rx1 - rx0, ry1 - ry0), yuv[..., 0]),
            (2, 1.0, ((rx1 - rx0) // 2, (ry1 - ry0) // 2), yuv[..., 1:]),
        ):
            # Destination pixel i of the grid is at source x = r0 + step * i + centre.
            m = np.array(
                [
                    [step * k, 0.0, (rx0 + centre - x0) * k - 0.5],
                    [0.0, step * k, (ry0 + centre - y0) * k - 0.5],
                ]
            )
            planes_out.append(
                cv2.warpAffine(channels, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
            )
        return planes_out[0], planes_out[1]

    def paste(self, background: av.VideoFrame, crop: np.ndarray) -> av.VideoFrame:
        """One output frame.

        Args:
          background: the decoded source frame [height, width] (any pixel format; 8-bit 4:2:0 is
            used as it is).
          crop: [R, R, 3] uint8 RGB generated crop (any R).

        Returns:
          A new yuv420p `av.VideoFrame` of `out_size` with the background's colour tags.

        Raises:
          ValueError: a background or crop of another shape.
        """
        bg = as_420(background)
        if (bg.width, bg.height) != (self.width, self.height):
            raise ValueError(f"background {bg.width}x{bg.height}, not {self.width}x{self.height}")
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            raise ValueError(f"crop must be [R, R, 3] uint8, got {crop.shape} {crop.dtype}")
        we, he = self.out_size
        out = av.VideoFrame(we, he, "yuv420p")
        for tag in COLOUR_TAGS:
            setattr(out, tag, getattr(bg, tag))
        if bg.format.name == "yuvj420p":
            out.color_range = 2  # AVCOL_RANGE_JPEG: yuvj420p's planes are full range
        out_planes = planes(out)
        for src, dst in zip(planes(bg), out_planes, strict=True):
            h, w = src.shape
            dst[:h, :w] = src
            dst[h:, :w] = src[h - 1 :]  # odd sides: replicate the last row / column
            dst[:, w:] = dst[:, w - 1 : w]
        luma_gen, chroma_gen = self._generated_yuv(crop)
        rx0, ry0, rx1, ry1 = self.region
        luma = out_planes[0][ry0:ry1, rx0:rx1]
        luma[:] = _to_uint8(
            cv2.blendLinear(
                luma_gen, luma.astype(np.float32), self.alpha, self._background_weights[0]
            )
        )
        u, v = (p[ry0 // 2 : ry1 // 2, rx0 // 2 : rx1 // 2] for p in out_planes[1:])
        bg_c = np.stack([u, v], axis=-1).astype(np.float32)
        mixed = _to_uint8(
            cv2.blendLinear(chroma_gen, bg_c, self.alpha_c, self._background_weights[1])
        )
        u[:], v[:] = mixed[..., 0], mixed[..., 1]
        return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Rounds float levels to uint8, saturating."""
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
