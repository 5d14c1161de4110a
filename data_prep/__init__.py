"""Video -> dataset preparation for vpgc_jax.

`python -m data_prep.prepare --video clip.mp4 --out DIR` decodes a talking-head clip, finds one
stable head-and-shoulders crop, detects 68 iBUG landmarks per cropped frame and writes a TFDS
ArrayRecord dataset plus `meta.json`, `landmarks.npz` and `contact_sheet.png`
(see `data_prep/prepare.py`).
Readers live in `vpgc_jax/data/frames.py`; heatmaps are drawn on demand by
`vpgc_jax/data/heatmaps.py`.
"""


class PrepareError(Exception):
    """A bad input or an unusable clip; `main` prints `error: <file>: <reason>` and exits 2.

    Attributes:
      path: the file the error is about.
      reason: one line saying what is wrong and, where possible, what to do.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
