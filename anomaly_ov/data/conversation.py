r"""Conversations (SPEC §5 records) -> token ids + labels in Qwen's ChatML; only assistant turns labelled.

This is the one function that turns a conversation into model input, for training (stage 2) and inference
alike; there is no per-LLM preprocessing. A conversation is the ``conversations`` list of an instruction
record::

    [{"from": "human", "value": "<image>\\nIs there a defect?"}, {"from": "gpt", "value": "Yes. ..."}, ...]

optionally starting with ``{"from": "system", "value": ...}``. It is rendered as ChatML (the release's Qwen
conversation format, the one the llava-hf OneVision checkpoints were trained with)::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{human value}<|im_end|>\\n
    <|im_start|>assistant\\n{gpt value}<|im_end|>\\n

Labels are the token ids of each assistant answer and its closing ``<|im_end|>`` (what the model must learn
to produce, including when to stop); every other position is -100.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from anomaly_ov.data.tokens import (
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    IM_END,
    IM_START,
    IMAGE_PLACEHOLDER,
)

ROLES: dict[str, str] = {"system": "system", "human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids of a rendered conversation and their labels (same length).

    Attributes:
        input_ids: Token ids.
        labels: ``input_ids`` on assistant answers (and their ``<|im_end|>``), -100 elsewhere.
        text: The rendered text that was tokenized.
    """

    input_ids: list[int]
    labels: list[int]
    text: str


def _check_turns(turns: Sequence[Mapping[str, str]], source: str) -> None:
    if len(turns) == 0:
        raise ValueError(f"{source}: the conversation is empty.")
    for index, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            raise ValueError(
                f"{source}: turn {index} is not a {{'from': ..., 'value': str}} mapping: {turn!r}"
            )
        role = turn.get("from")
        if role not in ROLES:
            raise ValueError(f"{source}: turn {index} has 'from'={role!r}; expected one of {sorted(ROLES)}.")
        if role == "system" and index != 0:
            raise ValueError(f"{source}: a system turn may only come first (found one at turn {index}).")
        if role != "human" and IMAGE_PLACEHOLDER in turn["value"]:
            raise ValueError(
                f"{source}: turn {index} ({role}) holds {IMAGE_PLACEHOLDER}; only human turns may."
            )


def tokenize_conversation(
    turns: Sequence[Mapping[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    image_expansions: Sequence[str] = (),
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    add_generation_prompt: bool = False,
    source: str = "conversation",
) -> TokenizedConversation:
    r"""Renders a conversation as ChatML and tokenizes it, labelling only the assistant answers.

    Args:
        turns: SPEC §5 turns (``from`` in human / gpt, optionally a first system turn; ``value`` text).
        tokenizer: The LLM's (fast) tokenizer; it must know ``<|im_start|>`` / ``<|im_end|>``.
        image_expansions: One string per ``<image>`` placeholder, in order, that replaces it (the processor's
            reserved positions for that image); empty for a text-only conversation.
        system_prompt: System message used when the conversation has no system turn (None: none).
        add_generation_prompt: Append ``<|im_start|>assistant\\n`` so that the model answers next.
        source: Name of the record, for error messages.

    Returns:
        Token ids, labels and the rendered text.

    Raises:
        ValueError: If the turns are malformed, or the number of ``<image>`` placeholders differs from the
            number of images (the message names ``source`` and both counts).
    """
    _check_turns(turns, source)
    placeholders = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
    if placeholders != len(image_expansions):
        raise ValueError(
            f"{source}: the conversation has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but "
            f"{len(image_expansions)} image(s) were given; the prompt needs one {IMAGE_PLACEHOLDER} "
            "per image."
        )

    pieces: list[tuple[str, bool]] = []  # (text, labelled)
    if turns[0]["from"] != "system" and system_prompt is not None:
        pieces.append((f"{IM_START}system\n{system_prompt}{IM_END}\n", False))
    expansions = iter(image_expansions)
    for turn in turns:
        role, value = turn["from"], turn["value"]
        if role == "human":
            parts = value.split(IMAGE_PLACEHOLDER)
            value = parts[0] + "".join(next(expansions) + part for part in parts[1:])
        if role == "gpt":
            pieces += [(f"{IM_START}assistant\n", False), (f"{value}{IM_END}", True), ("\n", False)]
        else:
            pieces.append((f"{IM_START}{ROLES[role]}\n{value}{IM_END}\n", False))
    if add_generation_prompt:
        pieces.append((f"{IM_START}assistant\n", False))

    text = "".join(piece for piece, _ in pieces)
    labelled_spans = []
    offset = 0
    for piece, labelled in pieces:
        if labelled:
            labelled_spans.append((offset, offset + len(piece)))
        offset += len(piece)
    # One tokenization of the whole text (exactly what inference sees); a token is labelled when it starts
    # inside an answer span.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [
        token if any(start <= begin < end for start, end in labelled_spans) else IGNORE_INDEX
        for token, (begin, _) in zip(input_ids, encoded["offset_mapping"], strict=True)
    ]
    return TokenizedConversation(input_ids=input_ids, labels=labels, text=text)
