"""Loss helpers: LPIPS (``vpgc_jax.losses.lpips``) and hinge/adaptive-weight/VQ terms."""

from vpgc_jax.losses.vqgan import adaptive_weight, hinge_d_loss, hinge_g_loss, vq_loss, vq_weights

__all__ = ["adaptive_weight", "hinge_d_loss", "hinge_g_loss", "vq_loss", "vq_weights"]
