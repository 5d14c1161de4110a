"""Evaluation: held-out metrics of paper Sec. 4.2 and the report CLI (``python -m eval.evaluate``).

* `eval.metrics`: PSNR, SSIM, LPIPS on uint8 frames, F-LMD at 512 x 512 with dlib landmarks, the
  mean-frame and retrieval baselines, and `score_baselines` over a dataset's test split.
* `eval.face_landmarks`: the landmark detection the report's F-LMD uses (dlib, with the ground
  truth's face box as fallback where no face is found in a generated frame).
* `eval.evaluate`: the CLI and `evaluate(...)`: stage-1 reconstruction and self-reenactment of
  trained runs on the test split with baseline rows, written as metrics.json and report.md
  (Table 1 layout; Table 4 convergence comparison for several stage-1 runs) with PNG figures.
* `eval.report`: report.md, the convergence plot and the example strip.

Per-frame PSNR and SSIM are `vpgc_jax.metrics`, LPIPS `vpgc_jax.losses.lpips`;
`vpgc_jax.trainers.codebook.evaluate_checkpoint` scores one stage-1 checkpoint without a report.
"""
