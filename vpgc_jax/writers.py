"""What a run leaves in its workdir: metrics.jsonl, TensorBoard events, sample grids, JSON files.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step (``step`` first, then
the scalars); it is appended to across resumes, so a resumed run's log reads on without a gap.
"""

import json
import math
import os
import sys

import jax
import numpy as np
from PIL import Image

from vpgc_jax import images


class MetricWriter:
    """Appends scalar dicts to ``workdir/metrics.jsonl`` and TensorBoard (tensorboardX)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self.enabled:
            SummaryWriter = _summary_writer_class()  # noqa: N806  (lazy: process 0 only)
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        """Writes one record; non-finite values are written as null in JSON."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        record = {"step": int(step)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Adds a uint8 [H, W, 3] image to TensorBoard."""
        if self.enabled:
            self._tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _summary_writer_class():
    """tensorboardX's `SummaryWriter`, imported without importing PyTorch.

    tensorboardX imports torch at import time whenever it is installed (the interop extra), only
    to accept torch tensors, which we never pass: 2.6 s and a few hundred MiB in every training
    process. An entry of None in `sys.modules` makes that `import torch` fail as if torch were
    absent; the entry is removed at once, so a later `import torch` works as usual.
    """
    if "torch" in sys.modules:  # imported already: nothing to save
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def read_metrics(workdir: str) -> list[dict]:
    """All records of ``workdir/metrics.jsonl`` (empty list if there is none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def image_grid(columns: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Lays out columns of frames side by side, one row per frame.

    Args:
      columns: each a [N, H, W, C] array in [-1, 1] (C = 3), or heatmaps [N, H, W, 1] in [0, 1]
        (shown grey).

    Returns:
      uint8 [N*(H+pad)+pad, len(columns)*(W+pad)+pad, 3], white padding.
    """
    cols = []
    for c in columns:
        c = np.asarray(c, np.float32)
        if c.shape[-1] == 1:
            c = np.repeat(c * 2 - 1, 3, axis=-1)
        cols.append(images.to_uint8(c))
    n, h, w, _ = cols[0].shape
    grid = np.full((n * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
    for j, c in enumerate(cols):
        for i in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = c[i]
    return grid


def save_png(path: str, image: np.ndarray) -> None:
    """Writes uint8 [H, W, 3] to `path` atomically (tmp file + rename), creating parent dirs."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.png"
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    """Writes JSON atomically (tmp + rename); process 0 only. numpy scalars and tuples are fine."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (tuple, list)):
        return list(x)
    return str(x)
