"""vpgc_jax: a JAX/Flax reimplementation of VPGC (Wang et al., SIGGRAPH 2023)."""

__version__ = "0.1.0"
