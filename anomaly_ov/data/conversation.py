r"""Conversations (SPEC §5 records) -> token ids + labels in Qwen's ChatML, by one of two label rules.

This is the one function that turns a conversation into model input, for training (stage 2) and inference
alike; there is no per-LLM preprocessing. A conversation is the ``conversations`` list of an instruction
record::

    [{"from": "human", "value": "<image>\\nIs there a defect?"}, {"from": "gpt", "value": "Yes. ..."}, ...]

optionally starting with ``{"from": "system", "value": ...}``. It is rendered as ChatML (the release's Qwen
conversation format, the one the llava-hf OneVision checkpoints were trained with)::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{human value}<|im_end|>\\n
    <|im_start|>assistant\\n{gpt value}<|im_end|>\\n

The turns alternate human, gpt, human, gpt, ... after an optional first system turn. Two label rules
(SPEC §4):

* ``"assistant"`` (this project's default): the token ids of each assistant answer and its closing
  ``<|im_end|>`` (what the model must learn to produce, including when to stop); every other position -100.
* ``"release"`` (LLaVA-NeXT's ``qwen_1_5`` preprocessing, for exact reproduction): the whole assistant
  message, ``<|im_start|>assistant\\n{answer}<|im_end|>\\n``, plus every ``\\n``, ``<|im_start|>`` and
  ``<|im_end|>`` token of the system and user messages. The release matches these by token id, so a newline
  merged into another token (``".\\n"``, ``"\\n\\n"``) stays unlabelled, here too.

In both, the positions of the image expansions (image, severity and anomaly placeholders) are -100.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from anomaly_ov.data.tokens import (
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    IM_END,
    IM_START,
    IMAGE_PLACEHOLDER,
)

ROLES: dict[str, str] = {"system": "system", "human": "user", "gpt": "assistant"}
LABEL_RULES: tuple[str, ...] = ("assistant", "release")
LabelRule = Literal["assistant", "release"]

# How the tokens of a rendered piece are labelled.
_ANSWER, _TEXT, _PLACEHOLDER = "answer", "text", "placeholder"


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids of a rendered conversation and their labels (same length).

    Attributes:
        input_ids: Token ids.
        labels: ``input_ids`` where the label rule learns them, -100 elsewhere.
        text: The rendered text that was tokenized.
    """

    input_ids: list[int]
    labels: list[int]
    text: str


def check_turns(turns: Sequence[Mapping[str, str]], source: str) -> None:
    """Checks that turns are well formed and alternate human, gpt, ... after an optional system turn.

    Args:
        turns: SPEC §5 turns.
        source: Name of the record, for error messages.

    Raises:
        ValueError: Naming ``source`` and the turn: an empty conversation, a turn that is not a
            ``{"from", "value": str}`` mapping, an unknown role, a late system turn, ``<image>`` outside a
            human turn, or roles that do not alternate.
    """
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
    first = 1 if turns[0]["from"] == "system" else 0
    for index in range(first, len(turns)):
        expected = "human" if (index - first) % 2 == 0 else "gpt"
        if turns[index]["from"] != expected:
            raise ValueError(
                f"{source}: roles do not alternate: turn {index} is {turns[index]['from']!r} where "
                f"{expected!r} was expected (human, gpt, human, gpt, ... after an optional system turn)."
            )


