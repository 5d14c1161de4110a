"""A one-image visual check of a prepared clip: frames with landmarks next to their heatmaps."""

import cv2
import numpy as np

from vpgc_jax.data.heatmaps import draw_heatmap

NUM_FRAMES = 6
TILE = 256  # Tile side in pixels on the sheet.


def pick_frames(num_frames: int, count: int = NUM_FRAMES) -> list[int]:
    """`count` frame indices spread evenly over [0, num_frames)."""
    return sorted(set(np.linspace(0, num_frames - 1, count).round().astype(int).tolist()))


def render_pair(
    image: np.ndarray, landmarks: np.ndarray, valid: bool, frame_index: int
) -> np.ndarray:
    """One sheet cell: the frame with landmarks drawn, and beside it the heatmap of those landmarks.

    Args:
      image: [S, S, 3] uint8 RGB crop.
      landmarks: [68, 2] float (x, y) in crop pixels.
      valid: whether the landmarks were detected (False: interpolated, drawn red instead of green).
      frame_index: printed on the tile.

    Returns:
      [TILE, 2 * TILE, 3] uint8 RGB.
    """
    size = image.shape[0]
    s = TILE / size
    tile = cv2.resize(
        image, (TILE, TILE), interpolation=cv2.INTER_AREA if size > TILE else cv2.INTER_LINEAR
    )
    colour = (0, 255, 0) if valid else (255, 0, 0)
    for x, y in (landmarks + 0.5) * s - 0.5:
        cv2.circle(tile, (int(round(x)), int(round(y))), 1, colour, -1, lineType=cv2.LINE_AA)
    heat = draw_heatmap(landmarks, size)
    heat = cv2.resize(
        heat, (TILE, TILE), interpolation=cv2.INTER_AREA if size > TILE else cv2.INTER_NEAREST
    )
    heat = np.repeat(heat[:, :, None], 3, axis=2)
    label = f"frame {frame_index}" + ("" if valid else " (interp.)")
    cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
    return np.concatenate([tile, heat], axis=1)


def write_contact_sheet(path: str, cells: list[np.ndarray], columns: int = 2) -> None:
    """Writes cells from `render_pair` as a PNG grid of `columns` pairs per row.

    Args:
      path: output .png path.
      cells: [TILE, 2 * TILE, 3] uint8 RGB each.
      columns: pairs per row.
    """
    blank = np.zeros_like(cells[0])
    rows = []
    for i in range(0, len(cells), columns):
        row = cells[i : i + columns]
        row += [blank] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    sheet = np.concatenate(rows, axis=0)
    cv2.imwrite(path, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
