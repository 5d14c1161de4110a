"""Landmark retargeting for cross-reenactment: another person's motion in the target's identity.

The paper swaps DECA shape parameters (Sec. 3.1 of Wang et al. 2023); this does the same in 2-D
landmark space, in pure numpy:

1. Each frame's 68 iBUG landmarks are aligned to a canonical frame by a similarity transform
   (scale, rotation, translation; least squares, never a reflection) fitted on `STABLE_POINTS`,
   against a reference shape found by generalised Procrustes analysis over the track.
2. The canonical shape minus the track's mean canonical shape is the *expression*; the frame's
   transform relative to the track's mean transform (`mean^-1 o transform`, so in face units)
   is the *head pose*.
3. Retargeted landmarks = target mean shape + expression, placed by the target's mean transform
   composed with a relative pose. Canonical shapes have unit size, so the driver's expression and
   pose translation come out scaled to the target's face size.

`mode='expression'` keeps the target's own pose track, `mode='pose'` keeps the target's own
expressions (independent control of pose and expression, as DPE offers: Pang et al. 2023).

Similarity transforms are complex affine maps: a point (x, y) is z = x + iy and maps to a * z + b,
with scale |a|, rotation angle arg(a) (radians, from +x towards +y, i.e. clockwise on screen since
image y points down) and translation b. Composition and inversion are then one line each.

Limits: 2-D landmarks see head yaw and pitch as shape change (a turned face looks narrower), so
yaw and pitch travel with the expression, not with the pose, and the driver's face proportions
leak into the expression at the stable points' scale. The face_alignment backend's 3-D landmarks
(`data_prep --landmarks face_alignment`) could separate them; not done here.
"""

import dataclasses

import numpy as np

# Points that move little with expression: nose bridge and nose bottom (27-35) and the four eye
# corners (36, 39, 42, 45) of the iBUG 68-point scheme. Brows (raised), eyelids (blinks), mouth and
# jaw (speech) are left out.
STABLE_POINTS: tuple[int, ...] = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)
# Outer eye corners: the canonical frame puts the line from 36 to 45 along +x.
EYE_LINE = (36, 45)
MODES = ("both", "expression", "pose")


@dataclasses.dataclass(frozen=True)
class Similarity:
    """A batch of 2-D similarity transforms z -> a * z + b on complex points z = x + iy.

    Attributes:
      a: [...] complex128; scale |a| (> 0), rotation angle arg(a) in radians.
      b: [...] complex128; translation in the output frame's units (pixels for image frames).
    """

    a: np.ndarray
    b: np.ndarray

    @property
    def scale(self) -> np.ndarray:
        """[...] float64 scale factor (output units per input unit)."""
        return np.abs(self.a)

    @property
    def angle(self) -> np.ndarray:
        """[...] float64 rotation in radians, in (-pi, pi]."""
        return np.angle(self.a)

    @property
    def translation(self) -> np.ndarray:
        """[..., 2] float64 (x, y) translation."""
        return np.stack([self.b.real, self.b.imag], axis=-1)

    def matrix(self) -> np.ndarray:
        """[..., 2, 3] float64 affine matrices [[c, -s, tx], [s, c, ty]] (cv2.warpAffine layout)."""
        c, s = self.a.real, self.a.imag
        rows = [np.stack([c, -s, self.b.real], -1), np.stack([s, c, self.b.imag], -1)]
        return np.stack(rows, axis=-2)

    def __getitem__(self, index) -> "Similarity":
        return Similarity(self.a[index], self.b[index])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Maps points.

        Args:
          points: [..., K, 2] float (x, y); the leading dims broadcast against the transform's.

        Returns:
          [..., K, 2] float64.
        """
        return _from_complex(self.a[..., None] * _to_complex(points) + self.b[..., None])

    def inverse(self) -> "Similarity":
        """The inverse transforms (z -> (z - b) / a)."""
        return Similarity(1.0 / self.a, -self.b / self.a)

    def compose(self, other: "Similarity") -> "Similarity":
        """`self o other`: applies `other` first, then `self` (broadcasting)."""
        return Similarity(self.a * other.a, self.a * other.b + self.b)


def _to_complex(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points[..., 0] + 1j * points[..., 1]


def _from_complex(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity transform taking `src` onto `dst` (2-D Umeyama, no reflection).

    Minimises sum_k |dst_k - (a * src_k + b)|^2 over complex a, b: a = <src_c, dst_c> / |src_c|^2
    on centred points, b = mean(dst) - a * mean(src). For 2-D this is Umeyama's (1991) solution
    with the reflection excluded, since multiplying by a complex number is a rotation and a scale.

    Args:
      src: [..., K, 2] float (x, y), K >= 2 points not all equal.
      dst: [..., K, 2] float (x, y), same K; leading dims broadcast.

    Returns:
      `Similarity` with batch shape of the broadcast leading dims.

    Raises:
      ValueError: `src` points coincide (zero spread), so no transform is defined.
    """
    p, q = _to_complex(src), _to_complex(dst)
    p_mean, q_mean = p.mean(-1), q.mean(-1)
    pc, qc = p - p_mean[..., None], q - q_mean[..., None]
    denom = np.sum(np.abs(pc) ** 2, axis=-1)
    if np.any(denom <= 1e-12):
        raise ValueError("fit_similarity: source points coincide; no transform is defined")
    a = np.sum(np.conj(pc) * qc, axis=-1) / denom
    return Similarity(a, q_mean - a * p_mean)


