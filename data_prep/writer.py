"""Writes the prepared clip: a TFDS ArrayRecord dataset, `landmarks.npz` and `meta.json`.

The TFDS builder needs no TensorFlow: it writes ArrayRecord files and gets images as PNG bytes.
Layout of a dataset directory DIR:

  DIR/meta.json             provenance and shapes (see `prepare.py`)
  DIR/landmarks.npz         {split}_landmarks [N, 68, 2] float32, {split}_valid [N] bool,
                            {split}_frame_index [N] int32 for split in (train, test)
  DIR/audio.npz             {split}_mel [N, 41, 80] float16 log-mel windows, one per frame, and the
                            feature settings (`data_prep.audio`; absent for a clip without usable
                            audio: meta.json's 'audio' says why)
  DIR/tfds/vpgc_portrait/1.0.0/   ArrayRecord shards + dataset_info.json + features.json
  DIR/contact_sheet.png
"""

import json
import os
import shutil
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

DATASET_NAME = "vpgc_portrait"
DATASET_VERSION = "1.0.0"
TFDS_SUBDIR = os.path.join("tfds", DATASET_NAME, DATASET_VERSION)
SPLITS = ("train", "test")

# One example: frame_index -> (image [S, S, 3] uint8 RGB, landmarks [68, 2] float32, valid bool).
ExampleFn = Callable[[str], Iterator[tuple[int, np.ndarray, np.ndarray, bool]]]


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an [H, W, 3] uint8 RGB image (lossless: reading gives back the same pixels)."""
    ok, buf = cv2.imencode(
        ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3]
    )
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


class VpgcPortrait(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder `vpgc_portrait` (from the class name): splits train and test, in frame order."""

    VERSION = tfds.core.Version(DATASET_VERSION)

    # No download checksums to find. TFDS 4.9.10 looks for them next to the module via
    # `importlib_resources`, a package it does not declare, so the lookup is switched off.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None

    # `prepare` prints its own summary and progress bar ("write train/test"): TFDS's download and
    # "prepared to ..." lines would only repeat them (there is nothing to download).
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def __init__(self, *, size: int, examples: ExampleFn, **kwargs):
        self._size = size
        self._examples = examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Cropped talking-head frames with 68 iBUG landmarks (vpgc_jax data_prep).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(self._size, self._size, 3), encoding_format="png"
                    ),
                    "landmarks": tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
                    "valid": tfds.features.Scalar(dtype=np.bool_),
                    "frame_index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            disable_shuffling=True,  # Keep frame order: loaders need temporal neighbours.
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        for frame_index, image, landmarks, valid in self._examples(split):
            yield (
                int(frame_index),
                {
                    "image": encode_png(image),
                    "landmarks": np.asarray(landmarks, np.float32),
                    "valid": bool(valid),
                    "frame_index": int(frame_index),
                },
            )


def write_tfds(out_dir: str, size: int, examples: ExampleFn) -> str:
    """Builds the TFDS dataset under `out_dir/tfds`.

    Args:
      out_dir: dataset directory being written (normally a temporary one).
      size: image side in pixels.
      examples: `examples(split)` yields (frame_index, image [S, S, 3] uint8 RGB, landmarks [68, 2]
        float32, valid) in frame order.

    Returns:
      The TFDS version directory.
    """
    tfds.disable_progress_bar()  # its split/shuffle bars repeat prepare's "write <split>" bar
    builder = VpgcPortrait(
        size=size,
        examples=examples,
        data_dir=os.path.join(out_dir, "tfds"),
        file_format="array_record",
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    shutil.rmtree(os.path.join(out_dir, "tfds", "downloads"), ignore_errors=True)
    return os.path.join(out_dir, TFDS_SUBDIR)


def write_landmarks(out_dir: str, arrays: dict[str, dict[str, np.ndarray]]) -> None:
    """Writes `landmarks.npz` from {split: {landmarks, valid, frame_index}}."""
    flat = {}
    for split, d in arrays.items():
        flat[f"{split}_landmarks"] = np.asarray(d["landmarks"], np.float32)
        flat[f"{split}_valid"] = np.asarray(d["valid"], np.bool_)
        flat[f"{split}_frame_index"] = np.asarray(d["frame_index"], np.int32)
    np.savez(os.path.join(out_dir, "landmarks.npz"), **flat)


def write_meta(out_dir: str, meta: dict) -> None:
    """Writes `meta.json` (indented, keys in insertion order)."""
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def json_load(path: str) -> dict:
    """Reads a JSON object (meta.json)."""
    with open(path) as f:
        return json.load(f)
