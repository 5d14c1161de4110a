"""Pure stage-1 loss helpers: hinge GAN losses over scales, VQGAN's adaptive weight, VQ loss.

Reference: ``VQLPIPSWithSeqDiscriminator`` (spec §2.1). Every weight and schedule (disc_start,
disc_factor, codebook_weight) is applied by the trainer's ``loss_fn``.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_list(logits: Array | Sequence[Array]) -> list[Array]:
    return [logits] if isinstance(logits, jax.Array) else list(logits)


def hinge_d_loss(
    logits_real: Array | Sequence[Array], logits_fake: Array | Sequence[Array]
) -> Array:
    """Discriminator hinge loss averaged over scales (spec §2.1).

    0.5 * (mean_s mean(relu(1 - D_s(x))) + mean_s mean(relu(1 + D_s(x_hat)))).

    Args:
      logits_real: one map or a list of per-scale maps [B, h_s, w_s, 1] for real images.
      logits_fake: the same for reconstructions (pass them stop-gradient-ed).

    Returns:
      float32 scalar (multiply by disc_factor in the trainer).
    """
    real = _as_list(logits_real)
    fake = _as_list(logits_fake)
    loss_real = jnp.mean(
        jnp.stack([jnp.mean(jax.nn.relu(1.0 - r.astype(jnp.float32))) for r in real])
    )
    loss_fake = jnp.mean(
        jnp.stack([jnp.mean(jax.nn.relu(1.0 + f.astype(jnp.float32))) for f in fake])
    )
    return 0.5 * (loss_real + loss_fake)


def hinge_g_loss(logits_fake: Array | Sequence[Array]) -> Array:
    """Generator loss -mean_s mean(D_s(x_hat)) (spec §2.1).

    Args:
      logits_fake: one map or a list of per-scale maps [B, h_s, w_s, 1].

    Returns:
      float32 scalar.
    """
    fake = _as_list(logits_fake)
    return -jnp.mean(jnp.stack([jnp.mean(f.astype(jnp.float32)) for f in fake]))


def adaptive_weight(
    nll_grad: Array, g_grad: Array, disc_weight: float = 0.8, max_value: float = 1e4
) -> Array:
    """VQGAN's adaptive GAN weight lambda (Esser et al. 2021 Eq. 7; spec §2.1).

    clamp(||grad_W nll|| / (||grad_W g_loss|| + 1e-4), 0, max_value) * disc_weight, stop-gradient,
    where W is the decoder's last layer: ``params['decoder']['conv_out']['kernel']`` (the
    reference's ``decoder.conv_out.weight``). The reference evaluates it every step, also before
    disc_start.

    Args:
      nll_grad: gradient of the reconstruction loss (L1 + LPIPS) w.r.t. W.
      g_grad: gradient of the generator hinge loss w.r.t. W.
      disc_weight: multiplier (0.8 in the reference config).
      max_value: clamp upper bound.

    Returns:
      float32 scalar.
    """
    n1 = jnp.linalg.norm(nll_grad.astype(jnp.float32).reshape(-1))
    n2 = jnp.linalg.norm(g_grad.astype(jnp.float32).reshape(-1))
    w = jnp.clip(n1 / (n2 + 1e-4), 0.0, max_value) * disc_weight
    return jax.lax.stop_gradient(w)


def vq_weights(beta: float, legacy: bool, codebook_weight: float = 1.0) -> tuple[float, float]:
    """(codebook-term weight, commitment-term weight) of Eq. 2, times ``codebook_weight``.

    Terms as in the codebooks' aux: codebook = mean((sg[z] - z_q)^2), commitment =
    mean((sg[z_q] - z)^2).

    * legacy=False (taming VQGAN): codebook 1, commitment beta. The paper's Eq. 2 has both terms at
      weight 1, i.e. beta = 1 (the default of ``configs/codebook.py``).
    * legacy=True (the reference's taming "legacy" placement, spec §1.5): codebook beta,
      commitment 1; the reference runs beta = 0.25.
    """
    if legacy:
        return codebook_weight * beta, codebook_weight
    return codebook_weight, codebook_weight * beta


def vq_loss(
    aux: dict[str, Array], beta: float, legacy: bool, codebook_weight: float = 1.0
) -> Array:
    """Eq. 2 from a codebook's aux dict, weighted by :func:`vq_weights`.

    Args:
      aux: dict with 'codebook_loss' and 'commitment_loss' (GridCodebook / VanillaCodebook).
      beta: the beta of :func:`vq_weights`.
      legacy: which term beta weights (see :func:`vq_weights`).
      codebook_weight: overall weight of L_VQ in Eq. 3.

    Returns:
      float32 scalar.
    """
    w_codebook, w_commit = vq_weights(beta, legacy, codebook_weight)
    return w_codebook * aux["codebook_loss"] + w_commit * aux["commitment_loss"]
