"""Performance switches keep results: bf16 compute, remat, and no recompilation in the loops."""

import collections
import contextlib
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CODEBOOK, TINY_DRIVER, apply_overrides

from configs import codebook as codebook_config
from configs import driver as driver_config
from vpgc_jax import precision, writers
from vpgc_jax.data import frames as frames_lib
from vpgc_jax.data import pipeline
from vpgc_jax.models.driver import make_driver
from vpgc_jax.models.vqgan import make_vqmodel

# A tiny stage-1 model (32 px, 16x16 grid); no attention and one lookup vmap keep compiles short.
TINY_VQ = dict(
    encoder=dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16),
    codebook=dict(kind="grid", K_c=8, d_c=4, r=2, position_chunk=None),
    embed_dim=12,
    resolution=32,
)


@contextlib.contextmanager
def compile_counts():
    """Yields a Counter {jitted function name: XLA compilations} filled while the block runs."""
    counts = collections.Counter()
    pattern = re.compile(r"Compiling jit\(([^)]*)\)")

    class Handler(logging.Handler):
        def emit(self, record):
            m = pattern.match(record.getMessage())
            if m:
                counts[m.group(1)] += 1

    logger = logging.getLogger("jax._src.interpreters.pxla")
    handler, level, propagate = Handler(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # keep the (long) messages out of pytest's captured log
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        yield counts
    finally:
        jax.config.update("jax_log_compiles", previous)
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def test_compute_dtype_policy():
    assert precision.compute_dtype("auto", "cpu") == jnp.float32
    assert precision.compute_dtype("auto", "gpu") == jnp.bfloat16
    assert precision.compute_dtype("auto", "tpu") == jnp.bfloat16
    # The measured >= 45 dB split: the stage-1 autoencoder stays float32 under 'auto'.
    assert precision.compute_dtype("auto", "gpu", part="autoencoder") == jnp.float32
    assert precision.compute_dtype("bfloat16", "cpu", part="autoencoder") == jnp.bfloat16
    assert precision.compute_dtype("float32", "gpu") == jnp.float32
    with pytest.raises(ValueError, match="compute_dtype"):
        precision.compute_dtype("float16")
    with pytest.raises(ValueError, match="part"):
        precision.compute_dtype("auto", "gpu", part="decoder")


def _frames(dataset, n=4):
    source = frames_lib.open_split(str(dataset), "test")
    return pipeline.load_frames(source, np.arange(n), 32)


def test_bfloat16_compute_keeps_float32_params_outputs_and_quality(tiny_dataset):
    x = jnp.asarray(_frames(tiny_dataset))
    f32 = make_vqmodel(**TINY_VQ)
    bf16 = make_vqmodel(**TINY_VQ, dtype=jnp.bfloat16)
    init = jax.jit(lambda model: model.init(jax.random.PRNGKey(0), x)["params"], static_argnums=0)
    params, params_bf16 = init(f32), init(bf16)
    # Storage stays float32 and the parameter trees are the same: checkpoints do not depend on it.
    assert jax.tree.structure(params) == jax.tree.structure(params_bf16)
    assert {a.dtype for a in jax.tree.leaves(params_bf16)} == {jnp.dtype(jnp.float32)}

    def loss(p, model):
        y, aux = model.apply({"params": p}, x)
        return jnp.mean(jnp.abs(y - x)) + aux["codebook_loss"], (y, aux)

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, (y32, aux32)), g32 = value_and_grad(params, f32)
    (_, (y16, aux16)), g16 = value_and_grad(params, bf16)
    assert y16.dtype == jnp.float32 and aux16["codebook_loss"].dtype == jnp.float32
    # bf16 keeps ~3 significant digits: the two reconstructions agree to > 35 dB.
    mse = float(jnp.mean((y16 - y32) ** 2))
    assert 10 * np.log10(4.0 / mse) > 35.0, mse
    np.testing.assert_allclose(aux16["entropy"], aux32["entropy"], rtol=2e-2)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    a, b = (jnp.concatenate([v.ravel() for v in jax.tree.leaves(g)]) for g in (g32, g16))
    cos = jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    assert float(cos) > 0.99, float(cos)

    driver = make_driver(
        dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()),
        dict(depth=1, heads=2, dim_head=8, mlp_dim=32),
        dim=16,
        d_c=4,
        resolution=32,
        dtype=jnp.bfloat16,
    )
    heatmaps = jnp.zeros((2, 32, 32, 7))
    prior = jnp.zeros((16, 16, 4))

    @jax.jit
    def drive(heatmaps, prior):
        d_params = driver.init(jax.random.PRNGKey(1), heatmaps, prior)["params"]
        return driver.apply({"params": d_params}, heatmaps, prior)

    assert drive(heatmaps, prior).dtype == jnp.float32


