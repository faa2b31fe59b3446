"""The instruction mixture: strategies (counts, determinism, rounding), YAML errors naming the file, record
errors naming the JSON file and index, skip_bad_records, the Arrow-held record table."""

import json

import pytest

from anomaly_ov.data.instruct import InstructRecord, RecordError
from anomaly_ov.data.mixture import (
    MixtureError,
    RecordTable,
    load_mixture,
    read_mixture,
    sample_count,
    sample_records,
)


def _record(i, image=True):
    record = {
        "id": f"r{i}",
        "conversations": [
            {"from": "human", "value": ("<image>\n" if image else "") + f"Question {i}?"},
            {"from": "gpt", "value": f"Answer {i}."},
        ],
    }
    if image:
        record["image"] = f"img/{i}.png"
    return record


def _write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("strategy", "total", "expected"),
    [
        ("all", 10, 10),
        ("first:3", 10, 3),
        ("end:4", 10, 4),
        ("random:7", 10, 7),
        ("random:50", 10, 10),  # more than the file holds: the whole file, as the release's slicing
        ("first:0", 10, 0),
        ("random:10%", 30, 3),  # exact
        ("random:10%", 31, 4),  # 3.1 -> 4: the release rounds up
        ("random:1%", 150, 2),
        ("end:33%", 3, 1),  # 0.99 -> 1
        ("random:12.5%", 8, 1),
        ("random:100%", 7, 7),
        ("random:0%", 7, 0),
    ],
)
def test_sample_count(strategy, total, expected):
    assert sample_count(strategy, total) == expected
    assert len(sample_records(list(range(total)), strategy, seed=0)) == expected


@pytest.mark.parametrize(
    "strategy", ["some", "first", "first:", "first:-1", "random:x", "random:150%", "top:3"]
)
def test_unknown_strategies(strategy):
    with pytest.raises(ValueError, match="sampling_strategy"):
        sample_count(strategy, 10)


def test_first_end_random_take_the_right_records():
    records = list(range(20))
    assert sample_records(records, "first:3", seed=0) == [0, 1, 2]
    assert sample_records(records, "end:3", seed=0) == [17, 18, 19]
    assert sample_records(records, "end:0", seed=0) == []  # not the whole file (the release's [-0:])
    assert sample_records(records, "first:25%", seed=0) == [0, 1, 2, 3, 4]
    chosen = sample_records(records, "random:5", seed=3)
    assert chosen == sample_records(records, "random:5", seed=3)  # seeded
    assert chosen == sorted(chosen) and len(set(chosen)) == 5  # a subset, in file order
    seeds = {tuple(sample_records(records, "random:5", seed=s)) for s in range(10)}
    streams = {tuple(sample_records(records, "random:5", seed=3, stream=s)) for s in range(10)}
    assert len(seeds) > 5 and len(streams) > 5


def test_read_mixture_resolves_relative_paths_and_defaults(tmp_path):
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "a.json", [])
    absolute = _write(tmp_path / "b.json", [])
    yaml_path = _write(
        tmp_path / "mix.yaml",
        "datasets:\n  - json_path: data/a.json\n    sampling_strategy: 'random:5%'\n"
        f"  - json_path: {absolute}\n",
    )
    entries = read_mixture(yaml_path)
    assert [e.json_path for e in entries] == [tmp_path / "data" / "a.json", absolute]
    assert [e.sampling_strategy for e in entries] == ["random:5%", "all"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the mixture YAML"),
        ("datasets: [unclosed", "cannot read the mixture YAML"),
        ("other: 1\n", "needs a 'datasets:' list"),
        ("datasets: []\n", "is empty"),
        ("datasets:\n  - sampling_strategy: all\n", r"datasets\[0\] has no json_path"),
        (
            "datasets:\n  - json_path: a.json\n    sampling_strategy: most\n",
            r"datasets\[0\]: unknown sampling",
        ),
        (
            "datasets:\n  - json_path: a.json\n  - json_path: nope.json\n",
            r"datasets\[1\]: json_path .*nope.json",
        ),
    ],
)
def test_yaml_errors_name_the_yaml(tmp_path, content, message):
    _write(tmp_path / "a.json", [])
    yaml_path = tmp_path / "mix.yaml"
    if content is not None:
        _write(yaml_path, content)
    with pytest.raises(MixtureError, match=message) as error:
        read_mixture(yaml_path)
    assert str(yaml_path) in str(error.value)


def test_unreadable_json_names_the_file(tmp_path):
    _write(tmp_path / "a.json", "[{not json")
    _write(tmp_path / "b.json", {"records": []})
    for name in ("a.json", "b.json"):
        yaml_path = _write(tmp_path / "mix.yaml", f"datasets:\n  - json_path: {name}\n")
        with pytest.raises(MixtureError, match=f"{tmp_path / name}"):
            load_mixture(yaml_path)


