"""Reading weight files and checkpoint folders that may come from strangers, refusing what is not data.

* safetensors files (ours, the model folders, the stage-1 training state): the library validates the
  header (its length, every tensor's dtype, shape and offsets against the file) before reading; a file that
  fails is refused with a :class:`UntrustedFileError` naming it;
* the release's ``.pth`` pickles: only with ``weights_only=True``, so a pickle that calls anything (an
  ``os.system`` payload) is refused before anything runs -- and the message never suggests
  ``weights_only=False``;
* Hugging Face folders: a config that names remote code (``auto_map``) is refused; the project loads every
  checkpoint through concrete transformers classes and never imports a folder's Python files.
"""

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

# the configs of a Hugging Face folder that can name classes to import (auto_map)
_HF_CONFIG_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "image_processor_config.json",
    "video_preprocessor_config.json",
)


class UntrustedFileError(ValueError):
    """A file refused because it is not what it claims to be (the message names it and why)."""


def _not_safetensors(path: str | Path, error: Exception) -> UntrustedFileError:
    return UntrustedFileError(f"{path}: not a valid safetensors file ({error}); nothing was loaded.")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, its header checked first.

    Raises:
        FileNotFoundError: If the file is missing.
        UntrustedFileError: If the header is malformed or lies about shapes or offsets (e.g. a pickle).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise UntrustedFileError(
            f"{path}: not a valid safetensors file ({error}); nothing was loaded."
        ) from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file's header (empty if it has none).

    Raises:
        UntrustedFileError: If the header is malformed.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except SafetensorError as error:
        raise UntrustedFileError(
            f"{path}: not a valid safetensors file ({error}); nothing was loaded."
        ) from None


def read_weights_pickle(path: str | Path) -> object:
    """A ``.pth`` file read with ``weights_only=True`` (tensors, containers and numbers only).

    Raises:
        UntrustedFileError: If the pickle holds anything else (a class, a call): refused before it runs.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message wraps what it found in advice to retry with weights_only=False: keep the finding
        body = str(error).partition("Check the documentation")[0]
        for lead in ("WeightsUnpickler error:", "trusted source."):
            if lead in body:
                body = body.partition(lead)[2]
                break
        reason = " ".join(body.split()).partition(" was not an allowed global")[0][:200]
        reason = reason or type(error).__name__
        raise UntrustedFileError(
            f"{path}: refused -- the pickle holds more than tensors ({reason}); it would run code when "
            "loaded, so it is never loaded. Use the release's weights file."
        ) from None


def refuse_remote_code(name_or_path: str | Path) -> None:
    """Refuses a local Hugging Face folder whose config names remote code (``auto_map``).

    A hub id (not a local folder) is not checked here: loading is offline and through concrete classes,
    which never import a checkpoint's Python files.

    Raises:
        UntrustedFileError: Naming the config file and the classes it asks to import.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        return
    for name in _HF_CONFIG_FILES:
        for config in [folder / name, *folder.glob(f"*/{name}")]:
            if not config.is_file():
                continue
            try:
                content = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # not ours to judge here: the loader names an unreadable config
            if isinstance(content, dict) and "auto_map" in json.dumps(content):
                raise UntrustedFileError(
                    f"{config}: names remote code (auto_map); this project never imports a checkpoint's "
                    "Python files. Remove auto_map (and the .py files) or use the original checkpoint."
                )
