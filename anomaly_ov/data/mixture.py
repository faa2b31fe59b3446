"""The instruction-data mixture (SPEC §4): a YAML list of JSON files, each with a sampling strategy.

The release's shape::

    datasets:
      - json_path: anomaly_instruct/mvtec.json       # relative paths: against the YAML's folder
        sampling_strategy: all                       # all | first:N | end:N | random:N | random:P%
      - json_path: /data/llava_ov/general.json
        sampling_strategy: "random:25%"

``first:P%`` and ``end:P%`` are accepted too (the release parses the percentage for every strategy). A
percentage takes ``ceil(P * n / 100)`` records, as the release does; a count above the file's size takes the
whole file. ``random`` is seeded per entry, so a mixture and a seed always give the same records.

Reading: each JSON file is a list of records whose ``image`` is a string, a list of strings or absent. The
``datasets`` JSON reader cannot hold that (Arrow wants one type per column, and a JSON *list* file is not
JSON lines), so the file is parsed with the standard ``json`` module, the strategy picks record positions,
every picked record is validated and normalised up front (:func:`~anomaly_ov.data.instruct.validate_record`:
``images`` is always a tuple), and the normalised columns are held in a ``datasets.Dataset`` (Arrow, not
Python objects): DataLoader workers then share the mixture's memory instead of copying it page by page as
reference counts change. Records a strategy does not pick are not validated (they never train).
"""

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import datasets
import numpy as np
import yaml

from anomaly_ov.data.instruct import InstructRecord, RecordError, SkippedRecord, validate_record

T = TypeVar("T")

STRATEGY_KINDS: tuple[str, ...] = ("first", "end", "random")
_FEATURES = datasets.Features(
    {
        "source": datasets.Value("string"),
        "index": datasets.Value("int64"),
        "id": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Value("string")),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
    }
)


class MixtureError(ValueError):
    """A mixture YAML that cannot be used; the message names the YAML (and the entry)."""


@dataclass(frozen=True)
class MixtureEntry:
    """One line of a mixture.

    Attributes:
        json_path: The instruction JSON file (absolute, resolved against the YAML's folder).
        sampling_strategy: ``all``, ``first:N``, ``end:N``, ``random:N`` or ``<first|end|random>:P%``.
    """

    json_path: Path
    sampling_strategy: str


def sample_count(strategy: str, total: int) -> int:
    """How many records a strategy takes from a file of ``total`` records.

    Raises:
        ValueError: If the strategy is not one of the known forms.
    """
    if strategy == "all":
        return total
    kind, _, amount = strategy.partition(":")
    if kind not in STRATEGY_KINDS or not amount:
        raise ValueError(
            f"unknown sampling_strategy {strategy!r}; expected all, first:N, end:N, random:N or "
            "<first|end|random>:P%."
        )
    if amount.endswith("%"):
        try:
            percent = Fraction(amount[:-1])
        except ValueError:
            raise ValueError(f"sampling_strategy {strategy!r}: {amount!r} is not a percentage.") from None
        if not 0 <= percent <= 100:
            raise ValueError(f"sampling_strategy {strategy!r}: the percentage must be in [0, 100].")
        # The release rounds up: a 1% sample of 150 records takes 2.
        return math.ceil(percent * total / 100)
    if not amount.isdigit():
        raise ValueError(f"sampling_strategy {strategy!r}: {amount!r} is not a count (N >= 0) or P%.")
    return min(int(amount), total)


def read_mixture(yaml_path: str | Path) -> list[MixtureEntry]:
    """Reads and checks a mixture YAML (it does not open the JSON files).

    As the release's ``data_path``, a ``.json`` file instead of a YAML is a mixture of that one file, all
    its records.

    Args:
        yaml_path: The mixture file, or one instruction JSON file.

    Returns:
        Its entries, in order.

    Raises:
        MixtureError: Naming the YAML: missing or unreadable, no ``datasets`` list, an entry without
            ``json_path``, an unknown ``sampling_strategy``, or a JSON file that does not exist.
    """
    path = Path(yaml_path)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise MixtureError(f"{path}: the instruction JSON file does not exist.")
        return [MixtureEntry(path.expanduser().resolve(), "all")]
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise MixtureError(f"{path}: cannot read the mixture YAML ({error}).") from None
    if not isinstance(content, dict) or not isinstance(content.get("datasets"), list):
        raise MixtureError(
            f"{path}: a mixture YAML needs a 'datasets:' list of {{json_path, sampling_strategy}}."
        )
    if len(content["datasets"]) == 0:
        raise MixtureError(f"{path}: the 'datasets' list is empty.")
    entries = []
    for number, item in enumerate(content["datasets"]):
        where = f"{path}: datasets[{number}]"
        if not isinstance(item, dict) or not isinstance(item.get("json_path"), str) or not item["json_path"]:
            raise MixtureError(f"{where} has no json_path: {item!r}")
        strategy = str(item.get("sampling_strategy", "all")).strip()
        try:
            sample_count(strategy, 0)
        except ValueError as error:
            raise MixtureError(f"{where}: {error}") from None
        json_path = Path(item["json_path"]).expanduser()
        json_path = (json_path if json_path.is_absolute() else path.parent / json_path).resolve()
        if not json_path.is_file():
            raise MixtureError(f"{where}: json_path {json_path} does not exist.")
        entries.append(MixtureEntry(json_path, strategy))
    return entries


