"""Synthetic T1 post-contrast-like head-MRI phantoms with brain-tumour-like lesions.

A patient is an :class:`Anatomy` (head size, ventricles, cortical folding) plus an optional
:class:`Lesion`, both fixed in a head-centred frame (x right, y anterior, z superior, mm), so two
sessions of one patient show the same brain and tumour. A :class:`Session` is one acquisition:
voxel grid, head pose, intensity scale/offset, bias field and noise. :func:`render` turns the
three into an image (float32, arbitrary units) and a lesion mask (uint8) on the session grid.

Contrast (white matter = 1): CSF dark, grey matter darker than white matter, fatty scalp and
diploe bright, cortical bone and air dark, enhancing tissue brighter than white matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

CLASSES: tuple[str, ...] = ("glioma", "meningioma", "pituitary", "notumor")

# Relative T1 post-contrast signal per tissue (white matter = 1).
T1CE: dict[str, float] = {
    "scalp_fat": 1.05, "galea": 0.45, "bone": 0.07, "diploe": 0.55, "csf": 0.22, "grey": 0.68,
    "white": 1.0, "deep_grey": 0.8, "air": 0.02, "gland": 1.1, "oedema": 0.74,
    "necrosis": 0.28, "glioma_solid": 0.85, "glioma_rim": 1.32, "meningioma": 1.3, "dural_tail": 1.2,
    "adenoma": 1.4,
}
# Layers of the head from its surface inwards: (tissue, depth in mm where the layer ends).
LAYERS: tuple[tuple[str, float], ...] = (
    ("scalp_fat", 3.0), ("galea", 4.5), ("bone", 6.0), ("diploe", 8.5), ("bone", 10.0), ("csf", 12.0),
)
INNER_TABLE_MM = 10.0  # depth of the skull's inner table (where meningiomas attach)
CORTEX_MM = 4.0  # mean cortical thickness
IN_PLANE = 96  # rows and columns of every scan
SLICE_THICKNESS_MM = (3.0, 3.5, 4.0, 4.5, 5.0)
SLICE_GAP_MM = (0.0, 0.0, 0.5)
PIXEL_SPACING_MM = (2.0, 2.1, 2.2, 2.3, 2.4, 2.5)
SLAB_MM = 60.0  # target coverage of the axial slab around the lesion level (slice count clipped to MIN/MAX)
MIN_SLICES, MAX_SLICES = 12, 20
LOWER_STRETCH = 1.3  # the head is this much taller below its centre (skull base, neck) than above
CENTRAL_SLICES = 5  # every lesion covers at least MIN_LESION_VOXELS voxels in each of these central slices
MIN_LESION_VOXELS = 8


@dataclass(frozen=True)
class SmoothField:
    """A smooth random field of roughly unit variance: a sum of plane waves in head coordinates."""

    waves: np.ndarray  # (K, 3) wave vectors, rad/mm
    phases: np.ndarray  # (K,)

    @classmethod
    def sample(cls, rng: np.random.Generator, wavelength_mm: float, terms: int = 10) -> SmoothField:
        """Draw a field whose features are about ``wavelength_mm`` across."""
        directions = rng.normal(size=(terms, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = 2 * np.pi / (wavelength_mm * rng.uniform(0.7, 1.4, size=(terms, 1)))
        phases = rng.uniform(0, 2 * np.pi, terms).astype(np.float32)
        return cls((directions * lengths).astype(np.float32), phases)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Evaluate at head coordinates (arrays of one shape)."""
        out = np.zeros(np.shape(x), dtype=np.float32)
        for (wx, wy, wz), phase in zip(self.waves, self.phases, strict=True):
            out += np.sin(wx * x + wy * y + wz * z + phase)
        return out * np.float32(np.sqrt(2.0 / len(self.phases)))


@dataclass(frozen=True)
class Anatomy:
    """A patient's head: ellipsoid semi-axes (mm), ventricle size, sella position, folding."""

    semi_axes: tuple[float, float, float]
    ventricle_scale: float
    sella: tuple[float, float, float]
    gyri: SmoothField
    sulci: SmoothField


