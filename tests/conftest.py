"""Shared pytest fixtures: the real sample data, tiny prepared datasets and tiny trained runs.

The session also shares one XLA compilation cache (`pytest_configure`). The suite runs on
pytest-xdist workers (the README's `-n 2`): the session fixtures that write a dataset or train a
run are built once per session, by whichever worker asks first, and read by the others
(`shared_dir`).
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import submitit  # noqa: F401  (see below)
from filelock import FileLock

# submitit configures logging when first imported (logging.config.dictConfig), which closes every
# logging handler that exists then, pytest's capture of the running test included ("I/O operation
# on closed file" for the rest of the session). Imported here, before any test, as the sweep CLI
# imports it at its start.

# The repository's parent has shared/ beside it (developer machines and CI).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PORTRAITS = SHARED_DATA / "portraits"
MACRON = PORTRAITS / "macron_address_512.mp4"

# The tiny dataset: the first 90 frames of the macron clip at 128 px, the last 20 frames as test.
TINY_FRAMES, TINY_TEST, TINY_SIZE = 90, 20, 128


CACHE_KEY = pytest.StashKey[str]()


# The tests' programs are tiny and many: XLA's CPU backend spends most of their time compiling.
# LLVM optimisation level 0 compiles them 1.3-1.6x faster (measured on a test_models roundtrip
# and the parity test; the GPU suite's --tiny uses it too); the older elemental emitters instead of
# the fusion emitters, and no XNNPACK, take another 20 % off (a 4-step tiny stage-1 run with its
# evaluation: 9.6-10.1 s of backend compilation -> 7.6-7.7 s, two runs each;
# `benchmarks/compile_flags.py`). Every tolerance holds with them.
FAST_COMPILE_FLAG = (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
    "--xla_cpu_use_xnnpack=false"
)


def pytest_configure(config):
    """One persistent XLA compilation cache for the session and the processes it starts, and
    `FAST_COMPILE_FLAG` in XLA_FLAGS (subprocesses inherit both).

    The tiny models' step, init and evaluation functions are the same computations in many tests
    (a new jit of the same model per run); each is compiled once and loaded from the cache after.
    The log line `tests/test_performance.py` counts compilations by is still written on a hit, and
    results do not change. Set before jax is imported (jax reads the variable then); fresh per
    session, removed at its end.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAG}".strip()
    # Every program, not only those that compile in over a second (jax's default): the tiny
    # runs' evaluation and sampling programs are many and each compiles in under a second.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        path = tempfile.mkdtemp(prefix="vpgc-test-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
        config.stash[CACHE_KEY] = path


def pytest_unconfigure(config):
    path = config.stash.get(CACHE_KEY, None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


def shared_dir(
    tmp_path_factory, worker_id: str, name: str, leaf: str, build: Callable[[Path], None]
) -> Path:
    """`build(path)` once per test session, also over xdist workers; returns `path` (`.../leaf`).

    Without xdist (`worker_id` 'master') the path is a fresh temporary directory. Under xdist the
    workers share their session's temporary root: the first to arrive builds while holding a file
    lock, the others wait for it and reuse the result (a marker file says it is complete, so a
    build that failed is retried by the next worker rather than half-read). Fixtures built this
    way are read-only to the tests: a test that changes one copies it first.
    """
    if worker_id == "master":
        path = tmp_path_factory.mktemp(name) / leaf
        build(path)
        return path
    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    path, done = root / name / leaf, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(root / name, ignore_errors=True)
            path.parent.mkdir()
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def macron_video() -> Path:
    """The 512x512, 30 fps macron clip (skips when the shared data is absent)."""
    if not MACRON.is_file():
        pytest.skip(f"shared sample data not found at {MACRON}")
    return MACRON


def prepared_dataset(tmp_path_factory, worker_id, video: Path, frames: int, test: int, name: str):
    """`shared_dir` of `data_prep.prepare` on the first `frames` frames of `video` at 128 px."""
    from data_prep import prepare

    def build(out: Path) -> None:
        argv = [
            f"--video={video}",
            f"--out={out}",
            f"--size={TINY_SIZE}",
            f"--max-frames={frames}",
            f"--test-frames={test}",
        ]
        assert prepare.main(argv) == 0

    return shared_dir(tmp_path_factory, worker_id, name, "ds", build)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, worker_id, macron_video) -> Path:
    """A dataset prepared by `data_prep.prepare`: 90 macron frames at 128 px, 20 of them test."""
    args = (macron_video, TINY_FRAMES, TINY_TEST, "tiny")
    return prepared_dataset(tmp_path_factory, worker_id, *args)


