"""Hostile files, each refused with a message naming the file, and nothing of them runs: pickles with a
payload (as the released expert, as a training state), safetensors whose header lies, model folders with
remote code, records whose image paths leave their root, a mixture YAML with Python tags, a decompression
bomb, a zero-byte or truncated PNG, a TIFF of thousands of pages.

Every payload would create the file ``PWNED`` beside the test's files; each test asserts it does not exist.
"""

import io
import json
import os
import pickle
import shutil
import struct
import zlib
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

from anomaly_ov.data.images import MAX_PIXELS_ENV, BadInputError, image_size, read_image
from anomaly_ov.eval.records import BadRecordError
from anomaly_ov.models.expert import AnomalyExpert, ExpertConfig
from anomaly_ov.weights_files import UntrustedFileError

CONVERSATION = [{"from": "human", "value": "<image>\nAny defect?"}, {"from": "gpt", "value": "No."}]


class Payload:
    """Unpickled, it would run a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a hostile file ran code"


def _pickled(path: Path, marker: Path, zip_format: bool) -> Path:
    if zip_format:  # torch's own format, the payload beside a tensor
        torch.save({"positive_embedding": torch.zeros(1, 8), "negative_embedding": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"negative_embedding": Payload(marker)}, protocol=2))
    return path


# ---------------------------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("zip_format", [False, True], ids=["raw-pickle", "torch-save"])
def test_a_released_expert_pickle_with_a_payload_is_refused_before_it_runs(tmp_path, marker, zip_format):
    from anomaly_ov.models.expert_io import load_official_expert

    evil = _pickled(tmp_path / "pretrained_expert_05b.pth", marker, zip_format)
    with pytest.raises(UntrustedFileError, match="refused -- the pickle holds more than tensors") as refused:
        load_official_expert(evil)
    assert str(evil) in str(refused.value) and "weights_only=False" not in str(refused.value)
    assert "GLOBAL posix.system" in str(refused.value)  # what was refused is the payload's call


def test_a_pickle_given_as_a_stage1_training_state_or_expert_is_refused(tmp_path, marker):
    from anomaly_ov.checkpoints.training_state import EpochCheckpoint, latest_checkpoint, load_training_state
    from anomaly_ov.models.expert_io import load_expert

    # a run folder from elsewhere whose checkpoint files are pickles with a payload
    folder = tmp_path / "run" / "checkpoints" / "epoch_001"
    folder.mkdir(parents=True)
    _pickled(folder / "training_state.safetensors", marker, zip_format=True)
    _pickled(folder / "expert.safetensors", marker, zip_format=False)
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint == EpochCheckpoint(1, folder)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UntrustedFileError, match="not a valid safetensors file") as refused:
        load_training_state(checkpoint, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1))
    assert str(checkpoint.state) in str(refused.value)
    with pytest.raises(UntrustedFileError, match="not a valid safetensors file") as refused:
        load_expert(checkpoint.model)
    assert str(checkpoint.model) in str(refused.value)


def _safetensors(path: Path, header: dict, data: bytes, header_length: int | None = None) -> Path:
    encoded = json.dumps(header).encode()
    length = len(encoded) if header_length is None else header_length
    path.write_bytes(struct.pack("<Q", length) + encoded + data)
    return path


LYING_HEADERS = {
    # a 1000 x 1000 float tensor over 16 bytes of data
    "shape-larger-than-data": (
        {"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}},
        16,
    ),
    # 3 floats (12 bytes) claimed over 16 bytes
    "shape-vs-offsets": ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, 16),
    # two tensors over the same bytes
    "overlapping-offsets": (
        {
            "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        },
        16,
    ),
    # offsets past the end of the file
    "offsets-past-the-end": ({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, 16),
}


@pytest.mark.parametrize("lie", [*LYING_HEADERS, "header-length"])
def test_a_safetensors_file_whose_header_lies_is_refused_naming_it(tmp_path, lie):
    from anomaly_ov.models.expert_io import load_expert_weights

    path = tmp_path / "expert.safetensors"
    if lie == "header-length":  # a header length of a terabyte
        _safetensors(path, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16), 10**12)
    else:
        header, size = LYING_HEADERS[lie]
        _safetensors(path, header, bytes(size))
    expert = AnomalyExpert(ExpertConfig(vision_dim=16, expert_dim=8, grid=4, num_levels=2))
    before = {k: v.clone() for k, v in expert.state_dict().items()}
    with pytest.raises(UntrustedFileError, match="not a valid safetensors file") as refused:
        load_expert_weights(expert, path)
    assert str(path) in str(refused.value)
    assert all(torch.equal(before[k], v) for k, v in expert.state_dict().items())  # nothing loaded


# ---------------------------------------------------------------------------------------------- remote code


def _remote_code_folder(tiny_zoo, tmp_path: Path, marker: Path, auto_map_in: str | None) -> Path:
    folder = tmp_path / "llava"
    shutil.copytree(tiny_zoo.llava_ov, folder)
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    (folder / "modeling_evil.py").write_text(code)
    (folder / "tokenization_evil.py").write_text(code)
    if auto_map_in is not None:
        config = json.loads((folder / auto_map_in).read_text())
        name = "AutoModel" if auto_map_in == "config.json" else "AutoTokenizer"
        config["auto_map"] = {name: "modeling_evil.EvilModel"}
        (folder / auto_map_in).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_a_folder_naming_remote_code_is_refused_naming_the_config(tiny_zoo, tmp_path, marker, config_file):
    from anomaly_ov.models.mllm_builders import load_llava_onevision, load_processor

    folder = _remote_code_folder(tiny_zoo, tmp_path, marker, config_file)
    load = load_llava_onevision if config_file == "config.json" else load_processor
    with pytest.raises(UntrustedFileError, match="names remote code") as refused:
        load(str(folder))
    assert str(folder / config_file) in str(refused.value)


def test_python_files_in_a_model_folder_are_never_imported(tiny_zoo, tmp_path, marker):
    from anomaly_ov.models.mllm_builders import load_llava_onevision, load_processor

    folder = _remote_code_folder(tiny_zoo, tmp_path, marker, auto_map_in=None)
    assert load_llava_onevision(str(folder)) is not None and load_processor(str(folder)) is not None
    # (the marker fixture asserts that neither .py file ran)


# ---------------------------------------------------------------------------------------------- records


def _png(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 80, 40)).save(path)
    return path


@pytest.fixture
def benchmark(tmp_path):
    """A benchmark root with one good image, and a secret image outside it (reachable through a symlink)."""
    root = tmp_path / "bench"
    _png(root / "VisA" / "candle" / "good.png")
    secret = _png(tmp_path / "outside" / "secret.png")
    (root / "VisA" / "candle" / "link.png").symlink_to(secret)
    return root, secret


ESCAPES = {
    "dot-dot": "VisA/candle/../../../outside/secret.png",
    "absolute": None,  # the secret's absolute path
    "symlink": "VisA/candle/link.png",
}


@pytest.mark.parametrize("escape", ESCAPES)
def test_benchmark_records_leaving_the_root_are_refused(benchmark, escape):
    from anomaly_ov.eval.detection import read_detection_records

    root, secret = benchmark
    image = ESCAPES[escape] or str(secret)
    path = root / "test_data.json"
    path.write_text(
        json.dumps([{"image": "VisA/candle/good.png", "anomaly": False}, {"image": image, "anomaly": True}])
    )
    with pytest.raises(BadRecordError, match="allow_outside_root=true") as refused:
        read_detection_records(path, root)
    assert str(path) in str(refused.value) and image in str(refused.value)
    records, checker = read_detection_records(path, root, skip_bad_records=True)
    assert [r.image for r in records] == ["VisA/candle/good.png"] and len(checker.skipped) == 1
    if escape != "absolute":  # an explicit allow_outside_root reads it (class_of needs a relative path)
        records, _ = read_detection_records(path, root, allow_outside_root=True)
        assert len(records) == 2


def test_mmad_and_reasoning_records_leaving_the_root_are_refused(benchmark):
    from anomaly_ov.eval.mmad import read_mmad
    from anomaly_ov.eval.reasoning import read_reasoning_records

    root, _ = benchmark
    reasoning = root / "visa_dr.json"
    entry = {"image": ESCAPES["dot-dot"], "questions": ["q"], "answers": ["a"]}
    reasoning.write_text(json.dumps([entry]))
    with pytest.raises(BadRecordError, match="leaves the root") as refused:
        read_reasoning_records(reasoning, root, "answers", [])
    assert str(reasoning) in str(refused.value)
    questions = root / "mmad.json"
    turn = {"Question": "Is there a defect?", "Options": {"A": "Yes", "B": "No"}, "Answer": "A", "type": "x"}
    questions.write_text(
        json.dumps(
            {
                "VisA/candle/good.png": {"conversation": [turn], "random_templates": [ESCAPES["symlink"]]},
            }
        )
    )
    with pytest.raises(BadRecordError, match="leaves the root") as refused:
        read_mmad(questions, root, shots=1)
    assert str(questions) in str(refused.value) and "link.png" in str(refused.value)


@pytest.mark.parametrize("escape", ESCAPES)
def test_instruction_records_leaving_the_image_root_are_refused(benchmark, escape):
    from anomaly_ov.data.instruct import plan_lengths, validate_record

    root, secret = benchmark
    image = ESCAPES[escape] or str(secret)
    records = [
        validate_record({"image": "VisA/candle/good.png", "conversations": CONVERSATION}, "mix.json", 0),
        validate_record({"image": image, "conversations": CONVERSATION}, "mix.json", 1),
    ]
    plan = partial(plan_lengths, records, root, lambda record, sizes: [1, 2, 3], [])
    with pytest.raises(BadInputError, match=r"data\.allow_outside_root=true") as refused:
        plan()
    assert "mix.json" in str(refused.value) and "record 1" in str(refused.value)
    kept = plan(skip_bad_records=True)
    assert [r.index for r in kept.records] == [0] and len(kept.dropped) == 1
    assert len(plan(allow_outside_root=True).records) == 2


def test_a_mixture_yaml_with_python_tags_is_refused_and_never_runs(tmp_path, marker):
    from anomaly_ov.data.mixture import MixtureError, load_mixture

    path = tmp_path / "mixture.yaml"
    path.write_text(
        f"datasets:\n  - json_path: !!python/object/apply:os.system ['touch {marker}']\n"
        "    sampling_strategy: all\n"
    )
    with pytest.raises(MixtureError, match="cannot read the mixture YAML") as refused:
        load_mixture(path)
    assert str(path) in str(refused.value)


# ---------------------------------------------------------------------------------------------- images


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` with a few bytes of pixel data (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    pixels = zlib.compress(b"\0" * (width + 1) * 4)  # four rows of the image
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "size", [(12000, 8000), (40000, 40000)], ids=["above-the-limit", "above-twice-the-limit"]
)
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, size):
    # 96 Mpx: PIL only warns (its error starts at twice its 89.5 Mpx limit); 1.6 Gpx: PIL refuses too
    bomb = _png_header_only(tmp_path / "bomb.png", *size)
    for reader in (read_image, image_size):
        with pytest.raises(BadInputError, match=r"exceeds the limit|decompression bomb") as refused:
            reader(bomb)
        assert str(bomb) in str(refused.value)


def test_the_pixel_limit_is_configurable(tmp_path, monkeypatch):
    image = _png(tmp_path / "normal.png", (100, 60))
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")
    with pytest.raises(BadInputError, match=f"6000 pixels exceeds the limit of 5000.*{MAX_PIXELS_ENV}"):
        read_image(image)
    monkeypatch.setenv(MAX_PIXELS_ENV, "6000")
    assert read_image(image).size == (100, 60)
    monkeypatch.setenv(MAX_PIXELS_ENV, "none")
    assert image_size(_png_header_only(tmp_path / "big.png", 12000, 8000)) == (12000, 8000)


def test_zero_byte_and_truncated_pngs_are_refused_naming_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="not a readable image") as refused:
        read_image(empty)
    assert str(empty) in str(refused.value)
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadInputError, match="truncated") as refused:
        read_image(truncated)
    assert str(truncated) in str(refused.value)


def test_a_tiff_of_thousands_of_pages_is_refused_quickly(tmp_path):
    import time

    pages = [Image.new("L", (8, 8), value % 256) for value in range(1000)]
    tiff = tmp_path / "pages.tif"
    pages[0].save(tiff, save_all=True, append_images=pages[1:])
    start = time.perf_counter()
    for reader in (read_image, image_size):
        with pytest.raises(BadInputError, match="TIFF with several pages") as refused:
            reader(tiff)
        assert str(tiff) in str(refused.value)
    assert time.perf_counter() - start < 2.0  # the pages are not walked
    single = tmp_path / "one.tif"
    pages[0].save(single)
    assert read_image(single).size == (8, 8)