def test_load_mixture_counts_order_determinism_and_text_only(tmp_path):
    _write(tmp_path / "a.json", [_record(i) for i in range(40)])
    _write(tmp_path / "b.json", [_record(i, image=i % 2 == 0) for i in range(10)])
    yaml_path = _write(
        tmp_path / "mix.yaml",
        "datasets:\n  - json_path: a.json\n    sampling_strategy: 'random:25%'\n"
        "  - json_path: b.json\n    sampling_strategy: end:4\n",
    )
    mixture = load_mixture(yaml_path, seed=1)
    assert len(mixture.records) == 14 and mixture.skipped == []
    assert mixture.counts == {str(tmp_path / "a.json"): 10, str(tmp_path / "b.json"): 4}
    records = list(mixture.records)
    assert [r.index for r in records[10:]] == [6, 7, 8, 9]
    assert [r.images for r in records[10:]] == [("img/6.png",), (), ("img/8.png",), ()]
    assert records[11].conversations[0] == {"from": "human", "value": "Question 7?"}
    assert all(r.source == str(tmp_path / "a.json") for r in records[:10])
    assert records == [mixture.records[i] for i in range(len(records))]
    assert mixture.records[-1] == records[-1]
    again = load_mixture(yaml_path, seed=1)
    assert list(again.records) == records
    other = load_mixture(yaml_path, seed=2)
    assert [r.index for r in other.records][:10] != [r.index for r in records][:10]


def test_a_bad_record_names_file_and_index_or_is_skipped_and_listed(tmp_path):
    records = [_record(i) for i in range(5)]
    records[1] = {"id": "x", "image": "a.png"}  # no conversations
    records[3]["conversations"].append({"from": "gpt", "value": "again"})  # roles do not alternate
    _write(tmp_path / "a.json", records)
    yaml_path = _write(tmp_path / "mix.yaml", "datasets:\n  - json_path: a.json\n")
    with pytest.raises(RecordError, match=f"{tmp_path / 'a.json'}: record 1: has no conversations"):
        load_mixture(yaml_path)
    mixture = load_mixture(yaml_path, skip_bad_records=True)
    assert [r.index for r in mixture.records] == [0, 2, 4]
    assert [(s.source, s.index) for s in mixture.skipped] == [
        (str(tmp_path / "a.json"), 1),
        (str(tmp_path / "a.json"), 3),
    ]
    assert "roles do not alternate" in mixture.skipped[1].reason


def test_record_table_round_trips_records():
    records = [
        InstructRecord("a.json", 0, "x", ("p.png", "q.png"), ({"from": "human", "value": "<image><image>"},)),
        InstructRecord(
            "b.json", 5, "y", (), ({"from": "system", "value": "s"}, {"from": "human", "value": "h"})
        ),
    ]
    table = RecordTable(records)
    assert len(table) == 2 and list(table) == records and table[1] == records[1] and table[-2] == records[0]
    with pytest.raises(IndexError):
        table[2]
    assert len(RecordTable([])) == 0


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _placed(tmp_path, name):
    """A copy of a shipped mixture YAML at data/mixtures/ of a fake checkout, with every JSON it names."""
    import yaml

    folder = tmp_path / "data" / "mixtures"
    folder.mkdir(parents=True)
    text = (REPO / "data" / "mixtures" / name).read_text()
    for item in yaml.safe_load(text)["datasets"]:
        target = folder / item["json_path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps([_record(0), _record(1, image=False)]))
    return _write(folder / name, text)


def test_the_release_mixture_yaml_reads(tmp_path):
    entries = read_mixture(_placed(tmp_path, "anomaly_instruct_release.yaml"))
    names = [e.json_path.name for e in entries]
    assert len(entries) == 17 and len(set(names)) == 17
    assert names[:6] == [
        "anomaly_shapenet_zero_shot2.json",
        "bmad_zero_shot.json",
        "mvtec_zero_shot.json",
        "mvtec3d_zero_shot2.json",
        "real3d_zero_shot2.json",
        "webad_processed.json",
    ]
    assert names[-1] == "llava_med_instruct_60k_im.json"
    assert {e.sampling_strategy for e in entries} == {"all"}
    assert all(e.json_path.is_relative_to((tmp_path / "datasets").resolve()) for e in entries)


def test_one_instruction_json_is_a_mixture_of_all_its_records(tmp_path):
    # as the release's data_path: a .json instead of a YAML (the default config's synthetic instruct.json)
    json_path = tmp_path / "instruct.json"
    json_path.write_text(json.dumps([_record(0), _record(1, image=False), _record(2)]))
    mixture = load_mixture(json_path)
    assert len(mixture.records) == 3 and mixture.counts == {str(json_path.resolve()): 3}
    assert [record.index for record in mixture.records] == [0, 1, 2]
    with pytest.raises(MixtureError, match=r"missing\.json: the instruction JSON file does not exist"):
        read_mixture(tmp_path / "missing.json")
