"""Speed and memory of the grid-codebook lookup, forward + backward (Sec. 3.2; spec §5.3).

Run: ``PYTHONPATH=. python benchmarks/bench_lookup.py [--reps 3]``

Shapes: B=4, 16x16 grid, K_c=256, d_c=4, r=4 (window W = 4096 codes), C=256 (K_d=64), knn
window. Each row jits ``grad(sum(z_q * t))`` w.r.t. (G, z), reports the median wall time of
``--reps`` runs after compilation and XLA's ``memory_analysis()`` of the compiled step
(temp + argument + output bytes, the peak the executable needs). The "naive broadcast" rows
materialise the reference's [B, N, K_d, W, d_c] tensors (spec §5.3) and only fit at K_c=16.

Recorded numbers, with date, device and command: ``benchmarks/RESULTS.md``.

For the hard naive row XLA fuses the broadcast-subtract-square-sum into one reduction, so the
[B, N, K_d, W, d_c] tensor is not materialised by the compiled program (PyTorch eager does, spec
§5.3); the soft naive row keeps it for the backward pass.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from vpgc_jax.models.codebook import grid_lookup, knn_window


def naive_broadcast(g, z, table, lookup):
    """The reference's formulation: broadcast [B, N, K_d, W, d_c] tensors (spec §1.5, §5.3)."""
    h, w, k_c, d_c = g.shape
    b, c = z.shape[0], z.shape[-1]
    n = h * w
    cw = g.reshape(n, k_c, d_c)[jnp.asarray(table)].reshape(n, -1, d_c)  # [N, W, d_c]
    zb = z.reshape(b, n, c // d_c, 1, d_c)  # [B, N, K_d, 1, d_c]
    cb = cw[None, :, None]  # [1, N, 1, W, d_c]
    if lookup == "soft":
        weights = jax.nn.softmax(jnp.sum(zb * cb, -1), -1)  # [B, N, K_d, W]
        z_q = jnp.sum(weights[..., None] * cb, -2)  # [B, N, K_d, d_c]
    else:
        idx = jnp.argmin(jnp.sum((zb - cb) ** 2, -1), -1)  # [B, N, K_d]
        z_q = jnp.take_along_axis(cw[None], idx.reshape(b, n, -1, 1), axis=2)
    return z_q.reshape(z.shape)


def measure(fn, g, z, t, reps):
    """Compiles grad(sum(fn(g, z) * t)) and returns (median seconds, peak bytes)."""
    step = jax.jit(jax.grad(lambda g, z: jnp.sum(fn(g, z) * t), argnums=(0, 1)))
    compiled = step.lower(g, z).compile()
    m = compiled.memory_analysis()
    peak = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    jax.block_until_ready(compiled(g, z))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(g, z))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    b, h, w, d_c, r, c = args.batch, 16, 16, 4, 4, 256
    table = knn_window(h, w, r)
    rows = []
    cases = [
        ("soft", "ours, position_chunk=16", 256, lambda lk: dict(position_chunk=16)),
        ("hard", "ours, position_chunk=16", 256, lambda lk: dict(position_chunk=16)),
        ("soft", "ours, one vmap (no chunk)", 256, lambda lk: dict(position_chunk=None)),
        ("hard", "ours, one vmap (no chunk)", 256, lambda lk: dict(position_chunk=None)),
        ("soft", "ours, position_chunk=16", 16, lambda lk: dict(position_chunk=16)),
        ("soft", "naive broadcast", 16, None),
        ("hard", "ours, position_chunk=16", 16, lambda lk: dict(position_chunk=16)),
        ("hard", "naive broadcast", 16, None),
    ]
    print(f"device: {jax.devices()[0].device_kind}, B={b}, grid {h}x{w}, d_c={d_c}, r={r}, C={c}")
    for lookup, impl, k_c, kw in cases:
        kg, kz, kt = jax.random.split(jax.random.key(0), 3)
        g = jax.random.normal(kg, (h, w, k_c, d_c))
        z = jax.random.normal(kz, (b, h, w, c))
        t = jax.random.normal(kt, (b, h, w, c))
        if kw is None:
            fn = lambda g, z, lk=lookup: naive_broadcast(g, z, table, lk)  # noqa: E731
        else:
            opts = kw(lookup)
            fn = lambda g, z, lk=lookup, o=opts: grid_lookup(g, z, table, lookup=lk, **o)[0]  # noqa: E731
        sec, peak = measure(fn, g, z, t, args.reps)
        rows.append((lookup, impl, k_c, r * r * k_c, sec, peak))
    print("| lookup | implementation | K_c | window W | fwd+bwd median (s) | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for lookup, impl, k_c, win, sec, peak in rows:
        print(f"| {lookup} | {impl} | {k_c} | {win} | {sec:.3f} | {peak / 2**20:.1f} |")


if __name__ == "__main__":
    main()
