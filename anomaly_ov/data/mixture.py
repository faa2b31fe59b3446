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
JSON lines), so the file is parsed with the standard ``json`` module, every record is validated and
normalised (:func:`~anomaly_ov.data.instruct.validate_record`: ``images`` is always a list), and the
normalised columns are held in a ``datasets.Dataset`` (Arrow, not Python objects): DataLoader workers then
share the mixture's memory instead of copying it page by page as reference counts change.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from anomaly_ov.data.instruct import InstructRecord, SkippedRecord

T = TypeVar("T")


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
    raise NotImplementedError


def read_mixture(yaml_path: str | Path) -> list[MixtureEntry]:
    """Reads and checks a mixture YAML (it does not open the JSON files).

    Args:
        yaml_path: The mixture file.

    Returns:
        Its entries, in order.

    Raises:
        MixtureError: Naming the YAML: missing or unreadable, no ``datasets`` list, an entry without
            ``json_path``, an unknown ``sampling_strategy``, or a JSON file that does not exist.
    """
    raise NotImplementedError


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
    raise NotImplementedError


class RecordTable(Sequence[InstructRecord]):
    """A read-only sequence of :class:`InstructRecord` held in Arrow (a ``datasets.Dataset``)."""

    def __len__(self) -> int:
        """Number of records."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> InstructRecord:  # type: ignore[override]
        """Record ``index`` (ints only)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[InstructRecord]:
        """The records in order."""
        raise NotImplementedError


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
    raise NotImplementedError