# A second person for cross-reenactment: the first 40 frames of the news anchor at 128 px.
ANCHOR = PORTRAITS / "news_anchor_de_512.mp4"
ANCHOR_FRAMES, ANCHOR_TEST = 40, 10


@pytest.fixture(scope="session")
def anchor_dataset(tmp_path_factory, worker_id) -> Path:
    """Prepared by `data_prep.prepare`: 40 news-anchor frames at 128 px, 10 of them test."""
    if not ANCHOR.is_file():
        pytest.skip(f"shared sample data not found at {ANCHOR}")
    args = (ANCHOR, ANCHOR_FRAMES, ANCHOR_TEST, "anchor")
    return prepared_dataset(tmp_path_factory, worker_id, *args)


# The tiny stage-1 model: 32 px, one downsampling -> 16x16 grid, z_channels 20, embed_dim 12
# = K_d 3 x d_c 4, K_c = 8, r = 2: distinct sizes, so swapped axes fail (the grid is square because
# the images are: one square crop per clip; tests/test_models.py runs the models on 8x12 grids).
TINY_CODEBOOK = {
    "resolution": 32,
    "model.encoder.ch": 32,
    "model.encoder.ch_mult": (1, 2),
    "model.encoder.num_res_blocks": 1,
    "model.encoder.attn_resolutions": (16,),
    "model.encoder.z_channels": 20,
    "model.embed_dim": 12,
    "model.codebook.K_c": 8,
    "model.codebook.r": 2,
    "disc.ndf": 8,
    "batch_size": 8,
    # The reference's consecutive-frame groups: the 1-vs-8-device tolerances were set with these
    # (the adaptive GAN weight amplifies rounding differently with other batches).
    "frames_per_group": 4,
    "loss.disc_start": 2,
    "log_every": 1,
    "sample_every": 0,
    "checkpoint_every": 1000,
    "eval_every": 0,
    "num_eval_frames": 4,
    "eval_batch_size": 4,
    "num_sample_frames": 2,
}