def normalise_shape(shape: np.ndarray) -> np.ndarray:
    """Puts a [68, 2] shape into the canonical frame.

    The stable points' centroid goes to the origin, their RMS distance from it to 1, and the outer
    eye corners (36 -> 45) onto the +x axis.

    Args:
      shape: [68, 2] float (x, y) in any units.

    Returns:
      [68, 2] float64 in canonical units (RMS radius of the stable points = 1).

    Raises:
      ValueError: the stable points coincide.
    """
    z = _to_complex(shape)
    stable = z[list(STABLE_POINTS)]
    zc, sc = z - stable.mean(), stable - stable.mean()
    rms = np.sqrt(np.mean(np.abs(sc) ** 2))
    eye = zc[EYE_LINE[1]] - zc[EYE_LINE[0]]
    if rms <= 1e-9 or abs(eye) <= 1e-9:
        raise ValueError("normalise_shape: degenerate shape (stable points coincide)")
    return _from_complex(zc * (abs(eye) / eye) / rms)


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """A landmark track split into canonical shapes and per-frame transforms.

    Attributes:
      reference: [68, 2] float64 canonical reference shape the frames were aligned to.
      shapes: [T, 68, 2] float64 canonical shapes (`transforms[t]^-1` applied to frame t).
      transforms: `Similarity` [T], canonical -> input pixels (frame t = transforms[t](shapes[t])).
      mean_shape: [68, 2] float64, the mean of `shapes` (of the reference track's shapes when the
        reference was given).
      mean_transform: `Similarity` [], geometric-mean scale, mean angle and mean translation.
    """

    reference: np.ndarray
    shapes: np.ndarray
    transforms: Similarity
    mean_shape: np.ndarray
    mean_transform: Similarity

    @property
    def expressions(self) -> np.ndarray:
        """[T, 68, 2] float64 canonical shape minus the mean shape (canonical units)."""
        return self.shapes - self.mean_shape

    @property
    def poses(self) -> Similarity:
        """`Similarity` [T]: `mean_transform^-1 o transforms[t]` (canonical units, no pixels)."""
        return self.mean_transform.inverse().compose(self.transforms)


def _check_track(name: str, landmarks: np.ndarray) -> np.ndarray:
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2) or len(landmarks) == 0:
        raise ValueError(f"{name} must be [T, 68, 2] with T >= 1, got {landmarks.shape}")
    if not np.all(np.isfinite(landmarks)):
        raise ValueError(f"{name} contains non-finite values")
    return landmarks


def _mean_transform(t: Similarity) -> Similarity:
    """Geometric mean of a (log-scale + i angle, principal branch), arithmetic mean of b."""
    return Similarity(np.exp(np.mean(np.log(t.a))), np.mean(t.b))


