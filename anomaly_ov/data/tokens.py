"""The token layout shared by the conversation renderer, the processor and the model (a leaf module).

One place for every special string and reserved-position rule of the LLM input (SPEC §3, §4):

* ChatML markers and the default system message (the release's Qwen conversation format);
* ``IGNORE_INDEX``, the label of every position that is not learned;
* the placeholders the processor expands every ``<image>`` into, and how many anomaly-token positions an
  image needs (``1 + P + pool*rows * (pool*cols + 1)`` with AnyRes tiles, ``1 + P + 1`` for one crop);
* the severity text written after an image's tokens (``with {adverb} suspicious features: ``).

It imports nothing of the project, so the data package, the processor and the model all read it without
importing each other.
"""

from collections.abc import Sequence
from dataclasses import dataclass

IGNORE_INDEX = -100
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_PLACEHOLDER = "<image>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

SEVERITY_TOKEN = "<severity>"
ANOMALY_TOKEN = "<anomaly>"
SEVERITY_WORDS: tuple[str, str, str] = ("slightly", "moderately", "highly")
SEVERITY_TEMPLATE = "with {} suspicious features: "


def severity_word(score: float, thresholds: Sequence[float] = (0.3, 0.7)) -> str:
    """The severity adverb of an anomaly score (SPEC §3: < 0.3 slightly, < 0.7 moderately, else highly).

    Args:
        score: Anomaly probability in [0, 1].
        thresholds: The two ascending thresholds.

    Returns:
        One of :data:`SEVERITY_WORDS`.
    """
    low, high = thresholds
    if not low <= high:
        raise ValueError(f"thresholds={tuple(thresholds)} must be increasing (low <= high).")
    if score < low:
        return SEVERITY_WORDS[0]
    if score < high:
        return SEVERITY_WORDS[1]
    return SEVERITY_WORDS[2]


def severity_text(word: str) -> str:
    """The text inserted after an image's tokens for a severity adverb (SPEC §3, exactly)."""
    return SEVERITY_TEMPLATE.format(word)


def anomaly_token_count(tile_grid: tuple[int, int] | None, pool_grid: int) -> int:
    """Number of anomaly-token positions of one image (SPEC §3).

    Args:
        tile_grid: ``(rows, cols)`` of the AnyRes tile grid, or None for a single crop.
        pool_grid: Side of the expert's pooling grid (local tokens per crop = ``pool_grid ** 2``).

    Returns:
        ``1 + P + pool*rows * (pool*cols + 1)`` with tiles, ``1 + P + 1`` for a single crop.
    """
    cells = pool_grid * pool_grid
    if tile_grid is None:
        return 1 + cells + 1
    rows, cols = tile_grid
    return 1 + cells + pool_grid * rows * (pool_grid * cols + 1)


@dataclass(frozen=True)
class PlaceholderTokens:
    """Token ids of the positions the processor reserves for each image.

    Attributes:
        image: Id of LLaVA-OneVision's image token (one position per packed image feature).
        severity: Id of the severity-text placeholder (None: a model without the expert).
        anomaly: Id of the anomaly-token placeholder (None: a model without the expert).
        severity_slots: Severity positions per image (the longest severity text, in tokens; 0 without the
            expert).
    """

    image: int
    severity: int | None
    anomaly: int | None
    severity_slots: int
