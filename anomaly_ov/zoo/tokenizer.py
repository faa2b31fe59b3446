"""A tiny Qwen2-style tokenizer trained locally, for tests and the offline demo.

The real checkpoints use Qwen2's 151k-token byte-level BPE. Tests need the same *kind* of tokenizer
(byte-level BPE with Qwen2's pre-tokenizer, no BOS, ChatML special tokens, the ``<image>`` / ``<video>``
placeholders of LLaVA-OneVision) but small enough that a 64-wide LLM embedding stays tiny and building it
needs no download. :func:`train_tiny_tokenizer` trains one with the ``tokenizers`` library on a small
built-in corpus of chat turns, the severity text of SPEC §3 and the anomaly vocabulary, and wraps it as a
transformers ``Qwen2TokenizerFast`` (an alias of ``Qwen2Tokenizer`` in transformers 5).

Special-token layout (ids follow the trained vocabulary, in Qwen2's order):
``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos), ``<image>``, ``<video>``.
The tokenizer exposes ``tokenizer.image_token`` / ``image_token_id`` and ``video_token`` /
``video_token_id``, which ``LlavaOnevisionProcessor`` reads.
"""

import json

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import Qwen2TokenizerFast

from anomaly_ov.data.tokens import (
    DEFAULT_SYSTEM_PROMPT,
    IM_END,
    IM_START,
    IMAGE_PLACEHOLDER,
    SEVERITY_WORDS,
    severity_text,
)

ENDOFTEXT = "<|endoftext|>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, IMAGE_PLACEHOLDER, VIDEO_TOKEN)

# Qwen2's pre-tokenizer split (the same pattern transformers' Qwen2Tokenizer builds), so that words,
# digits and punctuation are cut exactly where the real tokenizer cuts them.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2's ChatML template, extended so that message content may also be a list of typed parts
# ({"type": "text", "text": ...}, {"type": "image"}, {"type": "video"}) as processors pass it; an image
# part renders as "<image>\n", the LLaVA-OneVision convention. For string content it renders exactly
# what Qwen2-Instruct's template renders.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '<video>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_SEVERITY_TEXT: tuple[str, ...] = tuple(severity_text(word) for word in SEVERITY_WORDS)

_CHAT_TEXT: tuple[str, ...] = (
    "system\nYou are a helpful assistant.",
    "user\nIs there any anomaly in the image?",
    "user\nAre there any defects in this image? Answer yes or no.",
    "user\nDoes the object in the image look normal?",
    "user\nWhat is the type of the defect, and where is it located?",
    "user\nDescribe the anomaly in detail.",
    "user\nPlease inspect the surface of the object carefully.",
    "assistant\nYes, there is an anomaly in the image.",
    "assistant\nNo, the object in the image looks normal and has no defect.",
    "assistant\nYes. There is a crack on the upper left of the object.",
    "assistant\nYes. A small scratch is visible in the lower right part of the surface.",
    "assistant\nYes. The object has a hole near the center of the image.",
    "assistant\nYes. There is a stain and some contamination on the right side.",
    "assistant\nYes. A piece of the object is missing on the left edge.",
    "assistant\nNo. The image shows a normal object without any anomaly.",
)

_ANOMALY_WORDS: tuple[str, ...] = (
    "anomaly anomalies anomalous abnormal normal defect defects defective flaw damage damaged",
    "scratch scratches crack cracks cracked hole holes stain stains contamination contaminated",
    "missing piece pieces broken bent cut fold glue print thread color rough oil liquid misplaced",
    "squeeze squeezed poke faulty imprint swap combined insulation wire lead case teeth fabric",
    "border interior split large small tiny big spot spots dent dents chip chipped burn",
    "upper lower left right center middle top bottom edge corner side region area part",
    "object surface image picture photo product item texture pattern background foreground",
    "bottle cable capsule carpet grid hazelnut leather metal nut pill screw tile toothbrush",
    "transistor wood zipper candle capsules cashew chewing gum fryum macaroni pcb pipe",
    "yes no not there is are a an the of in on at to with and or this that it its",
    "slightly moderately highly suspicious features feature",
    "inspection industrial quality detection detected location located visible appears",
)

