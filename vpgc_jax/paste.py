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
# Colour covariances more ill-conditioned than this (grey or single-hue frames) are not fitted.
MAX_FIT_CONDITION = 1e10


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


def upright(frame: av.VideoFrame, rotation: int, sample_aspect: float) -> av.VideoFrame:
    """An 8-bit 4:2:0 frame as a viewer shows it, in its own YUV planes.

    What `data_prep.video.upright` does to RGB frames, applied to each plane: non-square pixels
    stretched to square ones (bicubic; the chroma planes to half the new size, rounded up), then
    `rotation` counter-clockwise degrees in quarter turns (exact).

    Args:
      frame: a decoded 8-bit 4:2:0 frame (see `as_420`) of stored size [h, w].
      rotation: counter-clockwise degrees, a multiple of 90 (`VideoInfo.rotation`).
      sample_aspect: pixel width / pixel height (`VideoInfo.sample_aspect`).

    Returns:
      `frame` itself when there is nothing to do, else a new yuv420p frame of the upright size
      with `frame`'s colour tags.
    """
    k = (int(rotation) // 90) % 4
    stretch = abs(sample_aspect - 1.0) > 1e-3
    if not k and not stretch:
        return frame
    y, u, v = planes(frame)
    if stretch:
        h, w = y.shape
        width, height = (
            (round(w * sample_aspect), h) if sample_aspect > 1 else (w, round(h / sample_aspect))
        )
        y = cv2.resize(y, (width, height), interpolation=cv2.INTER_CUBIC)
        half = ((width + 1) // 2, (height + 1) // 2)
        u, v = (cv2.resize(p, half, interpolation=cv2.INTER_CUBIC) for p in (u, v))
    y, u, v = (np.rot90(p, k) for p in (y, u, v))
    out = av.VideoFrame(y.shape[1], y.shape[0], "yuv420p")
    for dst, src in zip(planes(out), (y, u, v), strict=True):
        dst[:] = src
    for tag in COLOUR_TAGS:
        setattr(out, tag, getattr(frame, tag))
    if frame.format.name == "yuvj420p":
        out.color_range = 2  # AVCOL_RANGE_JPEG: yuvj420p's planes are full range
    return out


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
    rgb = _pad_even(frame.to_ndarray(format="rgb24"))  # [H, W, 3] uint8
    y, u, v = planes(frame)
    y = _pad_even(y)  # chroma planes are already ceil(h / 2) x ceil(w / 2)
    h, w = y.shape
    rgb_c = cv2.resize(rgb.astype(np.float32), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    full = frame.format.name == "yuvj420p" or int(frame.color_range) == 2
    ideal = ideal_rgb_to_yuv(frame.colorspace, full)
    ok = cv2.inRange(rgb, (1, 1, 1), (254, 254, 254)) > 0  # [H, W] no channel clipped
    ok_c = ok.reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))
    fitted, rms = [], 0.0
    for k, (x, target, mask) in enumerate(((rgb, y, ok), (rgb_c, u, ok_c), (rgb_c, v, ok_c))):
        x, t = x[mask].astype(np.float64), target[mask].astype(np.float64)  # [P, 3], [P]
        if len(x) < MIN_FIT_PIXELS:
            return ideal, float("nan")
        # Least squares by the normal equations of the centred data (a 3x3 solve: ~40x faster
        # than an SVD of [P, 4] at 1080p); nearly collinear colours fall back to the ideal.
        x_mean, t_mean = x.mean(axis=0), t.mean()
        xc = x - x_mean
        cov = xc.T @ xc  # [3, 3]
        if np.linalg.cond(cov) > MAX_FIT_CONDITION:
            return ideal, float("nan")
        coef = np.linalg.solve(cov, xc.T @ (t - t_mean))
        fitted.append(np.r_[coef, t_mean - x_mean @ coef])
        if k == 0:
            rms = float(np.sqrt(np.mean((xc @ coef - (t - t_mean)) ** 2)))
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

    Per frame, only the box is touched: the crop is converted to 8-bit YUV at its own size (a few
    thousand pixels), resized into the box (luma: `cv2.resize`, which is the box's own pixel grid;
    chroma: warped to the chroma sample grid, which the box need not be aligned with), copied in,
    and blended with the background only over the feather band, in uint8 (`cv2.blendLinear`).
    Everything else is a plain copy of the background's planes (about 7 ms per 1080p frame with a
    1138 px box; benchmarks/RESULTS.md, "Full-frame output").
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
        # it covers whole 2x2 chroma blocks; luma is composited over the box's part of it.
        we, he = self.out_size
        self.region = (
            max(x0, 0) // 2 * 2,
            max(y0, 0) // 2 * 2,
            min(x1 + x1 % 2, we),
            min(y1 + y1 % 2, he),
        )
        rx0, ry0, rx1, ry1 = self.region
        self.luma_region = (max(x0, 0), max(y0, 0), min(x1, we), min(y1, he))
        self.alpha = np.minimum.outer(
            feather(y0, y1, height, band, ry0, ry1), feather(x0, x1, width, band, rx0, rx1)
        )  # [h, w] over the region
        lx0, ly0, lx1, ly1 = self.luma_region
        alpha_luma = self.alpha[ly0 - ry0 : ly1 - ry0, lx0 - rx0 : lx1 - rx0]
        self.alpha_c = _halve(self.alpha).astype(np.float32)  # [h / 2, w / 2], chroma weights
        self._bands = (_band_rects(alpha_luma), _band_rects(self.alpha_c))
        self.matrix = np.asarray(rgb_to_yuv, np.float32)

    def _generated_yuv(self, crop: np.ndarray) -> list[np.ndarray]:
        """The crop resized to the box: Y over `luma_region` [h, w], U and V over `region`'s
        chroma grid [h / 2, w / 2], uint8.

        Converted to YUV at the crop's size, then resampled (bilinear, pixel-centre aligned like
        `cv2.resize`; area-averaged when the box is smaller than the crop, as data_prep does; a
        chroma sample sits at the centre of its 2x2 luma block) and rounded. The conversion is
        affine, so this equals converting after resizing.
        """
        # In float32 until the end: OpenCV's uint8 transform and resize work in fixed point and
        # darkened luma by ~0.2 levels. Clipped at the crop's size, so every interpolated value
        # is in 0..255 and `convertScaleAbs` (round half to even, saturate; the abs does
        # nothing) is the rounding to uint8, 4x faster than numpy's.
        yuv = np.clip(cv2.transform(crop.astype(np.float32), self.matrix), 0.0, 255.0)
        x0, y0 = self.box[:2]
        shrink = self.side < crop.shape[0]
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        luma = cv2.resize(yuv[..., 0], (self.side, self.side), interpolation=interp)
        lx0, ly0, lx1, ly1 = self.luma_region
        out = [cv2.convertScaleAbs(luma[ly0 - y0 : ly1 - y0, lx0 - x0 : lx1 - x0])]
        if shrink:  # as data_prep: area-average first, then sample at the chroma grid
            yuv = cv2.resize(yuv, (self.side, self.side), interpolation=cv2.INTER_AREA)
        k = yuv.shape[0] / self.side  # crop pixels per source pixel
        rx0, ry0, rx1, ry1 = self.region
        # Chroma sample i of the region is at source x = rx0 + 2 i + 1.
        m = np.array(
            [
                [2 * k, 0.0, (rx0 + 1 - x0) * k - 0.5],
                [0.0, 2 * k, (ry0 + 1 - y0) * k - 0.5],
            ]
        )
        size = ((rx1 - rx0) // 2, (ry1 - ry0) // 2)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        for c in (1, 2):  # one plane at a time: OpenCV's 2-channel warp is 4x slower
            plane = np.ascontiguousarray(yuv[..., c])
            warped = cv2.warpAffine(plane, m, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
            out.append(cv2.convertScaleAbs(warped))
        return out

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
        rx0, ry0, rx1, ry1 = self.region
        lx0, ly0, lx1, ly1 = self.luma_region
        windows = [(ly0, ly1, lx0, lx1)] + [(ry0 // 2, ry1 // 2, rx0 // 2, rx1 // 2)] * 2
        generated = self._generated_yuv(crop)
        bands_per_plane = (self._bands[0], self._bands[1], self._bands[1])
        for plane, gen, (a, b, c, d), bands in zip(
            out_planes, generated, windows, bands_per_plane, strict=True
        ):
            dst = plane[a:b, c:d]
            background_part = [dst[rows, cols].copy() for rows, cols, *_ in bands]
            dst[:] = gen
            for (rows, cols, w_gen, w_bg), bg_part in zip(bands, background_part, strict=True):
                dst[rows, cols] = cv2.blendLinear(gen[rows, cols], bg_part, w_gen, w_bg)
        return out


def _band_rects(alpha: np.ndarray) -> list[tuple[slice, slice, np.ndarray, np.ndarray]]:
    """Up to four rectangles covering every pixel of `alpha` [h, w] below 1 (the feather band).

    `alpha` is 1 on a rectangle (possibly empty) and below it elsewhere. Returns (rows, cols,
    alpha [h', w'] float32, 1 - alpha) per non-empty rectangle.
    """
    full = alpha >= 1.0
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if not len(rows):
        rects = [(slice(0, alpha.shape[0]), slice(0, alpha.shape[1]))]
    else:
        a, b, c, d = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        if not full[a:b, c:d].all():
            raise ValueError("blend weights are not 1 on one rectangle")
        h, w = alpha.shape
        rects = [
            (slice(0, a), slice(0, w)),
            (slice(b, h), slice(0, w)),
            (slice(a, b), slice(0, c)),
            (slice(a, b), slice(d, w)),
        ]
    out = []
    for rows_, cols_ in rects:
        weights = np.ascontiguousarray(alpha[rows_, cols_], np.float32)
        if weights.size:
            out.append((rows_, cols_, weights, 1.0 - weights))
    return out
