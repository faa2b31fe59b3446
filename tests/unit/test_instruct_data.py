"""Stage-2 instruction data: record validation (each error names the JSON file and index), the length
pre-pass (exact lengths, image-cutting records dropped and listed, text truncation counted, fast), the lazy
dataset (one image reader, long side 1024, truncation flagged, missing images named), the real processor's
collate over its samples, and the length-grouped sampler."""

import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.data.images import BadInputError
from anomaly_ov.data.instruct import (
    InstructDataset,
    InstructRecord,
    RecordError,
    plan_lengths,
    validate_record,
)
from anomaly_ov.data.sampling import LengthGroupedSampler

SOURCE = "/data/set.json"
TURNS = [{"from": "human", "value": "<image>\nDefect?"}, {"from": "gpt", "value": "Yes."}]
RESERVED = 7


def _raw(**fields):
    return {"id": "a", "image": "x.png", "conversations": TURNS, **fields}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["not", "a", "dict"], "is not a JSON object"),
        ({"id": "a", "image": "x.png"}, "has no conversations"),
        (_raw(conversations=[]), "has no conversations"),
        (_raw(conversations="hi"), "has no conversations"),
        (_raw(conversations=[{"from": "human"}, {"from": "gpt", "value": "b"}]), "turn 0 is not"),
        (_raw(conversations=[{"from": "user", "value": "a"}]), "turn 0 has 'from'='user'"),
        (_raw(conversations=[TURNS[1], TURNS[0]]), "roles do not alternate: turn 0 is 'gpt'"),
        (_raw(conversations=[TURNS[0], TURNS[0], TURNS[1]]), "roles do not alternate: turn 1"),
        (_raw(conversations=[*TURNS, {"from": "human", "value": "More?"}]), "does not end with a gpt turn"),
        (_raw(image=3), "'image' must be a path or a list of paths"),
        (_raw(image=["a.png", ""]), "'image' must be a path or a list of paths"),
        (_raw(image=["a.png", "b.png"]), r"1 <image> placeholder\(s\) for 2 image\(s\)"),
        (_raw(image=None), r"1 <image> placeholder\(s\) for 0 image\(s\)"),
        (
            _raw(conversations=[{"from": "human", "value": "<image><image>?"}, TURNS[1]]),
            r"2 <image> placeholder\(s\) for 1 image\(s\)",
        ),
        (
            _raw(conversations=[TURNS[0], {"from": "gpt", "value": "<image>"}]),
            r"turn 1 \(gpt\) holds <image>",
        ),
    ],
)
def test_bad_records_name_file_and_index(raw, message):
    with pytest.raises(RecordError, match=f"^{SOURCE}: record 7: {message}") as error:
        validate_record(raw, SOURCE, 7)
    assert (error.value.source, error.value.index) == (SOURCE, 7)


def test_records_single_multi_view_and_text_only():
    single = validate_record(_raw(extra="kept out"), SOURCE, 0)
    assert single == InstructRecord(SOURCE, 0, "a", ("x.png",), tuple(TURNS))
    views = [{"from": "human", "value": "<image><image><image>\nWhich view?"}, TURNS[1]]
    multi = validate_record({"image": ["v0.png", "v1.png", "v2.png"], "conversations": views}, SOURCE, 4)
    assert multi.images == ("v0.png", "v1.png", "v2.png") and multi.id == "set.json:4"
    text = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, TURNS[1]]
    text_only = validate_record({"id": 12, "conversations": text}, SOURCE, 2)
    assert text_only.images == () and text_only.id == "12" and text_only.name == f"{SOURCE}: record 2"


# ---------------------------------------------------------------------------------------------- pre-pass


def _image_file(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)
    return path


def _toy_length_fn(record, sizes):
    """3 text tokens per turn; an image of (w, h) takes w // 100 + h // 100 reserved positions."""
    ids = []
    for turn in record.conversations:
        ids += [1, 2, 3]
        if IMAGE in turn["value"]:
            for width, height in sizes:
                ids += [RESERVED] * (width // 100 + height // 100)
    return ids


IMAGE = "<image>"


def _rec(index, images=("a.png",), answer_turns=1):
    turns = [{"from": "human", "value": IMAGE * len(images) + "Q"}, {"from": "gpt", "value": "A"}]
    turns += [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}] * (answer_turns - 1)
    return InstructRecord(SOURCE, index, str(index), tuple(images), tuple(turns))


