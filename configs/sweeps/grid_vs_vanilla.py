"""Grid (soft lookup) vs VQGAN's vanilla codebook at the cpu128 settings (paper Table 4, small).

  python -m vpgc_jax.sweep --sweep configs/sweeps/grid_vs_vanilla.py --root runs/sweep_gv \
      --parallel 2

The two configs are the swept axis (runs config-cpu128 and config-cpu128+vanilla); the fixed
overrides are those of benchmarks/RESULTS.md "grid soft vs vanilla codebook".
"""


def get_sweep() -> dict:
    """The sweep, as `python -m vpgc_jax.sweep` flags (see configs/sweeps/window.py)."""
    return {
        "config": ["configs/codebook.py:cpu128", "configs/codebook.py:cpu128+vanilla"],
        "override": {
            "dataset_dir": "runs/macron128",
            "eval_every": 500,
            "num_eval_frames": 0,
            "checkpoint_every": 250,
        },
    }
