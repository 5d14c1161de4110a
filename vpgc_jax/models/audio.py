"""The audio-to-expression network: a frame's log-mel window -> the subject's expression (issue 20).

Beyond the paper (VPGC is driven by landmarks only). As AudioDVP's person-specific
Audio2Expression (Wen et al. 2020, ../shared/seeds/003_*), trained on the subject's own clip, but
predicting 2-D landmark expressions (`vpgc_jax.expression.ExpressionBasis` coefficients) that
then drive the stage-2 model like a video's landmarks.

  mel [B, W, M] -> Dense(width) per mel frame -> `depth` x (Conv1D k=3 stride 2 -> LayerNorm ->
  GELU) over time -> flatten -> Dropout -> Dense(hidden) -> GELU -> Dense(K) -> coefficients [B, K]

W = 41 mel frames (+-0.2 s at 10 ms, `data_prep.audio.WINDOW`), M = 80 bands. The last layer
starts at zero, so an untrained model predicts the mean expression.
"""

import flax.linen as nn
import jax


class AudioToExpression(nn.Module):
    """See the module docstring.

    Attributes:
      num_coefficients: K, the expression basis size.
      window: mel frames the model reads, the centre of a longer input (0: all of it); training
        feeds randomly shifted windows of this length (`vpgc_jax.trainers.audio`).
      width: channels of the temporal convolutions.
      depth: strided convolutions (each halves the time axis, rounding up).
      hidden: width of the hidden dense layer.
      dropout: dropout rate before the dense layers (training only).
    """

    num_coefficients: int
    window: int = 0
    width: int = 128
    depth: int = 3
    hidden: int = 256
    dropout: float = 0.1

    @nn.compact
    def __call__(self, mel: jax.Array, train: bool = False) -> jax.Array:
        """Predicts normalised expression coefficients.

        Args:
          mel: [B, W, M] float32 normalised log-mel windows (W >= `window`).
          train: enables dropout (needs a 'dropout' rng).

        Returns:
          [B, K] float32 coefficients (unit variance over the training frames).
        """
        if self.window and mel.shape[1] > self.window:
            start = (mel.shape[1] - self.window) // 2
            mel = mel[:, start : start + self.window]
        x = nn.Dense(self.width, name="embed")(mel)
        for i in range(self.depth):
            x = nn.Conv(self.width, (3,), strides=(2,), padding="SAME", name=f"conv_{i}")(x)
            x = nn.gelu(nn.LayerNorm(name=f"norm_{i}")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.gelu(nn.Dense(self.hidden, name="hidden")(x))
        return nn.Dense(self.num_coefficients, kernel_init=nn.initializers.zeros, name="out")(x)