@dataclass(frozen=True)
class Lesion:
    """A tumour in the head frame: kind (a class name), centre and radii (mm), shape and texture fields."""

    kind: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    shape: SmoothField
    texture: SmoothField
    necrosis: float  # glioma: relative radius of the necrotic core (0 = none)


@dataclass(frozen=True)
class Grid:
    """An axial voxel grid in RAS mm: shape (x, y, z), spacing, slice thickness, origin of voxel 0."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    thickness: float
    origin: tuple[float, float, float]

    def affine(self) -> np.ndarray:
        """The 4x4 voxel -> RAS affine (axis-aligned, positive spacing)."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RAS coordinates (mm) of the voxel centres along each axis."""
        return tuple(  # type: ignore[return-value]
            np.float32(o + s * np.arange(n))
            for o, s, n in zip(self.origin, self.spacing, self.shape, strict=True)
        )


@dataclass(frozen=True)
class Session:
    """One acquisition: grid, head pose (head frame -> RAS), intensity scale/offset, noise, bias."""

    grid: Grid
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    scale: float  # signal of white matter
    offset: float  # added to every voxel
    noise: float  # noise standard deviation relative to ``scale``
    bias: np.ndarray  # (9,) coefficients of the quadratic log bias field


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a head: size varies by about +-10 %."""
    size = rng.uniform(0.9, 1.1)
    semi_axes = tuple(float(v) for v in size * np.array([68.0, 86.0, 72.0]) * rng.uniform(0.96, 1.04, 3))
    sella = (0.0, 8.0 * size, -10.0 * size)
    return Anatomy(semi_axes, float(rng.uniform(0.8, 1.4)), sella,  # type: ignore[arg-type]
                   SmoothField.sample(rng, 16.0), SmoothField.sample(rng, 11.0))


def _head_depth(x: np.ndarray, y: np.ndarray, z: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """Depth (mm) of head-frame points below the head surface, measured along the ray from the head centre.

    The head is an ellipsoid above its centre and LOWER_STRETCH times taller below it (skull base, neck).
    """
    a, b, c = anatomy.semi_axes
    height = np.where(z < 0, np.float32(c * LOWER_STRETCH), np.float32(c))
    k = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / height) ** 2)
    rho = np.sqrt(x * x + y * y + z * z)
    return (1 - k) * np.divide(rho, k, out=np.full_like(rho, min(a, b, c)), where=k > 1e-6)


def _depth_on_ray(point: np.ndarray, anatomy: Anatomy) -> float:
    """:func:`_head_depth` of one point."""
    return float(_head_depth(*(np.asarray([v], dtype=np.float32) for v in point), anatomy)[0])


def _lesion_centre(rng: np.random.Generator, kind: str, anatomy: Anatomy, radii: np.ndarray) -> np.ndarray:
    """Where a lesion of this kind sits: intra-axial hemisphere, dural convexity, or the sella."""
    a, b, _ = anatomy.semi_axes
    level = anatomy.sella[2] + rng.uniform(-2.0, 8.0)  # near the sella, like the pituitary lesions
    if kind == "glioma":
        for _ in range(100):
            side = rng.choice([-1, 1])
            centre = np.array([side * rng.uniform(15, 0.45 * a), rng.uniform(-0.35, 0.3) * b, level])
            if _depth_on_ray(centre, anatomy) > radii.max() + 12:
                return centre
        raise RuntimeError("could not place a glioma inside the brain")
    if kind == "meningioma":
        angle = rng.choice([-1, 1]) * np.deg2rad(rng.uniform(50, 180))  # lateral or posterior convexity
        direction = np.array([np.sin(angle), np.cos(angle), 0.0])
        reach = optimize.brentq(
            lambda t: _depth_on_ray(direction * t + [0, 0, level], anatomy) - INNER_TABLE_MM, 1.0, 200.0
        )
        return direction * (reach - 0.5 * radii[:2].mean()) + [0, 0, level]
    sx, sy, sz = anatomy.sella
    return np.array([sx, sy + rng.uniform(-2, 2), sz + rng.uniform(3, 7)])


def sample_lesion(rng: np.random.Generator, kind: str, anatomy: Anatomy) -> Lesion | None:
    """Draw a lesion of class ``kind`` (None for notumor)."""
    if kind not in CLASSES:
        raise ValueError(f"unknown class '{kind}', expected one of {CLASSES}")
    if kind == "notumor":
        return None
    if kind == "glioma":
        radii = rng.uniform(14, 24, 3)
    elif kind == "meningioma":
        radii = rng.uniform(14, 21) * rng.uniform(0.92, 1.08, 3)
    else:
        radii = np.array([rng.uniform(12, 16), rng.uniform(11, 14), rng.uniform(14, 19)])
    centre = _lesion_centre(rng, kind, anatomy, radii)
    necrosis = float(rng.uniform(0.3, 0.55)) if kind == "glioma" and rng.random() < 0.75 else 0.0
    return Lesion(kind, tuple(float(v) for v in centre), tuple(float(v) for v in radii),  # type: ignore[arg-type]
                  SmoothField.sample(rng, 28.0), SmoothField.sample(rng, 9.0), necrosis)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A small head rotation: yaw and pitch up to 8 degrees, roll up to 5."""
    yaw, pitch, roll = np.deg2rad(rng.uniform(-8, 8, 3) * [1, 1, 5 / 8])
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    ry = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
    return rz @ rx @ ry


