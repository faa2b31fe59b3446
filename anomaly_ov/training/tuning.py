"""What stage 2 trains (SPEC §4): one setting, ``tuning: lora | full | projector``.

In every mode the vision tower and the anomaly expert are frozen and LLaVA-OneVision's projector and image
newline are trained. The modes differ only in the LLM:

* ``lora`` -- this project's default: the LoRA adapter's matrices (PEFT, injected by the builder from
  ``configs/model/lora``; rank, alpha, dropout and target modules are config); the LLM's own weights, its
  embeddings and the output head stay frozen;
* ``full`` -- the released recipe: every LLM weight (embeddings, decoder layers, final norm, output head);
* ``projector`` -- the LLM is frozen entirely (a cheap ablation and a debugging aid).

A model built with an adapter can only be tuned with ``lora`` and one without only with ``full`` or
``projector`` (the config group ``tuning`` sets both together), so the exported folder always matches what
was trained.
"""

from collections.abc import Iterator

from torch import nn

from anomaly_ov.models.anomaly_ov import AnomalyOV

TUNING_MODES: tuple[str, ...] = ("lora", "full", "projector")
LORA_MARKER = "lora_"


def has_lora_adapter(model: AnomalyOV) -> bool:
    """Whether the LLM carries LoRA matrices."""
    return any(LORA_MARKER in name for name, _ in model.llava.model.language_model.named_parameters())


def apply_tuning(model: AnomalyOV, mode: str) -> None:
    """Sets ``requires_grad`` of every parameter for a tuning mode (in place).

    Args:
        model: The model (built with a LoRA adapter for ``lora``, without one otherwise).
        mode: "lora", "full" or "projector".

    Raises:
        ValueError: For an unknown mode, or an adapter that does not match the mode.
    """
    if mode not in TUNING_MODES:
        raise ValueError(f"tuning={mode!r}; expected one of {list(TUNING_MODES)}.")
    adapter = has_lora_adapter(model)
    if (mode == "lora") != adapter:
        raise ValueError(
            f"tuning={mode} but the model {'has' if adapter else 'has no'} LoRA adapter: use the config "
            "group (tuning=lora builds the adapter from model/lora, tuning=full|projector sets model.lora "
            "to null)."
        )
    model.requires_grad_(False)
    llava = model.llava
    if mode == "lora":
        for name, parameter in llava.model.language_model.named_parameters():
            parameter.requires_grad_(LORA_MARKER in name)
    elif mode == "full":
        llava.model.language_model.requires_grad_(True)
        llava.lm_head.requires_grad_(True)
    llava.model.multi_modal_projector.requires_grad_(True)
    llava.model.image_newline.requires_grad_(True)


def trainable_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The named parameters that train (tied weights once)."""
    return ((name, p) for name, p in model.named_parameters() if p.requires_grad)


def trainable_counts(model: nn.Module) -> dict[str, int]:
    """``{parameter name: element count}`` of the parameters that train."""
    return {name: parameter.numel() for name, parameter in trainable_parameters(model)}
