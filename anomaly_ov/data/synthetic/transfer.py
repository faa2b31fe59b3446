"""The "transfer" profile of the synthetic dataset: data that teaches defects in general, not nine classes.

The classic profile (:mod:`~anomaly_ov.data.synthetic.render`: nine colour classes, six high-contrast defect
types) is enough to show that every stage runs, but an expert trained on it does not transfer to real
parts, whose defects are often faint, low-contrast, large discoloured regions or breaks in a structure. This
profile builds its training data the way the zero-shot field does:

* **classes** -- 16 kinds of surface and object (scikit-image textures and photos, printed text,
  procedural tiles, fabric weave, wood grain, matte surfaces, a pill, a screw, a gear, a perforated plate);
  12 for training, 4 held out (:data:`TRANSFER_CATEGORIES`);
* **grey and colour** -- every image is turned grey (a grey camera: clean and defective image alike) with
  probability :data:`GREY_PROBABILITY`, and four classes are grey by nature;
* **defect kinds** -- ten (:data:`TRANSFER_DEFECT_TYPES`): cracks, scratches, holes, stains, missing parts,
  contamination, misprints, dark and bright regions, texture breaks, split into six **training types**
  (:data:`TRAIN_DEFECT_TYPES`, the only ones of the training classes) and four **held-out types**
  (:data:`HELDOUT_DEFECT_TYPES`, one of each family: a line, particles, a tone region, a structure break),
  which only the held-out classes receive, beside the training types: a validation on held-out classes
  *and* held-out defect types;
* **contrast from faint to strong, blended into the texture** -- each defect draws a strength in
  [:data:`MIN_STRENGTH`, 1] and is painted through a soft alpha map, mostly as a multiplicative change of
  the clean pixels (the texture continues under a dark region or a stain).

The mask is exactly the set of pixels the defect changed (``image != clean`` in some channel, after the
grey conversion), and every defect changes at least :data:`MIN_VISIBLE_PIXELS` pixels by at least
:data:`MIN_VISIBLE_CONTRAST` grey levels. Everything is a pure function of the seed.
"""

from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import draw

from anomaly_ov.data.synthetic.render import (
    PARTICLE_COLOURS,
    Canvas,
    Category,
    _finish,
    _polygon,
    _render_gear,
    _render_photo,
    _render_pill,
    _render_screw,
    _render_texture,
    _source,
    _stroke,
    _walk,
    checked_category,
)
from anomaly_ov.data.synthetic.render import (
    _defect_center as render_defect_center,
)

TRANSFER_DEFECT_TYPES: tuple[str, ...] = (
    "crack",
    "hole",
    "stain",
    "dark_region",
    "missing_piece",
    "misprint",
    "scratch",
    "contamination",
    "bright_region",
    "texture_break",
)
TRAIN_DEFECT_TYPES: tuple[str, ...] = TRANSFER_DEFECT_TYPES[:6]
"""The defect types of the training classes (the expert learns from these only)."""
HELDOUT_DEFECT_TYPES: tuple[str, ...] = TRANSFER_DEFECT_TYPES[6:]
"""Defect types no training image has: validation of the transfer to new kinds of defect."""
GREY_PROBABILITY = 0.35
"""Chance that an image is taken by a grey camera (its clean and defective versions alike)."""
MIN_STRENGTH = 0.2
"""The faintest defect paints this fraction of its full change."""
MIN_VISIBLE_CONTRAST = 6
"""Every defect changes at least :data:`MIN_VISIBLE_PIXELS` pixels by at least this many grey levels."""
MIN_VISIBLE_PIXELS = 40


