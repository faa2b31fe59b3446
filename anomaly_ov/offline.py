"""Switches every Hugging Face / wandb client to offline mode.

The project never downloads at run time on CPU machines: tests, the demo and the tiny zoo call
:func:`enforce_offline` before importing transformers, datasets or wandb.
"""

import os

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}


def enforce_offline() -> None:
    """Sets the offline environment variables unless the caller already chose a value."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
