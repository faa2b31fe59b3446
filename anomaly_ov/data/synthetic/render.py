"""Clean images and painted defects of the synthetic dataset, with masks that are exactly the changed pixels.

The "good" images come from photographs and textures that ship with scikit-image (``skimage.data``) and from
procedurally drawn objects (a pill, a screw, a gear), each varied by random crops, small pose changes,
brightness/colour jitter and sensor noise. Defects are painted onto a clean image; every painted pixel differs
from the clean one by at least :data:`MIN_DEFECT_CONTRAST` grey levels in some channel. Everything is a pure
function of the seed.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from itertools import pairwise

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw

DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "missing_piece", "contamination")
MIN_DEFECT_CONTRAST = 24
"""Every defect pixel differs from the clean pixel by at least this much (max over RGB channels)."""


@dataclass(frozen=True)
class Canvas:
    """A clean image and what lies behind its object.

    Attributes:
        image: the clean image, float32 in [0, 255], [height, width, 3].
        foreground: where the inspected object is, bool [height, width] (all True for textures).
        background: what a missing piece reveals, float32 [height, width, 3].

    """

    image: np.ndarray
    foreground: np.ndarray
    background: np.ndarray


@dataclass(frozen=True)
class Category:
    """One object/texture class of the synthetic dataset.

    Attributes:
        name: folder name (the class).
        kind: "texture", "photo" or "procedural".
        noun: how the answers name the object ("brick wall", "pill", ...).
        defects: the defect types this class receives, each one of :data:`DEFECT_TYPES`.
        heldout: True for classes kept out of instruct.json (they form the VisA-D&R-style benchmark).
        render: ``render(rng, size) -> Canvas`` draws one clean sample.

    """

    name: str
    kind: str
    noun: str
    defects: tuple[str, ...]
    heldout: bool
    render: Callable[[np.random.Generator, int], Canvas]


# ----------------------------------------------------------------------------------------------------------
# Clean images
# ----------------------------------------------------------------------------------------------------------


@cache
def _source(name: str) -> np.ndarray:
    return np.asarray(getattr(skdata, name)(), dtype=np.uint8)


def _resize(patch: np.ndarray, size: int) -> np.ndarray:
    resized = Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _finish(rng: np.random.Generator, image: np.ndarray, background: np.ndarray, fg: np.ndarray) -> Canvas:
    # The same lighting and sensor noise apply to the object and to what a missing piece reveals.
    gain = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    noise = rng.normal(0.0, 2.0, size=image.shape).astype(np.float32)

    def light(pixels: np.ndarray) -> np.ndarray:
        return np.clip(pixels * gain + noise, 0, 255).astype(np.float32)

    return Canvas(image=light(image), foreground=fg, background=light(background))


def _render_texture(rng: np.random.Generator, size: int, *, source: str, tint: tuple[float, ...]) -> Canvas:
    gray = _source(source)
    height, width = gray.shape[:2]
    crop = int(rng.uniform(0.4, 0.6) * min(height, width))
    y0, x0 = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
    patch = gray[y0 : y0 + crop, x0 : x0 + crop]
    # Mirrored crops are still normal; rotations are not (brick courses run horizontally).
    patch = patch[:, ::-1] if rng.random() < 0.5 else patch
    patch = patch[::-1] if rng.random() < 0.5 else patch
    image = _resize(patch, size)[..., None] * np.asarray(tint, dtype=np.float32)
    underlayer = np.full_like(image, 55.0)
    return _finish(rng, image, underlayer, np.ones((size, size), dtype=bool))


def _render_photo(
    rng: np.random.Generator, size: int, *, source: str, center: tuple[int, int], half: int
) -> Canvas:
    photo = _source(source)
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=-1)
    height, width = photo.shape[:2]
    half_j = int(half * rng.uniform(0.95, 1.05))
    cy = int(center[0] + rng.uniform(-0.04, 0.04) * half)
    cx = int(center[1] + rng.uniform(-0.04, 0.04) * half)
    y0 = min(max(cy - half_j, 0), height - 2 * half_j)
    x0 = min(max(cx - half_j, 0), width - 2 * half_j)
    image = _resize(photo[y0 : y0 + 2 * half_j, x0 : x0 + 2 * half_j], size)
    underlayer = np.full_like(image, 50.0)
    return _finish(rng, image, underlayer, np.ones((size, size), dtype=bool))


def _object_frame(rng: np.random.Generator, size: int, jitter: float, angle: float) -> tuple[np.ndarray, ...]:
    # (u along the object's axis, v across it, distance to its centre, polar angle) for every pixel
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cy, cx = size / 2 + rng.uniform(-jitter, jitter, size=2) * size
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return u, v, np.hypot(dx, dy), np.arctan2(dy, dx)


def _paint(fg: np.ndarray, colour: np.ndarray, background: np.ndarray) -> np.ndarray:
    return np.where(fg[..., None], colour, background).astype(np.float32)


def _render_pill(rng: np.random.Generator, size: int) -> Canvas:
    u, v, _, _ = _object_frame(rng, size, 0.03, np.deg2rad(rng.uniform(-6, 6)))
    a, b = 0.36 * size * rng.uniform(0.97, 1.03), 0.21 * size * rng.uniform(0.97, 1.03)
    r2 = (u / a) ** 2 + (v / b) ** 2
    fg = r2 <= 1.0
    shade = (1.0 - 0.22 * r2) * np.where(np.abs(u) < 0.012 * size, 0.85, 1.0)  # rounded body, score line
    body = shade[..., None] * np.asarray([228, 224, 212], dtype=np.float32)
    background = np.broadcast_to(np.asarray([60, 64, 72], dtype=np.float32), body.shape)
    return _finish(rng, _paint(fg, body, background), np.array(background), fg)


def _render_screw(rng: np.random.Generator, size: int) -> Canvas:
    u, v, _, _ = _object_frame(rng, size, 0.04, rng.uniform(0, 2 * np.pi))
    thread = np.sin(2 * np.pi * u / (0.045 * size))
    tip, shank_end, head_end = -0.36 * size, 0.2 * size, 0.3 * size
    half_w = 0.06 * size * np.clip((u - tip) / (0.08 * size), 0, 1) * (1 + 0.1 * thread)
    shank = (u >= tip) & (u <= shank_end) & (np.abs(v) <= half_w)
    head = (u > shank_end) & (u <= head_end) & (np.abs(v) <= 0.13 * size)
    fg = shank | head
    across = np.where(head, v / (0.13 * size), v / np.maximum(half_w, 1e-3))
    shade = (0.6 + 0.4 * np.cos(np.clip(across, -1, 1) * np.pi / 2)) * np.where(
        shank, 0.85 + 0.15 * thread, 1.0
    )
    metal = shade[..., None] * np.asarray([150, 150, 156], dtype=np.float32)
    background = np.broadcast_to(np.asarray([205, 205, 198], dtype=np.float32), metal.shape)
    return _finish(rng, _paint(fg, metal, background), np.array(background), fg)


def _render_gear(rng: np.random.Generator, size: int, teeth: int = 12) -> Canvas:
    _, _, radius, polar = _object_frame(rng, size, 0.03, 0.0)
    inner, tooth = 0.3 * size, 0.07 * size
    on_tooth = np.mod(polar * teeth / (2 * np.pi) + rng.uniform(0, 1), 1.0) < 0.5
    fg = (radius <= inner + tooth * on_tooth) & (radius > 0.09 * size)
    shade = (0.8 + 0.2 * (1 - radius / (inner + tooth))) * np.where(
        np.abs(radius - 0.2 * size) < 1.0, 0.8, 1.0
    )
    brass = shade[..., None] * np.asarray([196, 164, 84], dtype=np.float32)
    background = np.broadcast_to(np.asarray([40, 42, 48], dtype=np.float32), brass.shape)
    return _finish(rng, _paint(fg, brass, background), np.array(background), fg)


CATEGORIES: tuple[Category, ...] = (
    Category("brick", "texture", "brick wall", ("crack", "hole", "stain", "missing_piece", "contamination"),
             False, partial(_render_texture, source="brick", tint=(1.0, 0.78, 0.62))),
    Category("gravel", "texture", "gravel surface", ("scratch", "hole", "stain", "contamination", "crack"),
             False, partial(_render_texture, source="gravel", tint=(0.95, 0.92, 0.85))),
    Category("coffee", "photo", "coffee cup", ("crack", "scratch", "stain", "contamination", "hole"),
             False, partial(_render_photo, source="coffee", center=(160, 290), half=150)),
    Category("coins", "photo", "tray of coins",
             ("scratch", "stain", "missing_piece", "contamination", "hole"),
             False, partial(_render_photo, source="coins", center=(151, 192), half=120)),
    Category("pill", "procedural", "pill", ("crack", "scratch", "stain", "contamination", "missing_piece"),
             False, _render_pill),
    Category("screw", "procedural", "screw", ("scratch", "missing_piece", "contamination", "stain", "crack"),
             False, _render_screw),
    Category("grass", "texture", "lawn", ("hole", "stain", "contamination", "missing_piece", "scratch"),
             True, partial(_render_texture, source="grass", tint=(0.7, 1.0, 0.55))),
    Category("rocket", "photo", "rocket on its launch pad",
             ("scratch", "crack", "stain", "contamination", "hole"),
             True, partial(_render_photo, source="rocket", center=(250, 322), half=170)),
    Category("gear", "procedural", "gear", ("missing_piece", "crack", "hole", "contamination", "scratch"),
             True, _render_gear),
)  # fmt: skip
_CATEGORY_BY_NAME: dict[str, Category] = {category.name: category for category in CATEGORIES}


# ----------------------------------------------------------------------------------------------------------
# Defects: each returns the region it paints (bool [H, W]) and the paint (float [H, W, 3], read in the region)
# ----------------------------------------------------------------------------------------------------------


def _stroke(points: np.ndarray, width: int, size: int) -> np.ndarray:
    region = np.zeros((size, size), dtype=bool)
    ends = np.clip(np.rint(points), 0, size - 1).astype(int)
    for (y0, x0), (y1, x1) in pairwise(ends):
        rows, cols = draw.line(y0, x0, y1, x1)
        region[rows, cols] = True
    return ndimage.binary_dilation(region, np.ones((width, width), bool)) if width > 1 else region


def _walk(
    rng: np.random.Generator, start: np.ndarray, length: float, wiggle: float, steps: int = 16
) -> np.ndarray:
    angles = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, wiggle, size=steps))
    moves = np.stack([np.sin(angles), np.cos(angles)], axis=-1) * (length / steps)
    return np.concatenate([start[None], start + np.cumsum(moves, axis=0)])


def _scratch(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    region = _stroke(
        _walk(rng, center, rng.uniform(0.2, 0.5) * size, 0.08), int(rng.integers(1, size // 64 + 2)), size
    )
    tone = 235.0 if rng.random() < 0.7 else 30.0
    return region, 0.35 * canvas.image + 0.65 * tone


def _crack(rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    trunk = _walk(rng, center, rng.uniform(0.2, 0.45) * size, 0.5)
    width = int(rng.integers(1, size // 64 + 2))
    region = _stroke(trunk, width, size)
    for _ in range(int(rng.integers(1, 3))):
        fork = trunk[int(rng.integers(2, len(trunk) - 2))]
        region |= _stroke(_walk(rng, fork, rng.uniform(0.07, 0.15) * size, 0.5, steps=6), 1, size)
    return region, 0.15 * canvas.image + 10.0


def _hole(rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    radius = rng.uniform(0.035, 0.09) * size
    rows, cols = draw.ellipse(
        center[0],
        center[1],
        radius,
        radius * rng.uniform(0.7, 1.0),
        (size, size),
        rotation=rng.uniform(0, np.pi),
    )
    cavity = np.zeros((size, size), dtype=bool)
    cavity[rows, cols] = True
    rim = ndimage.binary_dilation(cavity) & ~cavity  # the torn edge catches the light
    paint = np.where(
        cavity[..., None], 18.0 + rng.normal(0, 3, canvas.image.shape), 0.4 * canvas.image + 126.0
    )
    return cavity | rim, paint


def _stain(rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    region = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(3, 6))):
        cy, cx = center + rng.normal(0, 0.04 * size, size=2)
        radii = rng.uniform(0.03, 0.08, size=2) * size
        rows, cols = draw.ellipse(cy, cx, radii[0], radii[1], (size, size), rotation=rng.uniform(0, np.pi))
        region[rows, cols] = True
    palette = np.asarray(
        [[110, 70, 30], [150, 70, 30], [45, 40, 40], [200, 180, 60], [60, 80, 150]], np.float32
    )
    alpha = rng.uniform(0.55, 0.8)
    return region, (1 - alpha) * canvas.image + alpha * palette[int(rng.integers(len(palette)))]


def _polygon(
    rng: np.random.Generator, center: np.ndarray, size: int, corners: int, radius: tuple[float, float]
) -> np.ndarray:
    """A random star-shaped polygon around ``center``: ``corners`` radii drawn in ``radius`` x ``size``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=corners))
    radii = rng.uniform(*radius, size=corners) * size
    rows, cols = draw.polygon(
        center[0] + radii * np.sin(angles), center[1] + radii * np.cos(angles), (size, size)
    )
    region = np.zeros((size, size), dtype=bool)
    region[rows, cols] = True
    return region


