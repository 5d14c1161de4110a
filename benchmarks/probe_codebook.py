"""Is a trained grid codebook quantising, or passing the latent through? One stage-1 checkpoint.

  python benchmarks/probe_codebook.py --workdir runs/cb128 [--step 500] [--frames 16]

On evenly spaced test-split frames of the run's own dataset it prints:

* the query norm |q| per d_c sub-vector and the soft lookup's health (softmax entropy in nats,
  effective codes = exp(entropy), mean largest weight);
* how far the lookup moves the latent: ||z_q - z|| / ||z||, and the correlation and least-squares
  slope of z_q against z (z = quant_conv output, z_q = codebook output);
* held-out PSNR (8-bit, dB) and LPIPS (`eval.metrics.image_metrics`) of three decodes of the
  same frames: through the run's own lookup, with the lookup bypassed (z_q := z), and with the
  hard lookup (argmin in the window, paper Eq. 1 restricted to the receptive window) swapped in.

Why: for small queries the soft lookup of paper Eq. 4-5 is close to linear,
sum_k softmax(c_k . q) c_k ~ mean(c) + Cov(c) q, and Cov(c) ~ I for N(0, 1) codes, so the lookup can
act as an identity plus the texture prior instead of a codebook. The decode gaps tell whether the
model depends on the lookup at all, and how much a real (hard) quantisation would cost it.
"""

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval import metrics  # noqa: E402
from vpgc_jax import images, runs  # noqa: E402
from vpgc_jax.data import frames as frames_lib  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a stage-1 run directory (grid codebook)")
    p.add_argument("--step", type=int, default=-1, help="checkpoint step (default: the latest)")
    p.add_argument("--frames", type=int, default=16, help="evenly spaced test frames (0: all)")
    args = p.parse_args(argv)

    config, model, params, step = runs.load_codebook(args.workdir, args.step)
    cb = config.model.codebook
    if cb.kind != "grid":
        raise SystemExit(f"error: {args.workdir} is a {cb.kind} codebook run")
    source = frames_lib.open_split(config.dataset_dir, "test")
    idx = frames_lib.evenly_spaced(len(source), args.frames)
    gt = np.stack([source[int(i)]["image"] for i in idx])  # [N, R, R, 3] uint8
    x = images.to_signed(gt)

    def probe(m, x):  # z = quant_conv output; decodes through the lookup and around it
        z = m.quant_conv(m.encode(x))
        z_q, aux = m.quantize(z)
        return z, z_q, aux, m.decode(z_q), m.decode(z)

    apply = jax.jit(lambda params, x: model.apply({"params": params}, x, method=probe))
    z, z_q, aux, rec, rec_bypass = jax.device_get(apply(params, x))
    hard_config = config.copy_and_resolve_references()
    hard_config.model.codebook.lookup = "hard"
    hard = runs.build_model(hard_config)
    rec_hard = runs.make_reconstruct(hard)(params, x)

    q_norm = np.linalg.norm(z.reshape(*z.shape[:3], -1, cb.d_c), axis=-1)
    zf, zqf = z.ravel(), z_q.ravel()
    rel, corr = np.linalg.norm(z_q - z) / np.linalg.norm(z), np.corrcoef(zf, zqf)[0, 1]
    print(f"{args.workdir} step {step}, {len(x)} test frames, lookup {cb.lookup}")
    print(f"|q| per sub-vector: mean {q_norm.mean():.3f}, median {np.median(q_norm):.3f}")
    if cb.lookup == "soft":
        print(
            f"softmax entropy {float(aux['entropy']):.3f} nats, effective codes "
            f"{float(aux['effective_codes']):.0f}, mean max weight {float(aux['max_weight']):.4f}"
        )
    print(
        f"||z_q - z|| / ||z|| = {rel:.4f}; corr(z, z_q) = {corr:.4f}; "
        f"slope {np.dot(zf, zqf) / np.dot(zf, zf):.3f}"
    )
    for name, r in (
        ("own lookup", rec),
        ("lookup bypassed (z_q := z)", rec_bypass),
        ("hard lookup", rec_hard),
    ):
        m = metrics.image_metrics(images.to_uint8(r), gt)
        print(
            f"decode via {name:28s} PSNR {m['psnr'].mean():.2f} dB, LPIPS {m['lpips'].mean():.4f}"
        )


if __name__ == "__main__":
    main()
