"""Pure Flax (linen) modules: taming autoencoder, grid/vanilla codebooks, VQModel, PatchGAN."""

from vpgc_jax.models.codebook import GridCodebook, VanillaCodebook, knn_window, square_window
from vpgc_jax.models.discriminator import MultiscaleDiscriminator
from vpgc_jax.models.taming import Decoder, Encoder
from vpgc_jax.models.vqgan import VQModel

__all__ = [
    "Decoder",
    "Encoder",
    "GridCodebook",
    "MultiscaleDiscriminator",
    "VQModel",
    "VanillaCodebook",
    "knn_window",
    "square_window",
]
