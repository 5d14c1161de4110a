"""Landmark heatmaps: the stage-2 driving signal, rendered on demand.

The drawing follows the reference `draw_heatmap_from_68_landmark` (docs/reference_spec.md §3.3):
a black single-channel canvas, the 68 iBUG landmarks joined by 8-connected `cv2.line` segments at
value 255, points truncated with `int()`, no blur. Heatmaps are never stored in the dataset; loaders
render the 7-frame stack of §3.2 from `landmarks.npz` with `heatmap_stack`.
"""

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

# (name, first index, last index inclusive, closed loop?) per facial part: spec §3.3 (68 points).
FACE_PARTS_68: tuple[tuple[str, int, int, bool], ...] = (
    ("outer_mouth", 48, 59, True),
    ("inner_mouth", 60, 67, True),
    ("left_eye", 36, 41, True),
    ("right_eye", 42, 47, True),
    ("left_brow", 17, 21, False),
    ("right_brow", 22, 26, False),
    ("nose_bridge", 27, 30, False),
    ("nose_bottom", 31, 35, False),
    ("jaw", 0, 16, False),
)

# Offsets of the 7 heatmaps fed per frame: t-3 .. t+3, current frame is channel 3 (spec §3.2).
STACK_OFFSETS: tuple[int, ...] = tuple(range(-3, 4))


def default_thickness(size: int) -> int:
    """Line thickness for a canvas of `size` pixels: 2 at 512 px (spec §3.3), scaled linearly.

    Args:
      size: canvas side in pixels.

    Returns:
      `max(1, round(2 * size / 512))` pixels.
    """
    return max(1, round(2 * size / 512))


def draw_heatmap(landmarks: np.ndarray, size: int, thickness: int | None = None) -> np.ndarray:
    """Draws the 68-landmark line heatmap of one frame (spec §3.3 `draw_heatmap_from_68_landmark`).

    Mouth and eyes are closed loops; brows, nose bridge, nose bottom and jaw are open polylines.
    Each point is converted with `int()` (truncation toward zero) before drawing, as in the
    reference.

    Args:
      landmarks: [68, 2] float (x, y) in pixels of the `size` x `size` canvas (iBUG 68-point order).
      size: canvas side in pixels.
      thickness: line thickness in pixels; None uses `default_thickness(size)` (2 at 512 px).

    Returns:
      [size, size] uint8 heatmap, 0 background and 255 on the lines.

    Raises:
      ValueError: if `landmarks` is not [68, 2] or contains non-finite values.
    """
    landmarks = np.asarray(landmarks)
    if landmarks.shape != (68, 2):
        raise ValueError(f"landmarks must be [68, 2], got {landmarks.shape}")
    if not np.all(np.isfinite(landmarks)):
        raise ValueError("landmarks contain non-finite values")
    if thickness is None:
        thickness = default_thickness(size)
    canvas = np.zeros((size, size), np.uint8)
    points = [(int(x), int(y)) for x, y in landmarks.tolist()]
    for _, first, last, closed in FACE_PARTS_68:
        idx = list(range(first, last + 1))
        pairs = list(zip(idx[:-1], idx[1:], strict=True))
        if closed:
            pairs.append((last, first))
        for a, b in pairs:
            cv2.line(canvas, points[a], points[b], color=255, thickness=thickness)
    return canvas


def stack_indices(t: int, n: int, offsets: Iterable[int] = STACK_OFFSETS) -> list[int]:
    """Frame indices of a heatmap stack, clamped to [0, n-1] (spec §3.2 edge handling).

    Args:
      t: index of the current frame.
      n: number of frames in the sequence.
      offsets: temporal offsets relative to `t`.

    Returns:
      `[clip(t + d, 0, n - 1) for d in offsets]`, e.g. [0, 0, 0, 0, 1, 2, 3] at t=0.
    """
    return [min(max(t + d, 0), n - 1) for d in offsets]


def heatmap_stack(
    landmarks_seq: np.ndarray,
    t: int,
    size: int,
    offsets: Sequence[int] = STACK_OFFSETS,
    thickness: int | None = None,
) -> np.ndarray:
    """Renders the temporal heatmap stack that drives frame `t` (spec §3.2, drawing §3.3).

    Args:
      landmarks_seq: [N, 68, 2] float (x, y) in pixels of the `size` canvas, in frame order.
      t: index of the current frame, 0 <= t < N.
      size: canvas side in pixels.
      offsets: temporal offsets; the default (-3..3) gives 7 channels with frame t at channel 3.
      thickness: line thickness; None uses `default_thickness(size)`.

    Returns:
      [size, size, len(offsets)] float32 in [0, 1] (uint8 heatmap / 255), channel k showing frame
      clip(t + offsets[k], 0, N - 1).

    Raises:
      IndexError: if `t` is outside [0, N).
      ValueError: if `landmarks_seq` is not [N, 68, 2].
    """
    landmarks_seq = np.asarray(landmarks_seq)
    if landmarks_seq.ndim != 3 or landmarks_seq.shape[1:] != (68, 2):
        raise ValueError(f"landmarks_seq must be [N, 68, 2], got {landmarks_seq.shape}")
    n = landmarks_seq.shape[0]
    if not 0 <= t < n:
        raise IndexError(f"frame {t} outside [0, {n})")
    maps = [draw_heatmap(landmarks_seq[i], size, thickness) for i in stack_indices(t, n, offsets)]
    return np.stack(maps, axis=-1).astype(np.float32) / 255.0  # [size, size, len(offsets)]