def decompose(
    landmarks: np.ndarray, reference: "Decomposition | None" = None, iterations: int = 3
) -> Decomposition:
    """Splits a landmark track into canonical shapes and similarity transforms.

    Without `reference`, the canonical reference shape is found by generalised Procrustes analysis:
    start from the normalised mean of the raw frames, align every frame's stable points to it,
    re-normalise the mean aligned shape, `iterations` times. With `reference` (the decomposition of
    another track of the same person, e.g. the train split) the frames are aligned to its reference
    shape and measured against its mean shape and mean transform.

    Args:
      landmarks: [T, 68, 2] float (x, y) pixels of one person's crop, iBUG 68-point order.
      reference: optional `Decomposition` whose reference, mean shape and mean transform are used.
      iterations: Procrustes iterations when `reference` is None (>= 1).

    Returns:
      `Decomposition`; `shapes[t]` is in canonical units (stable points' RMS radius ~1).

    Raises:
      ValueError: bad shape, non-finite values, or degenerate (coincident) stable points.
    """
    x = _check_track("landmarks", landmarks)
    stable = list(STABLE_POINTS)
    if reference is None:
        ref = normalise_shape(x.mean(0))
        for _ in range(iterations):
            transforms = fit_similarity(ref[stable], x[:, stable])
            ref = normalise_shape(transforms.inverse().apply(x).mean(0))
    else:
        ref = reference.reference
    transforms = fit_similarity(ref[stable], x[:, stable])  # [T] canonical -> pixels
    shapes = transforms.inverse().apply(x)  # [T, 68, 2]
    if reference is None:
        mean_shape, mean_transform = shapes.mean(0), _mean_transform(transforms)
    else:
        mean_shape, mean_transform = reference.mean_shape, reference.mean_transform
    return Decomposition(ref, shapes, transforms, mean_shape, mean_transform)


def _without_rigid_part(expressions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Removes from each [68, 2] expression what a similarity fit on the stable points absorbs.

    The fit is linear in the points, so subtracting its (a - 1, b) part, applied to the reference
    shape, makes `fit_similarity(reference, mean_shape + expression)` exactly the identity when it
    is for `mean_shape`: the placed shape then has exactly the pose that was asked for.
    """
    stable = list(STABLE_POINTS)
    rigid = fit_similarity(reference[stable], reference[stable] + expressions[:, stable])  # [T]
    leak = Similarity(rigid.a - 1.0, rigid.b)  # linear in the expression; 0 when it has no leak
    return expressions - leak.apply(reference)


def retarget(
    driver_landmarks: np.ndarray,
    target_landmarks: np.ndarray,
    mode: str = "both",
    target_track: np.ndarray | None = None,
) -> np.ndarray:
    """Moves the target's face with the driver's expression and/or head pose.

    Per driving frame t, with the driver's expression E_t and relative pose P_t (see
    `Decomposition`), the target's mean shape M and mean transform A, and the target track's own
    frame k = t mod T' (canonical shape C_k, transform A_k, aligned to the target's reference):

      both:        A o P_t (M + E_t)
      expression:  A_k (M + E_t)          the target's own pose track
      pose:        A o P_t (C_k)          the target's own expressions

    The rigid part of E_t that a fit on the target's stable points would absorb is removed first,
    so the output's fitted pose is exactly the requested one.

    Args:
      driver_landmarks: [T, 68, 2] float (x, y) pixels of the driving video's crop.
      target_landmarks: [N, 68, 2] float (x, y) pixels of the target's crop: the reference track
        (e.g. its train split) defining the target's mean shape and pose.
      mode: 'both', 'expression' or 'pose'.
      target_track: [T', 68, 2] float, the target's own track (e.g. its test split) whose pose
        ('expression' mode) or expressions ('pose' mode) are kept, looped or trimmed to T frames;
        None uses `target_landmarks`. Ignored in 'both' mode.

    Returns:
      [T, 68, 2] float32 (x, y) in the target's crop pixels.

    Raises:
      ValueError: unknown mode, a track not [T, 68, 2], non-finite or degenerate landmarks.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    driver = decompose(driver_landmarks)
    target = decompose(target_landmarks)
    expressions = _without_rigid_part(driver.expressions, target.reference)
    if mode == "both":
        placed = target.mean_transform.compose(driver.poses)
        out = placed.apply(target.mean_shape + expressions)
    else:
        own_landmarks = target_landmarks if target_track is None else target_track
        own = decompose(_check_track("target_track", own_landmarks), reference=target)
        k = np.arange(len(driver.shapes)) % len(own.shapes)  # loop or trim to T frames
        if mode == "expression":
            out = own.transforms[k].apply(target.mean_shape + expressions)
        else:
            out = target.mean_transform.compose(driver.poses).apply(own.shapes[k])
    return out.astype(np.float32)