def test_plan_lengths_drops_image_cuts_and_counts_text_truncation(tmp_path):
    _image_file(tmp_path / "a.png", (300, 200))  # 5 reserved positions
    _image_file(tmp_path / "big.png", (4000, 1000))  # limited to 1024 x 256: 10 + 2 = 12 positions
    records = [
        _rec(0),  # 3 + 5 + 3 = 11 tokens
        _rec(1, answer_turns=3),  # 11 + 12 = 23: only text beyond 12 -> truncated by 11
        _rec(2, images=("big.png",)),  # 3 + 12 + 3 = 18: reserved positions 3..14 -> dropped
        _rec(3, images=(), answer_turns=5),  # text only, 30 tokens -> truncated by 18
    ]
    plan = plan_lengths(records, tmp_path, _toy_length_fn, [RESERVED], model_max_length=12)
    assert [r.index for r in plan.records] == [0, 1, 3]
    assert plan.lengths == [11, 23, 30] and plan.multimodal == [True, True, False]
    assert [(d.source, d.index) for d in plan.dropped] == [(SOURCE, 2)]
    assert "18 tokens > model_max_length=12" in plan.dropped[0].reason
    assert "(the last at 14)" in plan.dropped[0].reason
    assert plan.truncated == [(SOURCE, 1, 11), (SOURCE, 3, 18)]

    unlimited = plan_lengths(records, tmp_path, _toy_length_fn, [RESERVED], max_image_side=None)
    assert unlimited.lengths == [11, 23, 3 + 50 + 3, 30] and unlimited.dropped == [] == unlimited.truncated


def test_plan_lengths_names_a_missing_image_and_its_record(tmp_path):
    with pytest.raises(BadInputError, match=rf"{tmp_path / 'a.png'}: image file not found \(an image of "):
        plan_lengths([_rec(5)], tmp_path, _toy_length_fn, [RESERVED])
    with pytest.raises(BadInputError, match=f"{SOURCE}: record 5"):
        plan_lengths([_rec(5)], tmp_path, _toy_length_fn, [RESERVED])
    _image_file(tmp_path / "b.png", (100, 100))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records = [_rec(5), _rec(6, images=("b.png",)), _rec(7, images=("broken.png",))]
    plan = plan_lengths(records, tmp_path, _toy_length_fn, [RESERVED], skip_bad_records=True)
    assert [r.index for r in plan.records] == [6]
    assert [(d.index, "a.png" in d.reason, "not a readable image" in d.reason) for d in plan.dropped] == [
        (5, True, False),
        (7, False, True),
    ]


# ------------------------------------------------------------------------------------------------ dataset


def _toy_encode(calls):
    def encode(turns, images, *, source, image_names):
        calls.append((source, [image.size for image in images], image_names))
        ids = _toy_length_fn(SimpleNamespace(conversations=turns), [image.size for image in images])
        return SimpleNamespace(input_ids=ids, labels=[-100] * len(ids), images=len(images) or None)

    return encode


def test_dataset_reads_images_lazily_through_the_one_reader(tmp_path):
    _image_file(tmp_path / "a.png", (300, 200))
    _image_file(tmp_path / "sub" / "big.png", (4000, 1000))
    records = [_rec(0), _rec(1, images=("a.png", "sub/big.png")), _rec(2, images=(), answer_turns=2)]
    calls = []
    dataset = InstructDataset(records, tmp_path, _toy_encode(calls), reserved_ids=[RESERVED])
    assert len(dataset) == 3 and calls == []  # nothing read at construction
    sample = dataset[1]
    assert calls == [
        (
            f"{SOURCE}: record 1",
            [(300, 200), (1024, 256)],
            [str(tmp_path / "a.png"), str(tmp_path / "sub/big.png")],
        )
    ]
    assert (sample.source, sample.index, sample.truncated_tokens, sample.images) == (SOURCE, 1, 0, 2)
    assert len(sample.input_ids) == len(sample.labels) == 3 + 5 + 12 + 3
    text = dataset[2]
    assert calls[-1][1] == [] and text.images is None and len(text.input_ids) == 12


