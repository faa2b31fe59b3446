"""Benchmark records: reading a benchmark file, bad-record errors, and the skip report.

A benchmark file (VisA-D&R's ``test_data.json`` / ``visa_dr.json``, MMAD's ``mmad.json``) lists records whose
image paths are relative to the benchmark root (the release's ``data_dir``). A record that cannot be
evaluated (missing image, malformed fields) is an error naming the file and the record, or, with the
explicit ``skip_bad_records`` option, an entry of the skip report written beside the results.
"""

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from anomaly_ov.data.roots import outside_root


class BadRecordError(ValueError):
    """A benchmark record that cannot be evaluated, with the file, the record and the reason.

    Attributes:
        source: The benchmark file.
        record: The record's name (its index and image path).
        reason: What is wrong with it.
    """

    def __init__(self, source: str | Path, record: str, reason: str) -> None:
        super().__init__(
            f"{source}: record {record}: {reason} (pass skip_bad_records=true to skip such records and "
            "list them in skipped_records.json)"
        )
        self.source = str(source)
        self.record = record
        self.reason = reason


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out under ``skip_bad_records``.

    Attributes:
        source: The benchmark file.
        record: The record's name (index and image path).
        reason: Why it was left out.
    """

    source: str
    record: str
    reason: str


class RecordChecker:
    """Raises :class:`BadRecordError`, or collects the record as skipped when skipping is on.

    Args:
        source: The benchmark file (for messages).
        skip_bad_records: Collect bad records instead of raising.
    """

    def __init__(self, source: str | Path, skip_bad_records: bool) -> None:
        self.source = str(source)
        self.skip_bad_records = skip_bad_records
        self.skipped: list[SkippedRecord] = []

    def bad(self, record: str, reason: str) -> None:
        """Reports a bad record: raises, or records it as skipped.

        Raises:
            BadRecordError: Unless ``skip_bad_records`` is on.
        """
        if not self.skip_bad_records:
            raise BadRecordError(self.source, record, reason)
        self.skipped.append(SkippedRecord(self.source, record, reason))


def leaves_root(checker: RecordChecker, name: str, root: str | Path, image: str, allow: bool) -> bool:
    """Reports a record whose image path leaves the benchmark root (absolute, ``..``, a symlink out).

    Args:
        checker: Raises on, or collects, the record.
        name: The record's name.
        root: The benchmark root.
        image: The image path as the record gives it.
        allow: ``benchmark.allow_outside_root``: such paths are read.

    Returns:
        Whether the record was reported (skip it).
    """
    reason = None if allow else outside_root(root, image)
    if reason is not None:
        checker.bad(name, f"{reason}; set benchmark.allow_outside_root=true to read it")
    return reason is not None


def load_benchmark_json(path: str | Path, expected: type) -> Any:
    """Reads a benchmark file and checks its top-level type.

    Args:
        path: The JSON file.
        expected: ``list`` (VisA-D&R) or ``dict`` (MMAD).

    Raises:
        FileNotFoundError: If the file is missing (saying which root and file were asked for).
        ValueError: If it is not JSON or not of the expected type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark file {path} not found; set benchmark.root (the folder the records' image paths are "
            "relative to) and the benchmark file names"
        )
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, expected):
        raise ValueError(f"{path}: expected a JSON {expected.__name__}, found {type(value).__name__}")
    return value


def image_entries(path: str | Path, checker: RecordChecker) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The records of a VisA-D&R-style list file that name an image, each with its name for messages.

    A record that is not an object or has no non-empty ``image`` string goes to ``checker``.

    Args:
        path: The benchmark file (a JSON list).
        checker: Raises on, or collects, the bad records.

    Yields:
        ``(name, image, record)``: the record's name (``#<index> (<image>)``), its image path and the record.
    """
    for index, entry in enumerate(load_benchmark_json(path, list)):
        image = entry.get("image") if isinstance(entry, dict) else None
        name = f"#{index} ({image})" if isinstance(image, str) else f"#{index}"
        if not isinstance(image, str) or not image:
            checker.bad(name, "'image' must be a non-empty string")
            continue
        yield name, image, entry


def write_skip_report(path: str | Path, skipped: list[SkippedRecord]) -> None:
    """Writes the skipped records as a JSON list (an empty list when none were skipped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(s) for s in skipped], indent=2) + "\n", encoding="utf-8")
