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
    <root>/tokenizer/    Qwen2TokenizerFast (see :mod:`anomaly_ov.models.tokenizer`)
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
"""

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerBase,
    Qwen2Config,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from anomaly_ov.models.tokenizer import CHATML_TEMPLATE, ENDOFTEXT, IM_END, train_tiny_tokenizer

ZOO_FORMAT = "anomaly-ov-tiny-zoo"
# Bump whenever the architecture, the tokenizer corpus or the file layout changes, so that a stale zoo
# on disk is not silently reused.
ZOO_VERSION = 1
MANIFEST_NAME = "zoo.json"
ZOO_FOLDERS: tuple[str, ...] = ("siglip", "clip", "open_clip", "tokenizer", "llava_ov")

OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"

# Vision towers (all four share these sizes).
IMAGE_SIZE = 64
PATCH_SIZE = 8
VISION_WIDTH = 64
VISION_LAYERS = 6
VISION_HEADS = 4
VISION_MLP = 128
PATCH_GRID = IMAGE_SIZE // PATCH_SIZE  # 8 -> 64 patch tokens per crop

# Qwen2-like language model.
LLM_WIDTH = 64
LLM_LAYERS = 2
LLM_HEADS = 4
LLM_KV_HEADS = 2
LLM_MLP = 128
LLM_MAX_POSITIONS = 4096

# AnyRes: tiles of the vision input size, up to 3x3 tiles, as LLaVA-OneVision's (1..6)x(1..6) x 384.
GRID_PINPOINTS: list[list[int]] = [[IMAGE_SIZE * i, IMAGE_SIZE * j] for i in range(1, 4) for j in range(1, 4)]
VISION_ASPECT_RATIO = "anyres_max_9"

# SigLIP normalises to [-1, 1]; CLIP / open_clip use the OpenAI statistics.
SIGLIP_MEAN_STD = [0.5, 0.5, 0.5]
OPENAI_MEAN = list(open_clip.OPENAI_DATASET_MEAN)
OPENAI_STD = list(open_clip.OPENAI_DATASET_STD)


@dataclass(frozen=True)
class TinyZoo:
    """Paths of a built tiny zoo (each a folder loadable like the corresponding real checkpoint).

    Attributes:
        root: The zoo folder (holds the ``zoo.json`` manifest).
        siglip: HF ``SiglipVisionModel`` + ``SiglipImageProcessor`` folder.
        clip: HF ``CLIPVisionModel`` + ``CLIPImageProcessor`` folder.
        open_clip: open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``).
        tokenizer: ``Qwen2TokenizerFast`` folder.
        llava_ov: ``LlavaOnevisionForConditionalGeneration`` + ``LlavaOnevisionProcessor`` folder.

    """

    root: Path
    siglip: Path
    clip: Path
    open_clip: Path
    tokenizer: Path
    llava_ov: Path

    @classmethod
    def at(cls, root: str | Path) -> "TinyZoo":
        """Return the paths a zoo rooted at ``root`` has (whether or not it was built)."""
        root = Path(root)
        return cls(root=root, **{name: root / name for name in ZOO_FOLDERS})


def tiny_siglip_vision_config(use_head: bool = True) -> SiglipVisionConfig:
    """Return the tiny SigLIP vision config.

    Args:
        use_head: Whether the tower has SigLIP's attention-pooling head. The standalone SigLIP keeps it,
            like google/siglip-so400m; the tower inside LLaVA-OneVision has none, like llava-hf's.

    """
    return SiglipVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=VISION_WIDTH,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=VISION_HEADS,
        intermediate_size=VISION_MLP,
        vision_use_head=use_head,
    )


def tiny_clip_vision_config() -> CLIPVisionConfig:
    """Return the tiny CLIP vision config (CLS token + 64 patch tokens)."""
    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=VISION_WIDTH,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=VISION_HEADS,
        intermediate_size=VISION_MLP,
        projection_dim=VISION_WIDTH,
    )


def tiny_open_clip_model_config() -> dict[str, object]:
    """Return the tiny open_clip model config, in open_clip's ``model_cfg`` JSON format.

    The text tower keeps open_clip's default tokenizer size (49408 ids, context 77) so that
    ``open_clip.get_tokenizer`` output can be encoded, but is only one narrow block.
    """
    return {
        "embed_dim": VISION_WIDTH,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "layers": VISION_LAYERS,
            "width": VISION_WIDTH,
            "patch_size": PATCH_SIZE,
            "head_width": VISION_WIDTH // VISION_HEADS,
            "mlp_ratio": VISION_MLP / VISION_WIDTH,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def tiny_qwen2_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """Return the tiny Qwen2 text config, with the vocabulary and special ids of ``tokenizer``."""
    endoftext_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=LLM_WIDTH,
        intermediate_size=LLM_MLP,
        num_hidden_layers=LLM_LAYERS,
        num_attention_heads=LLM_HEADS,
        num_key_value_heads=LLM_KV_HEADS,
        max_position_embeddings=LLM_MAX_POSITIONS,
        # Qwen2 conventions: BOS id = <|endoftext|> (never prepended), chat models stop at <|im_end|>
        bos_token_id=endoftext_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=endoftext_id,
        tie_word_embeddings=False,
    )


def tiny_llava_ov_config(tokenizer: PreTrainedTokenizerBase) -> LlavaOnevisionConfig:
    """Return the tiny LLaVA-OneVision config: tiny SigLIP (no head) + 2-layer MLP projector + tiny Qwen2.

    Set like the llava-hf OneVision checkpoints: all patch tokens of the last vision block
    (``vision_feature_layer=-1``, ``vision_feature_select_strategy="full"``: SigLIP has no CLS token
    to drop), AnyRes up to 3x3 tiles, ``anyres_max_9``.
    """
    return LlavaOnevisionConfig(
        vision_config=tiny_siglip_vision_config(use_head=False),
        text_config=tiny_qwen2_config(tokenizer),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        tie_word_embeddings=False,
    )


def tiny_llava_ov_processor(tokenizer: PreTrainedTokenizerBase) -> LlavaOnevisionProcessor:
    """Return the processor matching :func:`tiny_llava_ov_config`.

    ``num_image_tokens`` is the patch-token count of one crop (no CLS, as the strategy is "full"),
    the image processor's ``size`` is the vision input size (it is also the AnyRes tile size) and its
    pinpoints are the model's, so the processor expands each ``<image>`` to exactly the number of
    features the model packs.
    """
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
        image_mean=SIGLIP_MEAN_STD,
        image_std=SIGLIP_MEAN_STD,
    )
    video_processor = LlavaOnevisionVideoProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=SIGLIP_MEAN_STD,
        image_std=SIGLIP_MEAN_STD,
    )
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=PATCH_GRID * PATCH_GRID,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_llava_ov(
    tokenizer: PreTrainedTokenizerBase, seed: int
) -> LlavaOnevisionForConditionalGeneration:
    """Initialise the tiny LLaVA-OneVision in memory (same seed -> same weights), in eval mode."""
    config = tiny_llava_ov_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model.eval()


def build_tiny_siglip(seed: int) -> SiglipVisionModel:
    """Initialise the standalone tiny SigLIP vision tower in memory, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SiglipVisionModel(tiny_siglip_vision_config(use_head=True)).eval()


