"""PyTorch interop: the reference's checkpoint formats (spec §6) in both directions.

* :mod:`vpgc_jax.interop.convert`: pure numpy conversions between vpgc_jax param trees and
  PyTorch-layout state dicts, key/shape checks, and what the reference can express. No torch.
* :mod:`vpgc_jax.interop.torch_io`: reading and writing ``.ckpt`` files (needs torch).
* :mod:`vpgc_jax.interop.torch_modules`: a PyTorch inference implementation (encoder, decoder, grid
  codebook, driver) that loads the exported files (needs torch, not JAX).
* :mod:`vpgc_jax.interop.runs`: reading and writing vpgc_jax run directories (needs JAX).

The command-line tools are ``python -m vpgc_jax.export_torch`` and ``python -m
vpgc_jax.import_torch``. torch is optional: ``pip install -r requirements-interop.txt``.
"""
