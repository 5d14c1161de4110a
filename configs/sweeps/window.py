"""Stage 1 window size r x codes per position K_c (paper Sec. 3.2) at the cpu128 settings.

  python -m vpgc_jax.sweep --sweep configs/sweeps/window.py --root runs/sweep_window
  # a quick look first: flags on the command line replace the file's entries
  python -m vpgc_jax.sweep --sweep configs/sweeps/window.py --root runs/sw_quick \
      --override num_steps=20 --set model.r=2,4

Six runs, r-2_K_c-32 ... r-8_K_c-64, on the dataset of README "Quick start" (runs/macron128).
"""


def get_sweep() -> dict:
    """The sweep: 'config' (one trainer config, or a list swept as one more axis), 'set' (swept
    key -> values), 'override' (key -> value for every run); as `python -m vpgc_jax.sweep` flags."""
    return {
        "config": "configs/codebook.py:cpu128",
        "set": {"model.r": [2, 4, 8], "model.K_c": [32, 64]},
        "override": {"dataset_dir": "runs/macron128", "num_steps": 500},
    }
