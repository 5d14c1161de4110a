"""A subject's expression basis: head-pose-free landmark expressions in a compact PCA basis.

The audio-to-expression model (issue 20; `vpgc_jax.models.audio`) predicts, per video frame, the
subject's *expression*: the frame's canonical shape minus the subject's mean canonical shape, head
pose removed (`vpgc_jax.retarget.Decomposition`, pure 2-D similarity alignment on the stable
points). Expressions live in the principal components of the training split's expressions
(`ExpressionBasis.fit`), as coefficients normalised to unit variance over the training frames.
Predicted shapes are placed in a frame by a head pose: the subject's own track, a still (mean)
pose, or another video's relative pose (`place`).

Canonical units: the stable points' RMS radius is 1 (`retarget.normalise_shape`); at 512 px one
unit is about 40 px for the sample clips' crops.
"""

import dataclasses

import numpy as np

from vpgc_jax import retarget

# iBUG 68-point brows (17-26) and eyes (36-47).
UPPER_FACE = np.r_[17:27, 36:48]  # brows and eyes: blinks and brow raises, not driven by speech


@dataclasses.dataclass(frozen=True)
class ExpressionBasis:
    """The subject's canonical frame and expression basis (fitted on its training landmarks).

    Attributes:
      reference: [68, 2] float64 canonical reference shape frames are aligned to.
      mean_shape: [68, 2] float64 mean canonical shape of the training frames.
      mean_a, mean_b: complex, the mean similarity transform (canonical -> crop pixels).
      components: [K, 136] float64 orthonormal principal directions of the flattened expressions.
      scales: [K] float64 standard deviation of each coefficient over the training frames.
      size: crop side in pixels of the dataset the basis was fitted on.
    """

    reference: np.ndarray
    mean_shape: np.ndarray
    mean_a: complex
    mean_b: complex
    components: np.ndarray
    scales: np.ndarray
    size: int

    @property
    def num_components(self) -> int:
        return len(self.scales)

    @property
    def decomposition(self) -> retarget.Decomposition:
        """A `retarget.Decomposition` carrying the reference, mean shape and mean transform."""
        mean = retarget.Similarity(np.asarray(self.mean_a), np.asarray(self.mean_b))
        empty = np.zeros((0, 68, 2))
        return retarget.Decomposition(
            self.reference,
            empty,
            retarget.Similarity(np.zeros(0), np.zeros(0)),
            self.mean_shape,
            mean,
        )

    @classmethod
    def fit(
        cls,
        landmarks: np.ndarray,
        valid: np.ndarray | None,
        size: int,
        variance: float = 0.98,
        max_components: int = 24,
    ) -> "ExpressionBasis":
        """Fits the basis on a training track.

        Args:
          landmarks: [T, 68, 2] float crop pixels (x, y) of the training split.
          valid: [T] bool, frames with detected (not interpolated) landmarks; None: all.
          size: the crop side in pixels.
          variance: keep the fewest components explaining this fraction of the variance.
          max_components: at most this many components.

        Returns:
          The basis (K >= 1 components).

        Raises:
          ValueError: fewer than 2 valid frames, or landmarks `retarget.decompose` refuses.
        """
        landmarks = np.asarray(landmarks, np.float64)
        keep = np.ones(len(landmarks), bool) if valid is None else np.asarray(valid, bool)
        if keep.sum() < 2:
            raise ValueError("an expression basis needs at least 2 frames with landmarks")
        d = retarget.decompose(landmarks[keep])
        x = d.expressions.reshape(len(d.expressions), -1)  # [T, 136], zero mean
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        explained = np.cumsum(s**2) / max(np.sum(s**2), 1e-12)
        k = int(min(np.searchsorted(explained, variance) + 1, max_components, len(s)))
        components = vt[:k]
        scales = np.maximum((x @ components.T).std(0), 1e-6)
        m = d.mean_transform
        return cls(d.reference, d.mean_shape, complex(m.a), complex(m.b), components, scales, size)

    def track(self, landmarks: np.ndarray) -> retarget.Decomposition:
        """Another track of this subject aligned to the basis (`retarget.decompose` with it)."""
        return retarget.decompose(landmarks, reference=self.decomposition)

    def decode(self, coefficients: np.ndarray) -> np.ndarray:
        """[..., K] normalised coefficients -> [..., 68, 2] float64 canonical expressions."""
        flat = (np.asarray(coefficients, np.float64) * self.scales) @ self.components
        return flat.reshape(flat.shape[:-1] + (68, 2))

    def place(self, expressions: np.ndarray, transforms: retarget.Similarity) -> np.ndarray:
        """Puts mean shape + expressions [T, 68, 2] in the frame by `transforms` [T] (or []):
        [T, 68, 2] float32 crop pixels."""
        return transforms.apply(self.mean_shape + expressions).astype(np.float32)

    def still_pose(self, n: int) -> retarget.Similarity:
        """The mean transform repeated `n` times."""
        return retarget.Similarity(np.full(n, self.mean_a), np.full(n, self.mean_b))

    def save(self, path: str) -> None:
        """Writes the basis as an .npz."""
        np.savez(
            path,
            reference=self.reference,
            mean_shape=self.mean_shape,
            mean_transform=np.array([self.mean_a, self.mean_b]),
            components=self.components,
            scales=self.scales,
            size=self.size,
        )

    @classmethod
    def load(cls, path: str) -> "ExpressionBasis":
        """Reads a basis written by `save`.

        Raises:
          FileNotFoundError: no such file.
        """
        with np.load(path) as z:
            a, b = z["mean_transform"]
            return cls(
                z["reference"],
                z["mean_shape"],
                complex(a),
                complex(b),
                z["components"],
                z["scales"],
                int(z["size"]),
            )
