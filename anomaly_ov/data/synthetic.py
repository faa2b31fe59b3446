r"""The embedded default dataset: synthetic industrial-style images with exactly known defects.

Nothing is downloaded: the "good" images come from photographs and textures that ship with scikit-image
(``skimage.data``) and from procedurally drawn objects (a pill, a screw, a gear), each varied by random
crops, small pose changes, brightness/colour jitter and sensor noise. Defects are painted onto a clean
image, and the ground-truth mask is *exactly* the set of pixels the defect changed (every painted pixel
differs from the clean one by at least :data:`MIN_DEFECT_CONTRAST` grey levels in some channel), so pixel
metrics computed on this data are exact. Everything is a pure function of the seed: the same seed writes
byte-identical files.

Layout written by :func:`generate_synthetic` (all paths relative to the output root)::

    mvtec/<class>/train/good/NNN.png                 normal training images (MVTec AD layout)
    mvtec/<class>/test/good/NNN.png                  normal test images (no ground truth, MVTec convention)
    mvtec/<class>/test/<defect>/NNN.png              anomalous test images
    mvtec/<class>/ground_truth/<defect>/NNN_mask.png 0/255 uint8 L-mode masks, same size as the image
    instruct.json          Anomaly-Instruct-style records over the TRAIN classes (train/good and test images):
                           {"id", "image": "mvtec/<class>/...", "conversations": [{"from": "human",
                           "value": "<image>\n..."}, {"from": "gpt", "value": ...}, ...], "anomaly": bool,
                           "class": str, "defect": str | None}
    visa_dr/test_data.json VisA-D&R-style detection file over the HELD-OUT classes' test images:
                           [{"image": "mvtec/<class>/test/...", "anomaly": bool}, ...]
    visa_dr/visa_dr.json   VisA-D&R-style reasoning file, anomalous held-out images only:
                           [{"image", "class", "defect", "questions": [q1, .., q4], "answers": [a1, .., a4]}]
                           q1-q3 are low-level (is there an anomaly / its type / its location), q4 is a
                           complex-reasoning question (consequence and action). The questions carry no
                           ``<image>`` token: the evaluator puts the image before the first question and asks
                           them as one multi-turn conversation. ``answers[i]`` is the reference for
                           ``questions[i]``.
    meta.json              seed, scale, image size, categories (kind, noun, defects, split), defect types,
                           per-class counts.

The class of every record is the second component of its image path, as in VisA-D&R.
"""

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw

DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "missing_piece", "contamination")
MIN_DEFECT_CONTRAST = 24
"""Every defect pixel differs from the clean pixel by at least this much (max over RGB channels)."""

OWNED_ENTRIES: tuple[str, ...] = ("mvtec", "visa_dr", "instruct.json", "meta.json")
"""What the generator writes under its root; ``overwrite=True`` deletes exactly these."""

DETECTION_PROMPT = "Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."

# how each defect is named, what it looks like, and why it matters (the complex-reasoning reference);
# "{noun}" is the object's noun. Contamination is a mass noun, hence no article.
_DEFECT_TEXT: dict[str, tuple[str, str, str]] = {
    "scratch": (
        "a scratch",
        "a thin line scraped across the surface",
        "A scratch is mostly cosmetic, but it can hide deeper damage and lowers the quality of the {noun}.",
    ),
    "crack": (
        "a crack",
        "a dark jagged fracture line",
        "A crack weakens the material and can grow until the {noun} breaks.",
    ),
    "hole": (
        "a hole",
        "a dark round cavity punched into the surface",
        "A hole breaks the surface, so the {noun} can leak or lose strength around it.",
    ),
    "stain": (
        "a stain",
        "a discoloured blotch on the surface",
        "A stain points to a spill or a process fault and spoils the appearance of the {noun}.",
    ),
    "missing_piece": (
        "a missing piece",
        "a chunk broken off, exposing what lies behind it",
        "A missing piece leaves the {noun} incomplete, so it may not fit or work as intended.",
    ),
    "contamination": (
        "contamination",
        "small foreign particles or fibres stuck to the surface",
        "Foreign material can spread to other parts or interfere with how the {noun} is used.",
    ),
}


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


@dataclass(frozen=True)
class Scale:
    """How much to generate per class.

    Attributes:
        image_size: side of the square images in pixels.
        train_good: normal training images per class.
        test_good: normal test images per class.
        anomalous: anomalous test images per class (spread round-robin over the class's defect types).

    """

    image_size: int
    train_good: int
    test_good: int
    anomalous: int


