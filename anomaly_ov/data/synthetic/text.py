"""The texts of the synthetic dataset: defect locations and sizes, instruction conversations
(Anomaly-Instruct style) and the VisA-D&R-style reasoning questions with their reference answers.
"""

from dataclasses import dataclass

import numpy as np

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
    # the transfer profile's further defect types (anomaly_ov.data.synthetic.transfer)
    "misprint": (
        "a misprint",
        "a patch of the pattern printed out of place or in the wrong colour",
        "A misprint makes the {noun} look faulty and can make its markings unreadable.",
    ),
    "dark_region": (
        "a dark region",
        "an area that is much darker than the rest of the surface",
        "A dark region points to a dead, burnt or shadowed area where the {noun} does not work as it should.",
    ),
    "bright_region": (
        "a bright region",
        "an area that is much brighter than the rest of the surface",
        "A bright region points to worn, bleached or overheated material on the {noun}.",
    ),
    "texture_break": (
        "a texture break",
        "a spot where the regular structure of the surface is broken or turned",
        "A break in the structure shows that the {noun} was damaged or made wrongly at that spot.",
    ),
}


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


def describe_size(mask: np.ndarray) -> str:
    """Size word of a defect (small, medium-sized, large) by the fraction of the image its mask covers."""
    fraction = float(np.count_nonzero(mask)) / mask.size
    return "small" if fraction < 0.01 else "medium-sized" if fraction < 0.04 else "large"


@dataclass(frozen=True)
class Facts:
    """What the texts say about one image: the object's noun and, for a defect, its type, location, size."""

    noun: str
    defect: str | None
    location: str = ""
    size: str = ""

    def phrase(self, sized: bool = False) -> str:
        """The defect as a noun phrase, optionally with its size."""
        # "a crack" / "a small crack"; contamination is a mass noun: "contamination" / "small contamination"
        named = _DEFECT_TEXT[str(self.defect)][0]
        if not sized:
            return named
        return f"a {self.size} {named[2:]}" if named.startswith("a ") else f"{self.size} {named}"


def _answer(kind: str, facts: Facts) -> str:
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


def instruction_conversation(rng: np.random.Generator, facts: Facts) -> list[dict[str, str]]:
    """An instruction conversation about one image: one question, or detect then type and location."""
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


def reasoning_questions(facts: Facts) -> tuple[list[str], list[str]]:
    """The four VisA-D&R-style questions about an anomalous image and their reference answers."""
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