def sample_records(records: Sequence[T], strategy: str, seed: int, stream: int = 0) -> list[T]:
    """Applies a sampling strategy to one file's records.

    Args:
        records: The file's records, in file order.
        strategy: ``all``, ``first:N``, ``end:N``, ``random:N`` or ``<first|end|random>:P%``.
        seed: The run's seed.
        stream: A second seed component (the entry's position in the mixture), so that two entries with
            the same strategy do not take the same positions.

    Returns:
        The chosen records, in file order (``random`` picks a seeded random subset).
    """
    count = sample_count(strategy, len(records))
    kind = strategy.partition(":")[0]
    if kind in ("all", "first"):
        return list(records[:count])
    if kind == "end":
        return list(records[len(records) - count :])
    chosen = np.random.default_rng([seed, stream]).permutation(len(records))[:count]
    return [records[int(position)] for position in np.sort(chosen)]


class RecordTable(Sequence[InstructRecord]):
    """A read-only sequence of :class:`InstructRecord` held in Arrow (a ``datasets.Dataset``).

    Args:
        records: The records to hold.
    """

    def __init__(self, records: Sequence[InstructRecord]) -> None:
        columns = {
            "source": [record.source for record in records],
            "index": [record.index for record in records],
            "id": [record.id for record in records],
            "images": [list(record.images) for record in records],
            "conversations": [list(record.conversations) for record in records],
        }
        self.table = datasets.Dataset.from_dict(columns, features=_FEATURES)

    def __len__(self) -> int:
        """Number of records."""
        return self.table.num_rows

    def __getitem__(self, index: int) -> InstructRecord:  # type: ignore[override]
        """Record ``index`` (ints only; negative counts from the end)."""
        if not isinstance(index, int | np.integer):
            raise TypeError(f"RecordTable takes int indices, not {type(index).__name__}.")
        position = int(index) + len(self) if index < 0 else int(index)
        if not 0 <= position < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        return _record(self.table[position])

    def __iter__(self) -> Iterator[InstructRecord]:
        """The records in order."""
        for batch in self.table.iter(batch_size=1024):
            for row in range(len(batch["id"])):
                yield _record({key: column[row] for key, column in batch.items()})


def _record(row: dict) -> InstructRecord:
    return InstructRecord(
        source=row["source"],
        index=row["index"],
        id=row["id"],
        images=tuple(row["images"]),
        conversations=tuple(row["conversations"]),
    )


@dataclass(frozen=True)
class LoadedMixture:
    """The records of a mixture.

    Attributes:
        records: The sampled, validated records (JSON files in mixture order, file order within a file).
        skipped: Bad records left out under ``skip_bad_records`` (for the run folder); empty otherwise.
        counts: ``{json_path: records taken}`` per entry (after skipping).
    """

    records: RecordTable
    skipped: list[SkippedRecord]
    counts: dict[str, int]


def load_mixture(yaml_path: str | Path, seed: int = 0, skip_bad_records: bool = False) -> LoadedMixture:
    """Reads a mixture: every JSON file, sampled by its strategy, every taken record validated up front.

    Args:
        yaml_path: The mixture YAML.
        seed: Seed of the ``random`` strategies.
        skip_bad_records: Leave bad records out and list them (else the first bad record raises).

    Returns:
        The records, the skipped ones and the count per file.

    Raises:
        MixtureError: The YAML or a JSON file is unusable (not JSON, not a list).
        RecordError: A bad record (file and index named), unless ``skip_bad_records``.
    """
    records: list[InstructRecord] = []
    skipped: list[SkippedRecord] = []
    counts: dict[str, int] = {}
    for stream, entry in enumerate(read_mixture(yaml_path)):
        raw = _read_json_list(entry.json_path, yaml_path)
        taken = 0
        for index in sample_records(range(len(raw)), entry.sampling_strategy, seed, stream):
            try:
                records.append(validate_record(raw[index], entry.json_path, index))
                taken += 1
            except RecordError as error:
                if not skip_bad_records:
                    raise
                skipped.append(SkippedRecord(error.source, error.index, error.reason))
        counts[str(entry.json_path)] = taken
    return LoadedMixture(RecordTable(records), skipped, counts)


def _read_json_list(json_path: Path, yaml_path: str | Path) -> list:
    try:
        with json_path.open(encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MixtureError(f"{json_path} (in {yaml_path}): not a readable JSON file ({error}).") from None
    if not isinstance(content, list):
        raise MixtureError(
            f"{json_path} (in {yaml_path}): expected a JSON list of records, not {type(content).__name__}."
        )
    return content