def tokenize_conversation(
    turns: Sequence[Mapping[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    image_expansions: Sequence[str] = (),
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    add_generation_prompt: bool = False,
    source: str = "conversation",
    label_rule: LabelRule = "assistant",
) -> TokenizedConversation:
    r"""Renders a conversation as ChatML and tokenizes it, with labels by ``label_rule``.

    Args:
        turns: SPEC §5 turns (``from`` in human / gpt, optionally a first system turn; ``value`` text).
        tokenizer: The LLM's (fast) tokenizer; it must know ``<|im_start|>`` / ``<|im_end|>``.
        image_expansions: One string per ``<image>`` placeholder, in order, that replaces it (the processor's
            reserved positions for that image); empty for a text-only conversation.
        system_prompt: System message used when the conversation has no system turn (None: none).
        add_generation_prompt: Append ``<|im_start|>assistant\\n`` so that the model answers next.
        source: Name of the record, for error messages.
        label_rule: ``"assistant"`` (answers and their ``<|im_end|>``) or ``"release"`` (LLaVA-NeXT's
            rule); see the module docstring.

    Returns:
        Token ids, labels and the rendered text.

    Raises:
        ValueError: If ``label_rule`` is unknown, the turns are malformed or do not alternate, or the number
            of ``<image>`` placeholders differs from the number of images (the message names ``source``).
    """
    if label_rule not in LABEL_RULES:
        raise ValueError(f"label_rule={label_rule!r}; expected one of {LABEL_RULES}.")
    check_turns(turns, source)
    placeholders = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
    if placeholders != len(image_expansions):
        raise ValueError(
            f"{source}: the conversation has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but "
            f"{len(image_expansions)} image(s) were given; the prompt needs one {IMAGE_PLACEHOLDER} "
            "per image."
        )

    release = label_rule == "release"
    pieces: list[tuple[str, str]] = []  # (text, kind)
    if turns[0]["from"] != "system" and system_prompt is not None:
        pieces.append((f"{IM_START}system\n{system_prompt}{IM_END}\n", _TEXT))
    expansions = iter(image_expansions)
    for turn in turns:
        role, value = turn["from"], turn["value"]
        if role == "gpt":
            if release:
                pieces.append((f"{IM_START}assistant\n{value}{IM_END}\n", _ANSWER))
            else:
                pieces += [(f"{IM_START}assistant\n", _TEXT), (f"{value}{IM_END}", _ANSWER), ("\n", _TEXT)]
            continue
        parts = value.split(IMAGE_PLACEHOLDER)
        pieces.append((f"{IM_START}{ROLES[role]}\n{parts[0]}", _TEXT))
        for part in parts[1:]:
            pieces += [(next(expansions), _PLACEHOLDER), (part, _TEXT)]
        pieces.append((f"{IM_END}\n", _TEXT))
    if add_generation_prompt:
        pieces.append((f"{IM_START}assistant\n", _TEXT))

    text = "".join(piece for piece, _ in pieces)
    # One tokenization of the whole text (exactly what inference sees); a token takes the kind of the piece
    # it starts in.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    starts = [begin for begin, _ in encoded["offset_mapping"]]
    kinds = _token_kinds(pieces, starts)
    structural = _structural_ids(tokenizer) if release else frozenset()
    labels = [
        token if kind == _ANSWER or (kind == _TEXT and token in structural) else IGNORE_INDEX
        for token, kind in zip(input_ids, kinds, strict=True)
    ]
    return TokenizedConversation(input_ids=input_ids, labels=labels, text=text)


def _token_kinds(pieces: Sequence[tuple[str, str]], starts: Sequence[int]) -> list[str]:
    """The kind of the piece each token starts in (``starts`` ascending character offsets)."""
    kinds: list[str] = []
    piece, end = -1, 0
    for start in starts:
        while start >= end and piece + 1 < len(pieces):
            piece += 1
            end += len(pieces[piece][0])
        kinds.append(pieces[piece][1])
    return kinds


def _structural_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids the release rule learns in system and user messages: newline, ``<|im_start|>``, ``<|im_end|>``."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) != 1:
        raise ValueError(f"the tokenizer splits a newline into {len(newline)} tokens; the release needs 1.")
    ids = [newline[0], *tokenizer.convert_tokens_to_ids([IM_START, IM_END])]
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids[1:]:
        raise ValueError(f"the tokenizer does not know {IM_START} / {IM_END}.")
    return frozenset(ids)