def test_remat_changes_memory_not_parameters_or_gradients(tiny_dataset):
    x = jnp.asarray(_frames(tiny_dataset))
    plain, remat = make_vqmodel(**TINY_VQ), make_vqmodel(**TINY_VQ, remat=True)
    init = jax.jit(lambda model: model.init(jax.random.PRNGKey(0), x)["params"], static_argnums=0)
    params = init(plain)
    # Same names and shapes: a run can switch remat on or off and resume.
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, init(remat))

    def loss(p, model):
        y, aux = model.apply({"params": p}, x, train=True)
        return jnp.mean(jnp.abs(y - x)) + aux["codebook_loss"]

    grads = [jax.jit(jax.grad(loss), static_argnums=1)(params, m) for m in (plain, remat)]
    for a, b in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_loops_compile_each_function_once(tiny_dataset, tiny_codebook_run, tmp_path):
    """Logging, samples, periodic evaluation and checkpoints every step: nothing recompiles."""
    from vpgc_jax.inference import load_reenactor
    from vpgc_jax.trainers import codebook as codebook_trainer
    from vpgc_jax.trainers import driver as driver_trainer

    every_step = {"log_every": 1, "sample_every": 1, "eval_every": 1, "checkpoint_every": 1}
    config = codebook_config.get_config("cpu128")
    apply_overrides(
        config,
        {**TINY_CODEBOOK, **every_step, "dataset_dir": str(tiny_dataset), "num_steps": 2},
    )
    with compile_counts() as counts:
        codebook_trainer.train_and_evaluate(config, str(tmp_path / "cb"))
    # jax caches compilations of the same function across jit wrappers, so a function that an
    # earlier test compiled (lpips) may show 0 here; none may show 2.
    assert max(counts.values()) == 1, counts
    assert counts["train_step"] == 1, counts
    assert counts["reconstruct"] == 1, counts  # samples, periodic and final evaluation

    d_config = driver_config.get_config("cpu128")
    apply_overrides(
        d_config,
        {
            **TINY_DRIVER,
            **every_step,
            "codebook_workdir": str(tiny_codebook_run),
            "num_steps": 2,
            "num_eval_frames": 6,
            "eval_batch_size": 4,
            "num_sample_frames": 2,
        },
    )
    with compile_counts() as counts:
        driver_trainer.train_and_evaluate(d_config, str(tmp_path / "drv"))
    assert max(counts.values()) == 1, counts
    assert counts["train_step"] == 1, counts
    assert counts["drive"] == 1, counts  # samples and evaluations: the last batch is padded

    reenactor = load_reenactor(str(tmp_path / "drv"), batch=4)
    stacks = np.zeros((11, 32, 32, 7), np.float32)
    with compile_counts() as counts:
        out = [reenactor.drive(stacks[i : i + 4]) for i in range(0, 11, 4)]  # 4, 4, 3 frames
    assert [len(o) for o in out] == [4, 4, 3]
    assert dict(counts) == {"drive": 1}


def test_a_train_step_that_cannot_fit_stops_with_one_line(tiny_dataset, tmp_path, monkeypatch):
    """XLA's memory analysis of the compiled step against free memory, before it runs (issue 15)."""
    from vpgc_jax import memory
    from vpgc_jax.trainers import codebook as codebook_trainer

    config = codebook_config.get_config("cpu128")
    apply_overrides(config, {**TINY_CODEBOOK, "dataset_dir": str(tiny_dataset), "num_steps": 2})
    x = jnp.zeros((64, 64), jnp.float32)
    compiled = jax.jit(lambda a: (a @ a).sum()).lower(x).compile()
    assert memory.step_bytes(compiled) >= x.nbytes  # the CPU backend reports an analysis
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2**20)  # 1 MiB free
    with pytest.raises(memory.MemoryEstimateError) as e:
        codebook_trainer.train_and_evaluate(config, str(tmp_path / "cb"))
    message = str(e.value)
    assert "\n" not in message
    step = r"stage-1 train step \(cpu128, batch 8, 32 px\)"
    assert re.search(step + r" needs about [\d.]+ GiB", message), message
    assert "0.0 GiB are available on cpu" in message and "--config.remat=True" in message
    assert not (tmp_path / "cb" / "metrics.jsonl").exists() or not writers.read_metrics(
        tmp_path / "cb"
    )  # no step ran
