"""Append-only result files: a killed writer's half line is dropped, parts of any rank merge in order."""

import json

import pytest

from anomaly_ov.eval.results import (
    ResultsWriter,
    finished_records,
    merge_results,
    part_files,
    read_jsonl,
    shard,
)


def test_half_written_line_is_dropped_and_rewritten(tmp_path):
    path = tmp_path / "detection.jsonl"
    with ResultsWriter(path, rank=0) as writer:
        writer.append({"key": "a", "v": 1})
    part = part_files(path)[0]
    part.write_text(part.read_text() + '{"key": "b", "v"')  # killed mid-line
    assert list(finished_records(path, "key")) == ["a"]
    with ResultsWriter(path, rank=0) as writer:  # resumes: the half line is cut before appending
        writer.append({"key": "b", "v": 2})
    assert read_jsonl(part) == [{"key": "a", "v": 1}, {"key": "b", "v": 2}]


def test_merge_orders_by_benchmark_and_removes_parts(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"key": "c"}) + "\n")  # merged by an earlier run
    for rank, keys in ((0, ["a"]), (1, ["d", "b"]), (2, ["c"])):
        with ResultsWriter(path, rank) as writer:
            for key in keys:
                writer.append({"key": key, "rank": rank})
    merged = merge_results(path, "key", ["a", "b", "c", "d"])
    assert [r["key"] for r in merged] == ["a", "b", "c", "d"]
    assert "rank" not in merged[2]  # the merged file's own line wins over a duplicate
    assert part_files(path) == [] and [r["key"] for r in read_jsonl(path)] == ["a", "b", "c", "d"]


def test_shard_splits_round_robin():
    items = list(range(7))
    assert [list(shard(items, r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="rank=3"):
        shard(items, 3, 3)