def test_dataset_truncation_is_flagged_and_never_cuts_image_positions(tmp_path):
    _image_file(tmp_path / "a.png", (300, 200))
    _image_file(tmp_path / "big.png", (4000, 1000))
    records = [_rec(0, answer_turns=3), _rec(1, images=("big.png",))]
    dataset = InstructDataset(
        records, tmp_path, _toy_encode([]), reserved_ids=[RESERVED], model_max_length=12
    )
    sample = dataset[0]
    assert sample.truncated_tokens == 11 and len(sample.input_ids) == len(sample.labels) == 12
    with pytest.raises(RecordError, match=f"{SOURCE}: record 1: 18 tokens > model_max_length=12 would cut"):
        dataset[1]


def test_dataset_names_a_missing_image_and_its_record(tmp_path):
    dataset = InstructDataset([_rec(3, images=("gone.png",))], tmp_path, _toy_encode([]))
    with pytest.raises(
        BadInputError, match=rf"gone.png: image file not found \(an image of {SOURCE}: record 3\)"
    ):
        dataset[0]


# ------------------------------------------------------------------- with the real processor and tokenizer


@pytest.fixture(scope="module")
def processor(tiny_zoo):
    from transformers import LlavaOnevisionProcessor

    from anomaly_ov.models.processor import AnomalyOVProcessor

    return AnomalyOVProcessor(LlavaOnevisionProcessor.from_pretrained(tiny_zoo.llava_ov))


def test_synthetic_mixture_prepass_is_exact_and_fast(tmp_path, synthetic_data, processor):
    from anomaly_ov.data.mixture import load_mixture

    mixture_yaml = tmp_path / "mix.yaml"
    mixture_yaml.write_text(
        f"datasets:\n  - json_path: {synthetic_data.instruct_json}\n"
        f"  - json_path: {synthetic_data.instruct_json}\n    sampling_strategy: 'random:30%'\n"
    )
    records = load_mixture(mixture_yaml, seed=0).records
    assert 80 <= len(records) <= 120

    def encode(turns, images, *, source, image_names):
        return processor.encode(turns, images, source=source, image_names=image_names)

    from anomaly_ov.recipes.finetune import SampleLengths

    # the trainer's length_fn: token ids from the header sizes alone (no pixels)
    length_fn = SampleLengths(processor)

    started = time.perf_counter()
    plan = plan_lengths(records, synthetic_data.root, length_fn, processor.reserved_ids)
    seconds = time.perf_counter() - started
    assert seconds < 2.0, f"pre-pass of {len(records)} records took {seconds:.2f} s"
    dataset = InstructDataset(plan.records, synthetic_data.root, encode, processor.reserved_ids)
    for i in (0, 17, len(dataset) - 1):
        assert len(dataset[i].input_ids) == plan.lengths[i]

    # a limit just before the first record's last image position cuts it (and every record like it): dropped
    # and listed; the records kept keep every reserved position, those longer than the limit are counted
    reserved = processor.reserved_ids
    first = length_fn(records[0], [Image.open(synthetic_data.root / records[0].images[0]).size])
    cut = max(i for i, token in enumerate(first) if token in reserved)
    limited = plan_lengths(records, synthetic_data.root, length_fn, reserved, model_max_length=cut)
    assert (records[0].source, 0) in [(d.source, d.index) for d in limited.dropped]
    assert len(limited.records) + len(limited.dropped) == len(records)
    for record in limited.records:
        sizes = [Image.open(synthetic_data.root / path).size for path in record.images]
        assert not reserved & set(length_fn(record, sizes)[cut:])
    longer = [
        (r.source, r.index, n - cut) for r, n in zip(limited.records, limited.lengths, strict=True) if n > cut
    ]
    assert limited.truncated == longer

    batch = processor.collate([dataset[0], dataset[1]])
    assert batch["input_ids"].shape[0] == 2 and batch["batch_num_images"].tolist() == [1, 1]


# ------------------------------------------------------------------------------------------------ sampler


def _sampler_data(n=103, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 500, n).tolist()
    multimodal = (rng.random(n) < 0.6).tolist()
    return lengths, multimodal