_GENERIC_TEXT: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A model looks at the picture and answers the question in plain words.",
    "We describe what we see: the shape, the color, the size and the position of each part.",
    "If something looks wrong, we say what it is and where it is; otherwise we say it looks fine.",
    "Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100 and 2025 appear in text too.",
    "Questions end with a question mark? Lists use commas, colons: and semicolons; quotes use 'single'"
    ' and "double" marks.',
    "It's the end of the sentence, and they're done; we've seen it, I'm sure, you'll agree, he'd know.",
    "Please answer briefly. Thank you! Here is the answer. The image is clear and well lit.",
    "First, look at the whole image. Then look at the high resolution tiles. Finally, decide.",
    "Good, bad, better, best, more, less, many, few, some, all, none, every, each, other, same.",
    "The training data comes from many categories of industrial products and everyday things.",
    "When the light changes, the shadows move and the reflections on the metal become brighter.",
    "Our system should explain its reasoning step by step before it gives the final answer.",
    "Which one is different from the others, and why would a person notice it at first glance?",
    "Experts compare each sample with a reference and report the difference they have found.",
    "Users can ask follow-up questions about the result, the score and the highlighted region.",
)

# How often each group is repeated: BPE merges frequent words first, so the phrases the project relies
# on (the severity text, the anomaly vocabulary) become whole tokens before the budget runs out.
_CORPUS_WEIGHTS: tuple[tuple[tuple[str, ...], int], ...] = (
    (_SEVERITY_TEXT, 40),
    (_CHAT_TEXT, 10),
    (_ANOMALY_WORDS, 10),
    (_GENERIC_TEXT, 2),
)


def tokenizer_corpus() -> list[str]:
    """Return the built-in training corpus (weighted by repetition), special tokens excluded."""
    corpus: list[str] = []
    for texts, repeats in _CORPUS_WEIGHTS:
        for _ in range(repeats):
            corpus.extend(texts)
    return corpus


def _byte_level_bpe(vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with Qwen2's normaliser, pre-tokenizer and decoder on the corpus."""
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        # every byte must be in the vocabulary, or unseen characters could not be encoded
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return tokenizer


def train_tiny_tokenizer(vocab_size: int = 2048) -> Qwen2TokenizerFast:
    """Train the tiny Qwen2-style tokenizer (deterministic: no randomness in BPE training).

    Args:
        vocab_size: Upper bound on the learned BPE vocabulary (bytes + merges), before the five special
            tokens are appended. At least 256 (one entry per byte). Training stops earlier once no
            pair occurs twice: the built-in corpus yields 1041 learned entries (1046 in all).

    Returns:
        A ``Qwen2TokenizerFast`` with the ChatML chat template, no BOS token, ``<|im_end|>`` as EOS,
        ``<|endoftext|>`` as pad, and ``<image>`` / ``<video>`` registered as ``image_token`` /
        ``video_token``. Its length is the learned vocabulary plus five.

    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size={vocab_size} is below 256: byte-level BPE needs one entry per byte")
    bpe = _byte_level_bpe(vocab_size)
    vocab = bpe.get_vocab()
    # the serialised model lists merges in rank order as [left, right] pairs; Qwen2Tokenizer takes tuples
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    return chatml_tokenizer(vocab, merges)


def chatml_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Qwen2TokenizerFast:
    """A ``Qwen2TokenizerFast`` of a byte-level BPE with Qwen2's special tokens and ChatML template.

    Args:
        vocab: The BPE's tokens with the ids 0..len(vocab) - 1 (extended in place with the specials).
        merges: The BPE's merges in rank order.

    Returns:
        The tokenizer; the specials get the ids right after the BPE's, in Qwen2's order.

    """
    learned = len(vocab)
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = learned + offset
    return Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START, IM_END],
        image_token=IMAGE_PLACEHOLDER,
        video_token=VIDEO_TOKEN,
        chat_template=CHATML_TEMPLATE,
        model_max_length=32768,
        errors="replace",
    )