SCALES: dict[str, Scale] = {
    "small": Scale(image_size=64, train_good=4, test_good=2, anomalous=5),
    "default": Scale(image_size=128, train_good=20, test_good=8, anomalous=12),
}


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`generate_synthetic` wrote the dataset.

    Attributes:
        root: the output root.
        mvtec_root: ``root / "mvtec"`` (MVTec AD layout, all classes).
        instruct_json: instruction records over the train classes.
        test_data_json: VisA-D&R-style detection file over the held-out classes.
        visa_dr_json: VisA-D&R-style reasoning file over the held-out classes.
        meta_json: generation settings and counts.
        train_categories: classes present in instruct.json.
        heldout_categories: classes only in the benchmark files.
        image_size: side of every image in pixels.

    """

    root: Path
    mvtec_root: Path
    instruct_json: Path
    test_data_json: Path
    visa_dr_json: Path
    meta_json: Path
    train_categories: tuple[str, ...]
    heldout_categories: tuple[str, ...]
    image_size: int


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


def _missing_piece(
    rng: np.random.Generator, canvas: Canvas, center: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    corners = int(rng.integers(5, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=corners))
    radii = rng.uniform(0.06, 0.14, size=corners) * size
    rows, cols = draw.polygon(
        center[0] + radii * np.sin(angles), center[1] + radii * np.cos(angles), (size, size)
    )
    region = np.zeros((size, size), dtype=bool)
    region[rows, cols] = True
    return region, canvas.background


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
    palette = np.asarray(
        [[20, 20, 20], [245, 245, 240], [40, 70, 170], [170, 40, 30], [50, 140, 60]], np.float32
    )
    colour = palette[int(rng.integers(len(palette)))]
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


def _role_code(split: str, defect: str | None) -> int:
    if defect is None:
        return {"train": 0, "test": 1}[split]
    return 2 + DEFECT_TYPES.index(defect)


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
    if category not in _CATEGORY_BY_NAME:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(_CATEGORY_BY_NAME)}")
    spec = _CATEGORY_BY_NAME[category]
    if split not in ("train", "test") or (defect is not None and split != "test"):
        raise ValueError(f"split must be 'train' or 'test' (anomalous samples are 'test'), got {split!r}")
    if defect is not None and defect not in spec.defects:
        raise ValueError(f"category {category!r} has defects {spec.defects}, not {defect!r}")
    rng = np.random.default_rng([seed, 0, CATEGORIES.index(spec), _role_code(split, defect), index])
    canvas = spec.render(rng, image_size)
    if defect is None:
        clean = np.clip(np.rint(canvas.image), 0, 255).astype(np.uint8)
        return clean, clean.copy(), np.zeros(clean.shape[:2], dtype=np.uint8)
    return _inject(rng, canvas, defect)


# ----------------------------------------------------------------------------------------------------------
# Text: locations, instruction conversations, benchmark questions
# ----------------------------------------------------------------------------------------------------------

_LOCATIONS = (
    ("upper-left part", "upper-middle part", "upper-right part"),
    ("middle-left part", "center", "middle-right part"),
    ("lower-left part", "lower-middle part", "lower-right part"),
)


def describe_location(mask: np.ndarray) -> str:
    """Name the cell of a 3x3 grid that holds the centroid of a mask ("upper-left part", "center", ...).

    Args:
        mask: [height, width], non-zero on the defect.

    Raises:
        ValueError: the mask is empty.

    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("describe_location needs a non-empty mask")
    height, width = mask.shape
    row = min(int(3 * (rows.mean() + 0.5) / height), 2)
    col = min(int(3 * (cols.mean() + 0.5) / width), 2)
    return _LOCATIONS[row][col]


def _describe_size(mask: np.ndarray) -> str:
    fraction = float(np.count_nonzero(mask)) / mask.size
    return "small" if fraction < 0.01 else "medium-sized" if fraction < 0.04 else "large"


@dataclass(frozen=True)
class _Facts:
    noun: str
    defect: str | None
    location: str = ""
    size: str = ""

    def phrase(self, sized: bool = False) -> str:
        # "a crack" / "a small crack"; contamination is a mass noun: "contamination" / "small contamination"
        named = _DEFECT_TEXT[str(self.defect)][0]
        if not sized:
            return named
        return f"a {self.size} {named[2:]}" if named.startswith("a ") else f"{self.size} {named}"