def apply_overrides(config, overrides: dict):
    """Sets dotted keys ('model.ch': 32) of an ml_collections config in place; returns it."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="session")
def tiny_codebook_run(tmp_path_factory, worker_id, tiny_dataset) -> Path:
    """A finished 2-step stage-1 run of the tiny model on `tiny_dataset` (a run directory)."""
    from configs import codebook as codebook_config
    from vpgc_jax.trainers import codebook as trainer

    def build(workdir: Path) -> None:
        config = codebook_config.get_config("cpu128")
        overrides = {**TINY_CODEBOOK, "dataset_dir": str(tiny_dataset), "num_steps": 2}
        trainer.train_and_evaluate(apply_overrides(config, overrides), str(workdir))

    return shared_dir(tmp_path_factory, worker_id, "cb", "run", build)


# The tiny stage-2 driver for `tiny_codebook_run` (32 px heatmaps, one downsampling, width 20).
TINY_DRIVER = {
    "model.encoder.ch": 32,
    "model.encoder.ch_mult": (1, 2),
    "model.encoder.num_res_blocks": 1,
    "model.encoder.attn_resolutions": (),
    "model.transformer.depth": 1,
    "model.transformer.heads": 2,
    "model.transformer.dim_head": 8,
    "model.transformer.mlp_dim": 24,
    "batch_size": 4,
    "log_every": 1,
    "sample_every": 0,
    "eval_every": 0,
}


@pytest.fixture(scope="session")
def tiny_driver_run(tmp_path_factory, worker_id, tiny_codebook_run) -> Path:
    """A finished 1-step paper-variant driver run on `tiny_codebook_run` (no final evaluation)."""
    from configs import driver as driver_config
    from vpgc_jax.trainers import driver as trainer

    def build(workdir: Path) -> None:
        config = driver_config.get_config("cpu128")
        overrides = {**TINY_DRIVER, "num_steps": 1, "final_eval": False}
        overrides["codebook_workdir"] = str(tiny_codebook_run)
        trainer.train_and_evaluate(apply_overrides(config, overrides), str(workdir))

    return shared_dir(tmp_path_factory, worker_id, "drv", "run", build)


# The tiny audio model (issue 20) on `tiny_dataset`'s 70 training frames.
TINY_AUDIO = {
    "model.width": 16,
    "model.depth": 2,
    "model.hidden": 32,
    "batch_size": 8,
    "num_steps": 4,
    "log_every": 1,
    "eval_every": 2,
    "sample_every": 4,
    "checkpoint_every": 1000,
}


@pytest.fixture(scope="session")
def tiny_audio_run(tmp_path_factory, worker_id, tiny_dataset) -> Path:
    """A finished 4-step audio-model run on `tiny_dataset` (a run directory, with eval.json)."""
    from configs import audio as audio_config
    from vpgc_jax.trainers import audio as trainer

    def build(workdir: Path) -> None:
        config = audio_config.get_config("cpu")
        overrides = {**TINY_AUDIO, "dataset_dir": str(tiny_dataset)}
        trainer.train_and_evaluate(apply_overrides(config, overrides), str(workdir))

    return shared_dir(tmp_path_factory, worker_id, "audio", "run", build)


AUDIO_RATE = 44_100  # test audio is written at another rate than the features' 16 kHz


def write_media(path, seconds: float, tone=None, audio_start_s: float = 0.0, video=True):
    """An mp4 (25 fps, 32 px grey) or, with video=False, a wav; stereo 44.1 kHz audio, silent but
    for a 1 kHz tone during `tone` = (start s, end s) of the video's time, the audio stream
    starting `audio_start_s` after the video (None: no audio stream)."""
    container = av.open(str(path), "w")
    if video:
        vs = container.add_stream("libx264", rate=25)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
    if audio_start_s is not None:
        codec = "aac" if video else "pcm_s16le"
        fmt = "fltp" if video else "s16"
        as_ = container.add_stream(codec, rate=AUDIO_RATE, layout="stereo")
        t = np.arange(int((seconds - audio_start_s) * AUDIO_RATE)) / AUDIO_RATE + audio_start_s
        wave = np.zeros_like(t)
        if tone:
            on = (t >= tone[0]) & (t < tone[1])
            wave[on] = 0.5 * np.sin(2 * np.pi * 1000 * t[on])
        frame_size = 1024
        for i in range(0, len(t) - frame_size + 1, frame_size):
            chunk = np.stack([wave[i : i + frame_size]] * 2).astype(np.float32)  # planar
            if fmt == "s16":  # packed
                chunk = (chunk * 32767).astype(np.int16).T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="stereo")
            frame.sample_rate = AUDIO_RATE
            frame.pts = int(round(audio_start_s * AUDIO_RATE)) + i
            frame.time_base = Fraction(1, AUDIO_RATE)
            for packet in as_.encode(frame):
                container.mux(packet)
        for packet in as_.encode(None):
            container.mux(packet)
    if video:
        for i in range(int(seconds * 25)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), "rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode(None):
            container.mux(packet)
    container.close()
    return path


# The slowest files first, so that two xdist workers (`--dist loadfile`) finish together rather than
# one waiting on a long file picked up last. Measured with `--durations` (setup included).
SLOW_FIRST = (
    "test_multihost.py",
    "test_gpu_suite.py",
    "test_evaluate.py",
    "test_performance.py",
    "test_train_codebook.py",
    "test_models.py",
    "test_interop.py",
    "test_parity.py",
    "test_sweep.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
