"""Append-only JSON-lines result files that survive interruption, resume, and merge over processes.

Every evaluated item is one JSON line, written and flushed as soon as it is computed, so a killed run keeps
everything it finished. Each process writes its own part file (``<name>.part-<rank>.jsonl``); a rerun
reads the merged file and every part file (whatever number of processes wrote them) to learn which items
are done, and evaluates only the rest. When all processes are done, one of them merges: the lines of the
merged file and of all part files, one per item key, ordered as the benchmark lists its items, go to
``<name>.jsonl``, written atomically, and the part files are removed. A line cut short by a kill (no final
newline, or not JSON) is dropped when read: its item is simply evaluated again.
"""

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from anomaly_ov.atomic_files import atomic_write_text, write_failure

PART_MARKER = ".part-"


def part_path(path: str | Path, rank: int) -> Path:
    """The part file process ``rank`` appends to, beside ``path`` (``x.jsonl`` -> ``x.part-3.jsonl``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{PART_MARKER}{rank}{path.suffix}")


def part_files(path: str | Path) -> list[Path]:
    """Every part file of the merged ``path`` (any number of processes), sorted by rank."""
    path = Path(path)
    found = path.parent.glob(f"{path.stem}{PART_MARKER}*{path.suffix}")

    def rank(part: Path) -> int:
        text = part.stem[len(path.stem) + len(PART_MARKER) :]
        return int(text) if text.isdigit() else -1

    return sorted((p for p in found if rank(p) >= 0), key=rank)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The complete records of a JSON-lines file (none if it does not exist).

    A last line without its newline, or any line that is not a JSON object, is the trace of a killed
    writer: it is left out, so its item is evaluated again.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def finished_records(path: str | Path, key: str) -> dict[str, dict[str, Any]]:
    """Records already finished for the merged file ``path``: its own lines and its part files' lines.

    Args:
        path: The merged results file.
        key: The field that identifies an item.

    Returns:
        Item key -> record (the first one found; the merged file before the parts).
    """
    done: dict[str, dict[str, Any]] = {}
    for file in [Path(path), *part_files(path)]:
        for record in read_jsonl(file):
            if key in record:
                done.setdefault(str(record[key]), record)
    return done


class ResultsWriter:
    """Appends one JSON line per finished item to this process's part file, flushed at once.

    Args:
        path: The merged results file (the writer appends to its part file for ``rank``).
        rank: This process's rank.
    """

    def __init__(self, path: str | Path, rank: int = 0) -> None:
        self.path = part_path(path, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_line()
        self._file = self.path.open("a", encoding="utf-8")

    def _drop_partial_line(self) -> None:
        # a line cut by a kill would glue onto the next record; cut the file back to its last newline
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def append(self, record: Mapping[str, Any]) -> None:
        """Writes one record as a JSON line and flushes it to the operating system.

        Raises:
            OSError: Naming the part file if the write fails (a full disk); a line cut short there is
                dropped when the file is read or reopened, so a rerun evaluates that item again.
        """
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as error:
            raise write_failure(error, self.path, "the lines written before are kept") from error

    def close(self) -> None:
        """Closes the file."""
        self._file.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def merge_results(path: str | Path, key: str, order: Sequence[str]) -> list[dict[str, Any]]:
    """Merges the part files into ``path`` (atomically), one record per key, in ``order``; removes the parts.

    Args:
        path: The merged results file.
        key: The field that identifies an item.
        order: Item keys in benchmark order; records whose key is not listed follow, sorted by key.

    Returns:
        The merged records.
    """
    path = Path(path)
    parts = part_files(path)
    done = finished_records(path, key)
    position = {item: index for index, item in enumerate(order)}
    merged = sorted(done.values(), key=lambda r: (position.get(str(r[key]), len(position)), str(r[key])))
    write_jsonl(path, merged)
    for part in parts:
        part.unlink()
    return merged


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Writes records as JSON lines through a temporary file and a rename (never a half-written file)."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    atomic_write_text(path, lines, "the part files stay; a rerun merges them again")


def write_json(path: str | Path, value: object) -> None:
    """Writes a JSON document through a temporary file and a rename."""
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def shard(items: Sequence[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Process ``rank``'s share of ``items``: every ``world_size``-th item from position ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside 0..{world_size - 1}.")
    return iter(items[rank::world_size])