# ----------------------------------------------------------------------------------------------------------
# Clean images of the new classes
# ----------------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, scales: tuple[float, ...]) -> np.ndarray:
    """Zero-mean, unit-variance smooth noise [size, size]: Gaussian-filtered white noise at a few scales."""
    field = np.zeros((size, size), dtype=np.float32)
    for sigma in scales:
        layer = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)).astype(np.float32), sigma * size)
        field += layer / max(float(layer.std()), 1e-6)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _colour(rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    return palette[int(rng.integers(len(palette)))] * rng.uniform(0.92, 1.08, size=3).astype(np.float32)


def _texture_canvas(rng: np.random.Generator, luminance: np.ndarray, colour: np.ndarray) -> Canvas:
    size = luminance.shape[0]
    image = np.clip(luminance, 0, 1.2)[..., None] * colour
    underlayer = np.full_like(image, 40.0)
    return _finish(rng, image, underlayer, np.ones((size, size), dtype=bool))


def _render_tiles(rng: np.random.Generator, size: int) -> Canvas:
    count = int(rng.integers(3, 6))
    pitch = size / count
    grout = max(2.0, pitch * rng.uniform(0.05, 0.09))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    oy, ox = rng.uniform(0, pitch, size=2)
    row, col = np.floor((yy + oy) / pitch).astype(int), np.floor((xx + ox) / pitch).astype(int)
    in_tile = (np.mod(yy + oy, pitch) > grout) & (np.mod(xx + ox, pitch) > grout)
    shades = rng.uniform(0.9, 1.05, size=(count + 2, count + 2)).astype(np.float32)
    glaze = 0.04 * _smooth_noise(rng, size, (0.01, 0.05))
    luminance = np.where(in_tile, shades[row, col] + glaze, 0.45 + 0.03 * glaze)
    palette = np.asarray([[225, 222, 214], [180, 200, 215], [205, 170, 140], [150, 160, 150]], np.float32)
    return _texture_canvas(rng, luminance, _colour(rng, palette))


def _render_weave(rng: np.random.Generator, size: int) -> Canvas:
    pitch = rng.uniform(7, 12)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.deg2rad(rng.uniform(-4, 4))
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    warp_on_top = (np.floor(u / pitch) + np.floor(v / pitch)) % 2 == 0
    across_warp = np.abs(np.cos(np.pi * u / pitch))  # each thread is brightest along its middle
    across_weft = np.abs(np.cos(np.pi * v / pitch))
    luminance = 0.55 + 0.4 * np.where(warp_on_top, across_weft, across_warp) ** 0.6
    luminance += 0.03 * _smooth_noise(rng, size, (0.005,))
    palette = np.asarray([[200, 190, 170], [90, 110, 160], [160, 60, 60], [120, 140, 110]], np.float32)
    return _texture_canvas(rng, luminance, _colour(rng, palette))


def _render_wood(rng: np.random.Generator, size: int) -> Canvas:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    warp = 0.08 * _smooth_noise(rng, size, (0.15,)) + 0.01 * _smooth_noise(rng, size, (0.02,))
    rings = np.sin(2 * np.pi * (rng.uniform(6, 12) * (yy + 0.3 * xx * rng.uniform(-0.3, 0.3)) + 8 * warp))
    luminance = 0.75 + 0.12 * rings + 0.04 * _smooth_noise(rng, size, (0.004,))
    palette = np.asarray([[190, 140, 90], [150, 105, 65], [215, 180, 135]], np.float32)
    return _texture_canvas(rng, luminance, _colour(rng, palette))


def _render_matte(rng: np.random.Generator, size: int) -> Canvas:
    luminance = (
        0.7 + 0.05 * _smooth_noise(rng, size, (0.08, 0.02)) + 0.03 * _smooth_noise(rng, size, (0.003,))
    )
    palette = np.asarray([[200, 200, 200], [170, 175, 185], [120, 125, 130]], np.float32)
    return _texture_canvas(rng, luminance, _colour(rng, palette))


def _render_plate(rng: np.random.Generator, size: int) -> Canvas:
    pitch = rng.uniform(size / 9, size / 6)
    radius = pitch * rng.uniform(0.22, 0.32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    oy, ox = rng.uniform(0, pitch, size=2)
    dy = np.mod(yy + oy, pitch) - pitch / 2
    dx = np.mod(xx + ox, pitch) - pitch / 2
    holes = np.hypot(dy, dx) < radius
    brushed = ndimage.gaussian_filter1d(rng.normal(0, 1, (size, size)).astype(np.float32), size / 12, axis=1)
    metal = 0.78 + 0.35 * brushed / max(float(brushed.std()), 1e-6) * 0.1
    luminance = np.where(holes, 0.18, metal)
    return _texture_canvas(rng, luminance, np.asarray([205, 205, 210], np.float32))


def _render_print(rng: np.random.Generator, size: int) -> Canvas:
    # printed text on paper (a label): a crop of scikit-image's "text" page, tinted as ink on paper
    page = _source("text").astype(np.float32) / 255.0
    height, width = page.shape
    crop = int(min(height, width) * rng.uniform(0.7, 1.0))
    y0, x0 = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
    patch = Image.fromarray(np.uint8(255 * page[y0 : y0 + crop, x0 : x0 + crop]))
    luminance = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255.0
    palette = np.asarray([[235, 232, 220], [240, 240, 240], [230, 220, 190]], np.float32)
    return _texture_canvas(rng, 0.25 + 0.75 * luminance, _colour(rng, palette))


TRANSFER_CATEGORIES: tuple[Category, ...] = (
    Category("brick", "texture", "brick wall", TRAIN_DEFECT_TYPES, False,
             partial(_render_texture, source="brick", tint=(1.0, 0.78, 0.62))),
    Category("gravel", "texture", "gravel surface", TRAIN_DEFECT_TYPES, False,
             partial(_render_texture, source="gravel", tint=(0.95, 0.92, 0.85))),
    Category("moon", "texture", "cratered grey surface", TRAIN_DEFECT_TYPES, False,
             partial(_render_texture, source="moon", tint=(1.0, 1.0, 1.0))),
    Category("coffee", "photo", "coffee cup", TRAIN_DEFECT_TYPES, False,
             partial(_render_photo, source="coffee", center=(160, 290), half=150)),
    Category("coins", "photo", "tray of coins", TRAIN_DEFECT_TYPES, False,
             partial(_render_photo, source="coins", center=(151, 192), half=120)),
    Category("print", "procedural", "printed label", TRAIN_DEFECT_TYPES, False, _render_print),
    Category("tiles", "procedural", "tiled surface", TRAIN_DEFECT_TYPES, False, _render_tiles),
    Category("weave", "procedural", "woven fabric", TRAIN_DEFECT_TYPES, False, _render_weave),
    Category("wood", "procedural", "wooden board", TRAIN_DEFECT_TYPES, False, _render_wood),
    Category("matte", "procedural", "matte coated surface", TRAIN_DEFECT_TYPES, False, _render_matte),
    Category("pill", "procedural", "pill", TRAIN_DEFECT_TYPES, False, _render_pill),
    Category("screw", "procedural", "screw", TRAIN_DEFECT_TYPES, False, _render_screw),
    Category("grass", "texture", "lawn", TRANSFER_DEFECT_TYPES, True,
             partial(_render_texture, source="grass", tint=(0.7, 1.0, 0.55))),
    Category("rocket", "photo", "rocket on its launch pad", TRANSFER_DEFECT_TYPES, True,
             partial(_render_photo, source="rocket", center=(250, 322), half=170)),
    Category("gear", "procedural", "gear", TRANSFER_DEFECT_TYPES, True, _render_gear),
    Category("plate", "procedural", "perforated metal plate", TRANSFER_DEFECT_TYPES, True, _render_plate),
)  # fmt: skip
"""The classes of the transfer profile: 12 for training (training defect types only), 4 held out (all)."""
_BY_NAME: dict[str, Category] = {category.name: category for category in TRANSFER_CATEGORIES}


# ----------------------------------------------------------------------------------------------------------
# Defects: each returns (alpha [H, W] in [0, 1], target [H, W, 3]); the image becomes
# clean + strength * alpha * (target - clean)
# ----------------------------------------------------------------------------------------------------------


def _soft(region: np.ndarray, sigma: float) -> np.ndarray:
    """A soft alpha map of a region: 1 inside, a Gaussian fall-off of ``sigma`` pixels at its edge."""
    alpha = region.astype(np.float32)
    if sigma > 0:
        alpha = np.maximum(alpha, ndimage.gaussian_filter(alpha, sigma))
    alpha[alpha < 0.05] = 0.0
    return alpha


def _blob(rng: np.random.Generator, center: np.ndarray, size: int, radius: float, lobes: int) -> np.ndarray:
    region = np.zeros((size, size), dtype=bool)
    for _ in range(lobes):
        cy, cx = center + rng.normal(0, 0.5 * radius, size=2)
        radii = radius * rng.uniform(0.5, 1.0, size=2)
        rows, cols = draw.ellipse(cy, cx, radii[0], radii[1], (size, size), rotation=rng.uniform(0, np.pi))
        region[rows, cols] = True
    return region


def _crack(rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    trunk = _walk(rng, center, rng.uniform(0.25, 0.6) * size, 0.45, steps=24)
    region = _stroke(trunk, int(rng.integers(1, 3)), size)
    for _ in range(int(rng.integers(1, 4))):
        fork = trunk[int(rng.integers(2, len(trunk) - 2))]
        region |= _stroke(_walk(rng, fork, rng.uniform(0.08, 0.2) * size, 0.5, steps=8), 1, size)
    return _soft(region, rng.uniform(0.0, 0.8)), canvas.image * rng.uniform(0.05, 0.3)


def _scratch(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    region = _stroke(_walk(rng, center, rng.uniform(0.25, 0.6) * size, 0.05), int(rng.integers(1, 3)), size)
    tone = 245.0 if rng.random() < 0.6 else 25.0
    return _soft(region, rng.uniform(0.0, 0.6)), np.full_like(canvas.image, tone)


def _hole(rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    radius = rng.uniform(0.025, 0.08) * size
    rows, cols = draw.ellipse(center[0], center[1], radius, radius * rng.uniform(0.6, 1.0), (size, size),
                              rotation=rng.uniform(0, np.pi))  # fmt: skip
    cavity = np.zeros((size, size), dtype=bool)
    cavity[rows, cols] = True
    rim = ndimage.binary_dilation(cavity, iterations=2) & ~cavity
    target = np.where(
        cavity[..., None], 15.0 + rng.normal(0, 3, canvas.image.shape), canvas.image * 1.35 + 30
    )
    return _soft(cavity | rim, 0.7), target


def _stain(rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    region = _blob(rng, center, size, rng.uniform(0.04, 0.12) * size, int(rng.integers(2, 6)))
    tints = np.asarray(
        [[0.55, 0.4, 0.2], [0.8, 0.5, 0.3], [0.35, 0.35, 0.35], [1.1, 1.0, 0.45], [0.5, 0.6, 1.0]]
    )
    tint = tints[int(rng.integers(len(tints)))].astype(np.float32)
    return _soft(region, rng.uniform(1.5, 5.0)), canvas.image * tint


def _dark_region(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < 0.5:  # a part cut off by a straight edge (a dead area, a shadowed or burnt part)
        angle = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(0.15, 0.4) * size
        region = (yy - center[0]) * np.sin(angle) + (xx - center[1]) * np.cos(angle) > -offset * 0.2
        region &= np.hypot(yy - center[0], xx - center[1]) < offset * 1.6
    else:
        region = _blob(rng, center, size, rng.uniform(0.08, 0.22) * size, int(rng.integers(1, 4)))
    return _soft(region, rng.uniform(1.0, 6.0)), canvas.image * rng.uniform(0.15, 0.55)


def _bright_region(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    region = _blob(rng, center, size, rng.uniform(0.06, 0.2) * size, int(rng.integers(1, 4)))
    return _soft(region, rng.uniform(1.0, 6.0)), canvas.image * rng.uniform(1.3, 1.8) + rng.uniform(20, 60)


def _missing_piece(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    region = _polygon(rng, center, size, int(rng.integers(5, 9)), (0.05, 0.14))
    return _soft(region, 0.0), canvas.background


def _contamination(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    region = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(3, 12))):
        cy, cx = center + rng.normal(0, 0.05 * size, size=2)
        rows, cols = draw.disk((cy, cx), rng.uniform(1.0, 1.5 + 0.015 * size), shape=(size, size))
        region[rows, cols] = True
    if rng.random() < 0.5:  # a fibre among the particles
        region |= _stroke(_walk(rng, center, rng.uniform(0.1, 0.25) * size, 0.4, steps=10), 1, size)
    colour = PARTICLE_COLOURS[int(rng.integers(len(PARTICLE_COLOURS)))]
    target = colour + rng.normal(0, 6, canvas.image.shape)
    return _soft(region, 0.5), target


def _patch_region(rng: np.random.Generator, center: np.ndarray, size: int) -> np.ndarray:
    half = rng.uniform(0.07, 0.16, size=2) * size
    region = np.zeros((size, size), dtype=bool)
    y0, x0 = np.maximum(np.rint(center - half).astype(int), 0)
    y1, x1 = np.minimum(np.rint(center + half).astype(int), size)
    region[y0:y1, x0:x1] = True
    return region


def _misprint(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    # a patch printed out of register: the image there is shifted (and sometimes off-colour)
    shift = rng.integers(3, max(5, size // 10), size=2) * rng.choice([-1, 1], size=2)
    target = np.roll(canvas.image, tuple(int(s) for s in shift), axis=(0, 1))
    if rng.random() < 0.4:
        target = target[..., rng.permutation(3)] * rng.uniform(0.8, 1.2)
    return _soft(_patch_region(rng, center, size), 0.0), target


def _texture_break(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    # the structure breaks: inside a blob the same surface is rotated / mirrored / rescaled
    turned = np.rot90(canvas.image, int(rng.integers(1, 4)), axes=(0, 1))
    if rng.random() < 0.5:
        zoom = rng.uniform(1.6, 2.5)
        crop = int(size / zoom)
        y0, x0 = rng.integers(0, size - crop + 1, size=2)
        patch = Image.fromarray(np.uint8(np.clip(turned[y0 : y0 + crop, x0 : x0 + crop], 0, 255)))
        turned = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR), np.float32)
    region = _blob(rng, center, size, rng.uniform(0.08, 0.18) * size, int(rng.integers(1, 4)))
    return _soft(region, rng.uniform(0.5, 3.0)), turned


_PAINTERS: dict[str, Callable[..., tuple[np.ndarray, ...]]] = {
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "dark_region": _dark_region,
    "missing_piece": _missing_piece,
    "misprint": _misprint,
    "scratch": _scratch,
    "contamination": _contamination,
    "bright_region": _bright_region,
    "texture_break": _texture_break,
}


def _grey(image: np.ndarray) -> np.ndarray:
    luma = image @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(luma[..., None], 3, axis=-1)


def _defect_center(rng: np.random.Generator, canvas: Canvas, defect: str) -> np.ndarray:
    size = canvas.foreground.shape[0]
    if canvas.foreground.all():  # a surface: anywhere but the border (not only on the pixel grid)
        margin = size // 10
        return rng.uniform(margin, size - margin, size=2)
    return render_defect_center(rng, canvas, defect)


def _inject(
    rng: np.random.Generator, canvas: Canvas, defect: str, grey: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    look = _grey if grey else (lambda pixels: pixels)
    clean = np.clip(np.rint(look(canvas.image)), 0, 255).astype(np.uint8)
    strength = rng.uniform(MIN_STRENGTH, 1.0)
    for _ in range(50):
        center = _defect_center(rng, canvas, defect)
        alpha, target = _PAINTERS[defect](rng, canvas, center, clean.shape[0])
        alpha = alpha * canvas.foreground * strength
        painted = canvas.image + alpha[..., None] * (target - canvas.image)
        defective = np.clip(np.rint(look(painted)), 0, 255).astype(np.uint8)
        change = np.abs(defective.astype(np.int16) - clean.astype(np.int16)).max(axis=-1)
        if np.count_nonzero(change >= MIN_VISIBLE_CONTRAST) >= MIN_VISIBLE_PIXELS:
            return clean, defective, np.where(change > 0, 255, 0).astype(np.uint8)
        strength = min(1.0, strength * 1.5)  # too faint to see (or off the object): stronger, elsewhere
    raise RuntimeError(f"could not place a visible {defect!r} defect")  # pragma: no cover


def render_transfer_sample(
    seed: int, category: str, split: str, defect: str | None, index: int, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one sample of the transfer profile (as :func:`~anomaly_ov.data.synthetic.render_sample`).

    Args:
        seed: The dataset seed.
        category: A class name of :data:`TRANSFER_CATEGORIES`.
        split: "train" or "test" (anomalous samples are always "test").
        defect: None for a normal image, else one of the class's defect types.
        index: The image number inside its folder.
        image_size: Side of the image in pixels.

    Returns:
        (clean, image, mask): uint8 [size, size, 3] twice and the mask, uint8 [size, size] in {0, 255},
        255 exactly where ``image`` differs from ``clean``.

    Raises:
        ValueError: An unknown category, split or defect for the category.
    """
    spec = checked_category(_BY_NAME, category, split, defect)
    role = {"train": 0, "test": 1}[split] if defect is None else 2 + TRANSFER_DEFECT_TYPES.index(defect)
    # stream 2 (the classic profile uses 0 for images and 1 for texts): the profiles never share draws
    rng = np.random.default_rng([seed, 2, TRANSFER_CATEGORIES.index(spec), role, index])
    canvas = spec.render(rng, image_size)
    grey = rng.random() < GREY_PROBABILITY
    if defect is None:
        clean = np.clip(np.rint(_grey(canvas.image) if grey else canvas.image), 0, 255).astype(np.uint8)
        return clean, clean.copy(), np.zeros(clean.shape[:2], dtype=np.uint8)
    return _inject(rng, canvas, defect, grey)