def _answer(kind: str, facts: _Facts) -> str:
    if facts.defect is None:
        return {
            "yes_no": "No.",
            "detect": f"No. The {facts.noun} looks normal; I see no defect.",
            "type": f"There is no defect: the {facts.noun} is normal.",
            "where": f"Nowhere. The {facts.noun} has no defect; every part of it looks normal.",
            "describe": f"The image shows a {facts.noun} in normal condition. Its surface and shape are "
            "consistent, with no scratch, crack, hole, stain, missing piece or contamination.",
        }[kind]
    look = _DEFECT_TEXT[facts.defect][1]
    where = f"in the {facts.location} of the image"
    return {
        "yes_no": "Yes.",
        "detect": f"Yes. The {facts.noun} has {facts.phrase()} {where}.",
        "type": f"It is {facts.phrase()}: {look}.",
        "where": f"The {facts.defect.replace('_', ' ')} is {where}.",
        "describe": f"The image shows a {facts.noun} with {facts.phrase(sized=True)} {where}: {look}. "
        f"The rest of the {facts.noun} looks normal.",
    }[kind]


_QUESTIONS: dict[str, tuple[str, ...]] = {
    "yes_no": (DETECTION_PROMPT,),
    "detect": ("Is there any anomaly in this image?", "Does this {noun} have any defects?",
               "Inspect the {noun}. Is it normal or defective?"),
    "type": ("What type of defect does this {noun} have?", "What kind of anomaly is visible, if any?"),
    "where": ("Where is the defect located?", "Which part of the image contains the anomaly, if any?"),
    "describe": ("Describe the condition of the {noun} in the image.",
                 "Describe any anomalies you see in this image in detail."),
}  # fmt: skip


def _conversation(rng: np.random.Generator, facts: _Facts) -> list[dict[str, str]]:
    if rng.random() < 0.3:  # multi-turn: detect first, then follow up on type and location
        kinds = ["detect", "type", "where"][: int(rng.integers(2, 4))]
    else:
        kinds = [str(rng.choice(["yes_no", "detect", "type", "where", "describe"]))]
    turns = []
    for turn, kind in enumerate(kinds):
        options = _QUESTIONS[kind]
        question = options[int(rng.integers(len(options)))].format(noun=facts.noun)
        turns.append({"from": "human", "value": f"<image>\n{question}" if turn == 0 else question})
        turns.append({"from": "gpt", "value": _answer(kind, facts)})
    return turns


def _reasoning(facts: _Facts) -> tuple[list[str], list[str]]:
    assert facts.defect is not None  # the reasoning file holds anomalous images only
    consequence = _DEFECT_TEXT[facts.defect][2].format(noun=facts.noun)
    questions = [
        "Is there any anomaly in the image?",
        "What is the type of the anomaly?",
        "Where is the anomaly located?",
        f"How could this anomaly affect the use of the {facts.noun}, and what should be done about it?",
    ]
    answers = [
        f"Yes, the {facts.noun} has {facts.phrase()}.",
        _answer("type", facts),
        _answer("where", facts),
        f"{consequence} With {facts.phrase(sized=True)} in the {facts.location}, the {facts.noun} should be "
        "rejected at inspection or sent for repair.",
    ]
    return questions, answers


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def _prepare(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"synthetic dataset output {root} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"synthetic dataset output {root} is not empty; pass overwrite=True (CLI: --overwrite) to "
                f"replace the generated entries {', '.join(OWNED_ENTRIES)} there"
            )
        for name in OWNED_ENTRIES:
            entry = root / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # uint8 [H, W] -> L, [H, W, 3] -> RGB