def sample_session(rng: np.random.Generator, anatomy: Anatomy, lesion: Lesion | None) -> Session:
    """Draw an acquisition whose central axial level passes through the lesion (or a matching level)."""
    thickness = float(rng.choice(SLICE_THICKNESS_MM))
    step = thickness + float(rng.choice(SLICE_GAP_MM))
    pixel = float(rng.choice(PIXEL_SPACING_MM))
    depth = int(np.clip(round(SLAB_MM / step), MIN_SLICES, MAX_SLICES))
    shape = (IN_PLANE, IN_PLANE, depth)
    spacing = (pixel, pixel, step)
    centre = rng.uniform(-10, 10, 3).round(1)  # table position of the slab centre (RAS mm)
    middle = (np.array(shape) - 1) / 2
    origin = tuple(float(v) for v in np.round(centre - middle * np.array(spacing), 3))
    rotation = _rotation(rng)
    if lesion is None:
        anchor = np.array([0.0, 0.0, anatomy.sella[2] + rng.uniform(-2.0, 8.0)])
    else:
        anchor = np.array(lesion.centre)
    translation = centre + np.array([*rng.uniform(-8, 8, 2), 0.0])
    translation[2] = centre[2] - (rotation @ anchor)[2] + rng.uniform(-0.3, 0.3) * step
    return Session(
        grid=Grid(shape, spacing, thickness, origin),  # type: ignore[arg-type]
        rotation=rotation, translation=translation,
        scale=float(np.exp(rng.uniform(np.log(150.0), np.log(1500.0)))),
        offset=float(rng.uniform(0.0, 0.12)),
        noise=float(rng.uniform(0.02, 0.045)),
        bias=rng.normal(0.0, 0.12, 9),
    )


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre, radii) -> np.ndarray:
    """Normalised ellipsoidal radius (< 1 inside)."""
    return np.sqrt(_ellipsoid_squared(x, y, z, centre, radii))


def _ellipsoid_squared(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre, radii) -> np.ndarray:
    """Squared normalised ellipsoidal radius (< 1 inside)."""
    return (((x - centre[0]) * (1 / radii[0])) ** 2 + ((y - centre[1]) * (1 / radii[1])) ** 2
            + ((z - centre[2]) * (1 / radii[2])) ** 2)


