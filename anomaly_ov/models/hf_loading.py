"""Loading Hugging Face checkpoints quietly and completely (shared by every builder that calls
``from_pretrained``).

transformers reports missing or mismatched weights as a log line and then initialises them at random; a
builder here checks the loading info instead and refuses a partly random model, naming the checkpoint.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silences transformers' load report and progress bars; loading problems are checked explicitly."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    progress_bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bar:
            hf_logging.enable_progress_bar()


def raise_on_incomplete_load(info: Mapping[str, object], name_or_path: str, what: str) -> None:
    """Raises if ``from_pretrained(..., output_loading_info=True)`` left weights missing or misshapen.

    Args:
        info: The loading info transformers returned.
        name_or_path: The checkpoint, for the message.
        what: What was loaded ("LLaVA-OneVision", "siglip vision", ...), for the message.

    Raises:
        ValueError: Naming the checkpoint and up to 20 missing / mismatched keys.
    """
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise ValueError(
            f"{name_or_path}: the {what} weights are incomplete (missing keys {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}, shape mismatches {mismatched[:20]}); the model would be "
            "partly random."
        )


def require_built_folder(name_or_path: str, build_command: str | None) -> None:
    """Refuses a checkpoint folder that a project command builds (a zoo) before that command has run.

    Args:
        name_or_path: The checkpoint (a folder for the zoos).
        build_command: The command that builds it (``anomaly-ov make-real-zoo --out ...``), from the config;
            None for a hub id or a folder the user provides (nothing is checked).

    Raises:
        FileNotFoundError: The folder does not exist; the message names the command that builds it.
    """
    if build_command is not None and not Path(name_or_path).is_dir():
        raise FileNotFoundError(f"{name_or_path} does not exist; build it first with: {build_command}")