def _write_json(value: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _samples(category: Category, plan: Scale) -> list[tuple[str, str | None, int]]:
    """(split, defect or None, index) of every image of a class; anomalies go round-robin over its defects."""
    samples: list[tuple[str, str | None, int]] = [("train", None, i) for i in range(plan.train_good)]
    samples += [("test", None, i) for i in range(plan.test_good)]
    per_defect = dict.fromkeys(category.defects, 0)
    for k in range(plan.anomalous):
        per_defect[category.defects[k % len(category.defects)]] += 1
    samples += [("test", defect, i) for defect, count in per_defect.items() for i in range(count)]
    return samples


def generate_synthetic(
    out_dir: str | Path, seed: int = 0, scale: str = "default", overwrite: bool = False
) -> SyntheticDataset:
    """Write the synthetic anomaly dataset (layout in the module docstring).

    Args:
        out_dir: the output root; created if missing.
        seed: the dataset seed; the same seed writes byte-identical files.
        scale: a key of :data:`SCALES` ("small" for tests, "default" for the demo).
        overwrite: allow a non-empty ``out_dir``; the generator then deletes only the entries it owns
            (:data:`OWNED_ENTRIES`) before writing, and leaves any other file there untouched.

    Returns:
        The paths written and the train / held-out class split.

    Raises:
        ValueError: an unknown scale or a negative seed.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
        NotADirectoryError: ``out_dir`` is an existing file.

    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    root = Path(out_dir)
    _prepare(root, overwrite)
    plan = SCALES[scale]
    size = plan.image_size
    instruct: list[dict[str, object]] = []
    detection: list[dict[str, object]] = []
    reasoning: list[dict[str, object]] = []
    counts: dict[str, dict[str, int]] = {}

    for class_index, category in enumerate(CATEGORIES):
        counts[category.name] = {
            "train_good": plan.train_good,
            "test_good": plan.test_good,
            "test_anomalous": plan.anomalous,
        }
        for split, defect, index in _samples(category, plan):
            _, image, mask = render_sample(seed, category.name, split, defect, index, size)
            relative = f"mvtec/{category.name}/{split}/{defect or 'good'}/{index:03d}.png"
            _save_png(image, root / relative)
            facts = _Facts(noun=category.noun, defect=defect)
            if defect is not None:
                _save_png(mask, root / f"mvtec/{category.name}/ground_truth/{defect}/{index:03d}_mask.png")
                facts = _Facts(category.noun, defect, describe_location(mask), _describe_size(mask))
            if not category.heldout:
                text_rng = np.random.default_rng([seed, 1, class_index, _role_code(split, defect), index])
                instruct.append(
                    {
                        "id": f"{category.name}_{split}_{defect or 'good'}_{index:03d}",
                        "image": relative,
                        "conversations": _conversation(text_rng, facts),
                        "anomaly": defect is not None,
                        "class": category.name,
                        "defect": defect,
                    }
                )
            elif split == "test":
                detection.append({"image": relative, "anomaly": defect is not None})
                if defect is not None:
                    questions, answers = _reasoning(facts)
                    reasoning.append(
                        {
                            "image": relative,
                            "class": category.name,
                            "defect": defect,
                            "questions": questions,
                            "answers": answers,
                        }
                    )

    train = tuple(category.name for category in CATEGORIES if not category.heldout)
    heldout = tuple(category.name for category in CATEGORIES if category.heldout)
    dataset = SyntheticDataset(
        root=root,
        mvtec_root=root / "mvtec",
        instruct_json=root / "instruct.json",
        test_data_json=root / "visa_dr" / "test_data.json",
        visa_dr_json=root / "visa_dr" / "visa_dr.json",
        meta_json=root / "meta.json",
        train_categories=train,
        heldout_categories=heldout,
        image_size=size,
    )
    _write_json(instruct, dataset.instruct_json)
    _write_json(detection, dataset.test_data_json)
    _write_json(reasoning, dataset.visa_dr_json)
    meta = {
        "generator": __name__,
        "seed": seed,
        "scale": scale,
        "image_size": size,
        "train_categories": list(train),
        "heldout_categories": list(heldout),
        "defect_types": list(DEFECT_TYPES),
        "categories": {
            c.name: {"kind": c.kind, "noun": c.noun, "defects": list(c.defects), "heldout": c.heldout}
            for c in CATEGORIES
        },
        "counts": counts,
        "records": {"instruct": len(instruct), "test_data": len(detection), "visa_dr": len(reasoning)},
        "visa_dr_prompt": DETECTION_PROMPT,
    }
    _write_json(meta, dataset.meta_json)
    return dataset


def cli_main(argv: list[str] | None = None) -> int:
    """``anomaly-ov make-synthetic``: writes the synthetic dataset and prints a one-line summary.

    Args:
        argv: command-line arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success, 1 when the output directory is refused).

    """
    parser = argparse.ArgumentParser(prog="anomaly-ov make-synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/synthetic", help="output root (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: %(default)s)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default", help="dataset size")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        dataset = generate_synthetic(args.out, seed=args.seed, scale=args.scale, overwrite=args.overwrite)
    except (FileExistsError, NotADirectoryError, ValueError) as error:
        print(f"anomaly-ov make-synthetic: {error}", file=sys.stderr)
        return 1
    meta = json.loads(dataset.meta_json.read_text(encoding="utf-8"))
    images = sum(sum(count.values()) for count in meta["counts"].values())
    print(
        f"wrote synthetic dataset to {dataset.root}: {len(CATEGORIES)} classes "
        f"({len(dataset.train_categories)} train, {len(dataset.heldout_categories)} held-out), "
        f"{images} images of {dataset.image_size}px, "
        f"{meta['records']['instruct']} instruction records, "
        f"{meta['records']['visa_dr']} reasoning records (seed {args.seed}, scale {args.scale}, "
        f"{time.perf_counter() - start:.1f}s)"
    )
    return 0
