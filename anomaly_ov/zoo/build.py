"""Building, reusing and laying out the tiny zoo on disk (:func:`build_tiny_zoo`, ``make-tiny-zoo``)."""

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers import CLIPImageProcessor, SiglipImageProcessor

from anomaly_ov.zoo.llava import build_tiny_llava_ov, tiny_llava_ov_processor
from anomaly_ov.zoo.tokenizer import train_tiny_tokenizer
from anomaly_ov.zoo.towers import (
    IMAGE_SIZE,
    OPENAI_MEAN,
    OPENAI_STD,
    SIGLIP_MEAN_STD,
    build_tiny_clip,
    build_tiny_open_clip,
    build_tiny_siglip,
    write_open_clip,
)

ZOO_FORMAT = "anomaly-ov-tiny-zoo"
# Bump whenever the architecture, the tokenizer corpus or the file layout changes, so that a stale zoo
# on disk is not silently reused.
ZOO_VERSION = 1
MANIFEST_NAME = "zoo.json"
ZOO_FOLDERS: tuple[str, ...] = ("siglip", "clip", "open_clip", "tokenizer", "llava_ov")


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

    write_open_clip(build_tiny_open_clip(seed), zoo.open_clip)

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