def _paint_anatomy(tissue: np.ndarray, x, y, z, depth, anatomy: Anatomy) -> np.ndarray:
    """Fill ``tissue`` (relative signal) with the normal head; returns the white-matter mask."""
    inside = depth > 0
    tissue[inside] = T1CE["white"]
    top = 0.0
    for name, bottom in LAYERS:
        tissue[inside & (depth >= top) & (depth < bottom)] = T1CE[name]
        top = bottom
    shell = inside & (depth >= top) & (depth < top + 2 * CORTEX_MM + 4)
    xs, ys, zs, ds = x[shell], y[shell], z[shell], depth[shell]
    grey = ds < top + CORTEX_MM + 2.5 * anatomy.gyri(xs, ys, zs)
    sulcus = (np.abs(anatomy.sulci(xs, ys, zs)) < 0.18) & grey
    tissue[shell] = np.where(sulcus, T1CE["csf"], np.where(grey, T1CE["grey"], T1CE["white"]))
    brain = depth >= top
    _, sy, sz = anatomy.sella
    fissure = brain & (np.abs(x) < 1.5) & ((z > sz + 12) | (y > 30))
    tissue[fissure] = T1CE["csf"]
    for side in (-1, 1):  # basal ganglia and thalami
        tissue[_ellipsoid_squared(x, y, z, (side * 17, 6, 4), (7, 13, 9)) < 1] = T1CE["deep_grey"]
        tissue[_ellipsoid_squared(x, y, z, (side * 9, -12, 4), (7, 9, 7)) < 1] = T1CE["deep_grey"]
    v = anatomy.ventricle_scale
    for side in (-1, 1):
        tissue[_ellipsoid_squared(x, y, z, (side * 7 * v, -4, 18), (5.5 * v, 20, 8 * v)) < 1] = T1CE["csf"]
    tissue[_ellipsoid_squared(x, y, z, (0, -4, 2), (1.6 * v, 9, 8)) < 1] = T1CE["csf"]
    tissue[_ellipsoid_squared(x, y, z, (0, sy, sz + 5), (11, 9, 6)) < 1] = T1CE["csf"]  # suprasellar cistern
    tissue[_ellipsoid_squared(x, y, z, (0, sy + 10, sz - 20), (20, 30, 16)) < 1] = T1CE["bone"]  # skull base
    tissue[_ellipsoid_squared(x, y, z, (0, sy + 14, sz - 18), (12, 14, 8)) < 1] = T1CE["air"]  # sphenoid
    tissue[_ellipsoid_squared(x, y, z, (0, sy, sz), (5.5, 4.5, 3.5)) < 1] = T1CE["gland"]  # normal pituitary
    return tissue == T1CE["white"]


def _paint_lesion(tissue, x, y, z, depth, white: np.ndarray, lesion: Lesion) -> np.ndarray:
    """Paint the tumour (and its oedema / dural tail) into ``tissue``; returns the lesion mask (bool)."""
    reach = 2.0 * max(lesion.radii)
    near = _ellipsoid_squared(x, y, z, lesion.centre, (reach, reach, reach)) < 1
    xs, ys, zs, ds = x[near], y[near], z[near], depth[near]
    q = _ellipsoid(xs, ys, zs, lesion.centre, lesion.radii)
    shape, texture = lesion.shape(xs, ys, zs), lesion.texture(xs, ys, zs)
    local = tissue[near]
    if lesion.kind == "glioma":
        irregular = q + 0.3 * shape
        mass = (irregular < 1) & (ds > INNER_TABLE_MM + 3)
        oedema = (q / 1.8 + 0.3 * shape < 1) & white[near] & ~mass
        local[oedema] = T1CE["oedema"] + 0.04 * texture[oedema]
        rim = mass & (irregular >= 0.78)
        necrotic = mass & (irregular < lesion.necrosis)
        local[mass] = T1CE["glioma_solid"] + 0.2 * texture[mass]
        local[rim] = T1CE["glioma_rim"] + 0.15 * texture[rim]
        local[necrotic] = T1CE["necrosis"] + 0.05 * texture[necrotic]
    elif lesion.kind == "meningioma":
        mass = (q + 0.05 * shape < 1) & (ds >= INNER_TABLE_MM)
        local[(q >= 1) & (q < 1.12) & (ds >= INNER_TABLE_MM)] = T1CE["csf"]  # CSF cleft: extra-axial
        tail = (ds >= INNER_TABLE_MM) & (ds < INNER_TABLE_MM + 1.5) & (q < 1.7) & ~mass
        local[tail] = T1CE["dural_tail"]
        local[mass] = T1CE["meningioma"] + 0.04 * texture[mass]
    else:
        irregular = q + 0.08 * shape
        mass = (irregular < 1) & (ds > 0)
        local[(irregular >= 1) & (irregular < 1.25)] = T1CE["csf"]  # displaced cistern around the mass
        local[mass] = T1CE["adenoma"] + 0.1 * texture[mass]
    tissue[near] = local
    lesion_mask = np.zeros(tissue.shape, dtype=bool)
    lesion_mask[near] = mass
    return lesion_mask


