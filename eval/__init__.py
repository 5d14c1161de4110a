"""Evaluation: metrics over held-out frames and the report CLI (``python -m eval.evaluate``).

The per-frame metrics stage 1 already uses live in `vpgc_jax.metrics` (PSNR, SSIM) and
`vpgc_jax.losses.lpips` (LPIPS); `vpgc_jax.trainers.codebook.evaluate_checkpoint` scores any saved
stage-1 checkpoint on a dataset's test split. The report CLI (Table 1 / Table 4 layouts, F-LMD,
baselines, example strips) is not written yet.
"""
