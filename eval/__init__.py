"""Evaluation: held-out metrics of paper Sec. 4.2, the trainers' evaluators and the report CLI.

* `eval.metrics`: PSNR, SSIM, LPIPS on uint8 frames, F-LMD at 512 x 512, the mean-frame,
  retrieval and thumbnail baselines, `Scores` (the one held-out scoring loop) and
  `score_baselines` over a dataset's test split.
* `eval.face_landmarks`: the landmark detection F-LMD uses (`data_prep`'s dlib detector, with the
  ground truth's face box as fallback where no face is found in a generated frame).
* `eval.evaluators`: the trainers' `HeldOutEvaluator` / `DriverEvaluator` (given a predict
  function), `TemporalStats`, and `evaluate_checkpoint`, which scores one stage-1 checkpoint
  without a report.
* `eval.evaluate`: the CLI and `evaluate(...)`: stage-1 reconstruction and self-reenactment of
  trained runs on the test split with baseline rows, written as metrics.json and report.md
  (Table 1 layout; Table 4 convergence comparison for several stage-1 runs) with PNG figures.
* `eval.report`: report.md, the convergence plot and the example strip.

Per-frame PSNR and SSIM are `vpgc_jax.metrics` (8-bit levels, the same numbers as a run's
eval.json), LPIPS `vpgc_jax.losses.lpips`.
"""