def build_tiny_clip(seed: int) -> CLIPVisionModel:
    """Initialise the tiny CLIP vision tower in memory, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModel(tiny_clip_vision_config()).eval()


def build_tiny_open_clip(seed: int) -> open_clip.CLIP:
    """Initialise the tiny open_clip CLIP (ViT image tower) in memory, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(**tiny_open_clip_model_config()).eval()


def load_tiny_open_clip(folder: str | Path) -> open_clip.CLIP:
    """Load an open_clip folder written by :func:`build_tiny_zoo`, offline, in eval mode.

    This is open_clip's own ``local-dir:`` loading (config from ``open_clip_config.json``, weights
    from the safetensors file next to it, strict key matching); any open_clip folder in that layout
    loads the same way.

    Args:
        folder: Folder holding ``open_clip_config.json`` and ``open_clip_model.safetensors``.

    Returns:
        The open_clip model; its ViT is ``model.visual`` and its preprocessing config
        ``model.visual.preprocess_cfg``.

    """
    folder = Path(folder)
    for name in (OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"open_clip folder {folder} has no {name}; build it with build_tiny_zoo")
    return open_clip.create_model(f"local-dir:{folder}").eval()


def _write_open_clip(model: open_clip.CLIP, folder: Path) -> None:
    """Save an open_clip model in the layout of open_clip's ``local-dir:`` / HF-hub folders."""
    folder.mkdir(parents=True)
    config = {
        "model_cfg": tiny_open_clip_model_config(),
        "preprocess_cfg": {
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (folder / OPEN_CLIP_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / OPEN_CLIP_WEIGHTS_NAME)


def _write_zoo(root: Path, seed: int) -> None:
    """Build every model of the zoo and save it under ``root`` (an existing empty folder)."""
    zoo = TinyZoo.at(root)
    tokenizer = train_tiny_tokenizer()
    tokenizer.save_pretrained(zoo.tokenizer)

    build_tiny_siglip(seed).save_pretrained(zoo.siglip)
    SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=SIGLIP_MEAN_STD,
        image_std=SIGLIP_MEAN_STD,
    ).save_pretrained(zoo.siglip)

    build_tiny_clip(seed).save_pretrained(zoo.clip)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
    ).save_pretrained(zoo.clip)

    _write_open_clip(build_tiny_open_clip(seed), zoo.open_clip)

    build_tiny_llava_ov(tokenizer, seed).save_pretrained(zoo.llava_ov)
    tiny_llava_ov_processor(tokenizer).save_pretrained(zoo.llava_ov)

    # written last: a manifest means every folder above is complete
    manifest = {**_manifest_key(seed), "folders": list(ZOO_FOLDERS)}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _manifest_key(seed: int) -> dict[str, object]:
    """Return the manifest fields that decide whether a zoo on disk can be reused."""
    return {"format": ZOO_FORMAT, "version": ZOO_VERSION, "seed": seed}