def _bias_field(grid: Grid, coefficients: np.ndarray) -> np.ndarray:
    """A smooth multiplicative field: exp of a quadratic polynomial over the grid."""
    u, v, w = (np.linspace(-1, 1, n, dtype=np.float32) for n in grid.shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    terms = (u, v, w, u * u, v * v, w * w, u * v, u * w, v * w)
    log_field = sum(np.float32(c) * t for c, t in zip(coefficients, terms, strict=True))
    return np.exp(log_field).astype(np.float32)


def render(anatomy: Anatomy, lesion: Lesion | None, session: Session,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The session's image (float32, shape grid.shape, >= 0) and lesion mask (uint8, 1 = lesion)."""
    grid = session.grid
    ax, ay, az = grid.axes()
    rel = (ax[:, None, None] - np.float32(session.translation[0]),
           ay[None, :, None] - np.float32(session.translation[1]),
           az[None, None, :] - np.float32(session.translation[2]))
    r = session.rotation.astype(np.float32)
    x, y, z = (r[0, i] * rel[0] + r[1, i] * rel[1] + r[2, i] * rel[2] for i in range(3))  # RAS -> head frame
    depth = _head_depth(x, y, z, anatomy)
    tissue = np.zeros(grid.shape, dtype=np.float32)
    white = _paint_anatomy(tissue, x, y, z, depth, anatomy)
    mask = (np.zeros(grid.shape, dtype=bool) if lesion is None
            else _paint_lesion(tissue, x, y, z, depth, white, lesion))
    texture = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), 1.5)
    tissue *= 1 + 0.03 * texture / max(float(texture.std()), 1e-6)
    tissue = ndimage.gaussian_filter(tissue, (0.5, 0.5, 0.35 * grid.thickness / grid.spacing[2]))
    signal = np.float32(session.scale) * tissue * _bias_field(grid, session.bias)
    sigma = np.float32(session.noise * session.scale)
    real = signal + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    image = np.sqrt(real * real + imaginary * imaginary) + np.float32(session.offset * session.scale)
    return image.astype(np.float32), mask.astype(np.uint8)


def central_slices(depth: int, count: int = CENTRAL_SLICES) -> list[int]:
    """The ``count`` axial slice indices nearest the volume's centre (ties to the lower index), sorted."""
    centre = (depth - 1) / 2
    return sorted(sorted(range(depth), key=lambda k: (abs(k - centre), k))[:count])


def lesion_covers_centre(mask: np.ndarray) -> bool:
    """True if the mask has at least MIN_LESION_VOXELS in each of the CENTRAL_SLICES central axial slices."""
    counts = mask[:, :, central_slices(mask.shape[2])].sum(axis=(0, 1))
    return bool(np.all(counts >= MIN_LESION_VOXELS))