@pytest.mark.parametrize(("batch_size", "world_size"), [(1, 1), (4, 1), (2, 4), (3, 2)])
def test_sampler_covers_every_index_once_homogeneous_and_sorted(batch_size, world_size):
    lengths, multimodal = _sampler_data()
    sampler = LengthGroupedSampler(lengths, multimodal, batch_size, world_size, seed=5)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths))) and len(sampler) == len(lengths)
    batches = sampler.batches()
    mixed = [b for b in batches if len({multimodal[i] for i in b}) > 1]
    assert len(mixed) <= 1
    size = batch_size * world_size
    with_images = sum(multimodal)
    full = with_images // size + (len(lengths) - with_images) // size  # full megabatches, leftovers last
    assert full > 0
    for batch in batches[: full * world_size]:  # full batches, sorted longest first
        assert len(batch) == batch_size
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert list(LengthGroupedSampler(lengths, multimodal, batch_size, world_size, seed=5)) == order
    assert list(LengthGroupedSampler(lengths, multimodal, batch_size, world_size, seed=6)) != order
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(sampler) == list(range(len(lengths)))


def test_sampler_groups_lengths_and_balances_ranks():
    lengths, multimodal = _sampler_data(n=400)
    batch_size, world_size = 4, 2
    sampler = LengthGroupedSampler(lengths, multimodal, batch_size, world_size, seed=0)
    batches = sampler.batches()
    # each megabatch is split into per-rank batches of near-equal total length
    for start in range(0, len(batches) - 2, world_size):
        totals = [sum(lengths[i] for i in batches[start + r]) for r in range(world_size)]
        longest = max(lengths[i] for r in range(world_size) for i in batches[start + r])
        assert max(totals) - min(totals) <= longest
    shares = [
        list(LengthGroupedSampler(lengths, multimodal, batch_size, world_size, seed=0, rank=r))
        for r in (0, 1)
    ]
    assert sorted(shares[0] + shares[1]) == list(range(400))
    assert shares[0] == [i for b in batches[0::2] for i in b]
    assert [len(LengthGroupedSampler(lengths, multimodal, 4, 2, rank=r)) for r in (0, 1)] == [200, 200]
    # without modality grouping, batches mix modalities
    plain = LengthGroupedSampler(
        lengths, multimodal, batch_size, world_size, group_by_modality=False
    ).batches()
    assert sum(len({multimodal[i] for i in b}) > 1 for b in plain) > 1


def test_sampler_single_modality_and_bad_arguments():
    lengths = list(range(1, 11))
    order = list(LengthGroupedSampler(lengths, [False] * 10, 3, 1, seed=0))
    assert sorted(order) == list(range(10))
    with pytest.raises(ValueError, match="10 lengths but 9"):
        LengthGroupedSampler(lengths, [True] * 9, 2)
    with pytest.raises(ValueError, match="rank=2"):
        LengthGroupedSampler(lengths, [True] * 10, 2, world_size=2, rank=2)


def test_dataset_in_dataloader_workers_over_an_arrow_record_table(tmp_path):
    from torch.utils.data import DataLoader

    from anomaly_ov.data.mixture import RecordTable

    _image_file(tmp_path / "a.png", (300, 200))
    records = RecordTable([_rec(0), _rec(1, images=(), answer_turns=2), _rec(2)])
    dataset = InstructDataset(records, tmp_path, _toy_encode([]), reserved_ids=[RESERVED])
    sampler = LengthGroupedSampler([11, 12, 11], [True, False, True], batch_size=1, seed=0)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=1)
    samples = list(loader)
    assert sorted(s.index for s in samples) == [0, 1, 2]
    assert {s.index: len(s.input_ids) for s in samples} == {0: 11, 1: 12, 2: 11}


@pytest.mark.parametrize("sizes", [[(120, 80)], [(80, 200)], [(64, 64), (90, 70)]])
def test_trainer_length_fn_equals_the_encoded_ids_for_non_square_images(processor, sizes):
    """SampleLengths gets (width, height) header sizes; the ids equal a full encoding of such images."""
    from anomaly_ov.recipes.finetune import SampleLengths

    images = tuple(f"{i}.png" for i in range(len(sizes)))
    record = validate_record(
        {
            "id": "x",
            "image": list(images) if len(images) > 1 else images[0],
            "conversations": [
                {"from": "human", "value": "<image>\n" * len(images) + "Is there a defect?"},
                {"from": "gpt", "value": "No."},
            ],
        },
        "mix.json",
        0,
    )
    blanks = [Image.new("RGB", size) for size in sizes]
    expected = processor.encode(record.conversations, blanks).input_ids
    assert SampleLengths(processor)(record, sizes) == expected