def _missing_piece(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    return _polygon(rng, center, size, int(rng.integers(5, 8)), (0.06, 0.14)), canvas.background


PARTICLE_COLOURS = np.asarray(
    [[20, 20, 20], [245, 245, 240], [40, 70, 170], [170, 40, 30], [50, 140, 60]], np.float32
)
"""Colours of contamination particles (dark dust, white flakes, blue, red and green fibres)."""


def _contamination(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    region = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = center + rng.normal(0, 0.05 * size, size=2)
        rows, cols = draw.disk((cy, cx), rng.uniform(0.8, 1.2 + 0.02 * size), shape=(size, size))
        region[rows, cols] = True
    if rng.random() < 0.4:  # a fibre among the particles
        region |= _stroke(_walk(rng, center, rng.uniform(0.1, 0.2) * size, 0.3, steps=8), 1, size)
    colour = PARTICLE_COLOURS[int(rng.integers(len(PARTICLE_COLOURS)))]
    return region, colour + rng.normal(0, 6, canvas.image.shape)


_DEFECT_PAINTERS: dict[str, Callable[..., tuple[np.ndarray, ...]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "missing_piece": _missing_piece,
    "contamination": _contamination,
}


def _defect_center(rng: np.random.Generator, canvas: Canvas, defect: str) -> np.ndarray:
    fg = canvas.foreground
    size = fg.shape[0]
    if fg.all():
        candidates = fg
    elif defect == "missing_piece":  # an object loses a piece at its outline
        candidates = fg & ~ndimage.binary_erosion(fg)
    else:
        candidates = ndimage.binary_erosion(fg, iterations=max(1, size // 32))
        candidates = candidates if candidates.any() else fg
    spots = np.argwhere(candidates)
    return spots[int(rng.integers(len(spots)))].astype(np.float64)


def _inject(
    rng: np.random.Generator, canvas: Canvas, defect: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clean = np.clip(np.rint(canvas.image), 0, 255).astype(np.uint8)
    size = clean.shape[0]
    min_pixels = max(6, int(0.002 * size * size))
    for _ in range(50):
        center = _defect_center(rng, canvas, defect)
        region, paint = _DEFECT_PAINTERS[defect](rng, canvas, center, size)
        region &= canvas.foreground
        if region.sum() >= min_pixels:
            break
    else:  # pragma: no cover - the painters' sizes make this unreachable for the built-in categories
        raise RuntimeError(f"could not place a {defect!r} defect of at least {min_pixels} pixels")
    paint = np.clip(np.rint(paint), 0, 255).astype(np.int16)
    # Where the paint is too close to the original, push it away so the mask is exactly the changed pixels
    # and every defect pixel is visible: a channel below 128 exists when the mean is below 128 (and vice
    # versa), so that channel moves by the full 2 * MIN_DEFECT_CONTRAST without clipping.
    weak = region & (np.abs(paint - clean).max(axis=-1) < MIN_DEFECT_CONTRAST)
    push = np.where(clean.mean(axis=-1, keepdims=True) < 128, 2, -2) * MIN_DEFECT_CONTRAST
    paint = np.where(weak[..., None], np.clip(clean.astype(np.int16) + push, 0, 255), paint)
    defective = np.where(region[..., None], paint, clean).astype(np.uint8)
    return clean, defective, region.astype(np.uint8) * 255


def role_code(split: str, defect: str | None) -> int:
    """Number of a sample's role (normal train, normal test, each defect type) in its random-stream seed."""
    if defect is None:
        return {"train": 0, "test": 1}[split]
    return 2 + DEFECT_TYPES.index(defect)


def checked_category(by_name: dict[str, Category], category: str, split: str, defect: str | None) -> Category:
    """The class ``category`` of ``by_name``, after checking that it has the sample (split, defect).

    Raises:
        ValueError: an unknown category, split or defect for the category.

    """
    if category not in by_name:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(by_name)}")
    spec = by_name[category]
    if split not in ("train", "test") or (defect is not None and split != "test"):
        raise ValueError(f"split must be 'train' or 'test' (anomalous samples are 'test'), got {split!r}")
    if defect is not None and defect not in spec.defects:
        raise ValueError(f"category {category!r} has defects {spec.defects}, not {defect!r}")
    return spec


def render_sample(
    seed: int, category: str, split: str, defect: str | None, index: int, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one sample exactly as :func:`generate_synthetic` writes it.

    Args:
        seed: the dataset seed.
        category: a class name from :data:`CATEGORIES`.
        split: "train" or "test" (anomalous samples are always "test").
        defect: None for a normal image, else one of the class's defect types.
        index: the image number inside its folder.
        image_size: side of the image in pixels.

    Returns:
        (clean, image, mask): the clean image and the written image, uint8 [size, size, 3], and the mask,
        uint8 [size, size] in {0, 255}. For a normal image ``image`` equals ``clean`` and the mask is empty;
        for an anomalous one ``mask`` is 255 exactly where ``image`` differs from ``clean``.

    Raises:
        ValueError: an unknown category, split or defect for the category.

    """
    spec = checked_category(_CATEGORY_BY_NAME, category, split, defect)
    rng = np.random.default_rng([seed, 0, CATEGORIES.index(spec), role_code(split, defect), index])
    canvas = spec.render(rng, image_size)
    if defect is None:
        clean = np.clip(np.rint(canvas.image), 0, 255).astype(np.uint8)
        return clean, clean.copy(), np.zeros(clean.shape[:2], dtype=np.uint8)
    return _inject(rng, canvas, defect)