def _read_manifest(root: Path) -> dict[str, object] | None:
    """Return the zoo manifest in ``root``, or None when there is none."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"tiny zoo manifest {path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != ZOO_FORMAT:
        raise ValueError(f"{path} is not a tiny-zoo manifest (expected format {ZOO_FORMAT!r})")
    return manifest


def build_tiny_zoo(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> TinyZoo:
    """Build the tiny offline model zoo in ``out_dir`` (or reuse the one already there).

    Deterministic (the same seed gives identical weights, the tokenizer does not depend on it), no
    download, a few seconds on a CPU. The models are written to a staging folder next to ``out_dir``
    and moved into place when complete, so an interrupted build leaves no half-written zoo.

    Args:
        out_dir: Zoo folder. It may be missing or empty; a folder that already holds a zoo built with
            the same seed and zoo version is reused as is.
        seed: Seed for every weight initialisation.
        overwrite: Replace an existing zoo built with another seed or version. A non-empty folder that
            is not a zoo (or holds anything besides the zoo's own entries) is never deleted.

    Returns:
        The paths of the zoo.

    Raises:
        FileExistsError: ``out_dir`` is a non-empty folder that is not a tiny zoo, holds foreign
            entries, or holds another zoo and ``overwrite`` is False.
        NotADirectoryError: ``out_dir`` exists and is a file.

    """
    root = Path(out_dir)
    zoo = TinyZoo.at(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"tiny zoo output {root} exists and is not a folder")
    manifest = _read_manifest(root)
    entries = {path.name for path in root.iterdir()} if root.is_dir() else set()
    if manifest is None and entries:
        raise FileExistsError(
            f"{root} is not empty and holds no {MANIFEST_NAME}, so it is not a tiny zoo; refusing to write "
            f"into it (choose an empty or new folder)"
        )
    if manifest is not None:
        foreign = entries - {MANIFEST_NAME, *ZOO_FOLDERS}
        if foreign:
            raise FileExistsError(f"tiny zoo {root} also holds {sorted(foreign)}; refusing to touch it")
        expected = _manifest_key(seed)
        found = {key: manifest.get(key) for key in expected}
        complete = all((root / name).is_dir() for name in ZOO_FOLDERS)
        if not overwrite:
            if found == expected and complete:
                return zoo
            state = f"was built with {found}" if found != expected else "is incomplete"
            raise FileExistsError(
                f"tiny zoo {root} {state}, wanted {expected}; pass overwrite=True (--overwrite) to rebuild it"
            )

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the zoo is an ordinary shared output folder
    try:
        _write_zoo(staging, seed)
        if root.exists():
            # only an empty folder or a zoo the caller asked to overwrite reaches this point
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return zoo


def cli_main(argv: list[str] | None = None) -> int:
    """Run ``anomaly-ov make-tiny-zoo``: build the tiny zoo and print its folders."""
    parser = argparse.ArgumentParser(
        prog="anomaly-ov make-tiny-zoo", description="Build the tiny offline model zoo (no download)."
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/zoo"), help="zoo folder (default: outputs/zoo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a zoo built with another seed/version"
    )
    args = parser.parse_args(argv)
    try:
        zoo = build_tiny_zoo(args.out, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, NotADirectoryError, ValueError) as error:
        print(f"make-tiny-zoo: {error}", file=sys.stderr)
        return 1
    for name in ("root", *ZOO_FOLDERS):
        print(f"{name:<10} {getattr(zoo, name)}")
    return 0
