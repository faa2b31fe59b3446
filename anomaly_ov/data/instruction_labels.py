"""Stage-1 labels of instruction records: the explicit, configured rules that say normal or anomalous.

Anomaly-Instruct-125k's files do not all carry ``"anomaly": true|false``. Stage 1 (SPEC §4) needs an image
label, so a record without one is labelled by the first of the configured rules that decides it:

* ``key`` -- the record's own boolean label key (``"anomaly"``);
* ``folder`` -- the image's source folders: a folder named like a normal one (``good``, ``ok``,
  ``normal``) labels it normal; a folder that sits beside such a normal folder in the same file's records
  (MVTec AD's ``test/broken_large`` next to ``test/good``, BMAD's ``test/Ungood`` next to ``test/good``),
  or is named in ``anomalous_folders``, labels it anomalous. Folders of unknown meaning decide nothing;
* ``answer`` -- the first assistant answer's leading "Yes" (anomalous) or "No" (normal), the release's
  detection question being the first one asked.

Records no rule decides stay unlabelled and are not stage-1 samples. :class:`LabelReport` counts, per
source, what each rule labelled and what stayed unlabelled.
"""

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

LABEL_RULES: tuple[str, ...] = ("key", "folder", "answer")
NORMAL_FOLDERS: tuple[str, ...] = ("good", "ok", "normal")
_LEADING_ANSWER = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


@dataclass
class LabelReport:
    """How the records of one instruction file were labelled.

    Attributes:
        source: The file.
        rules: The rules, in the order tried.
        records: Records read.
        by_rule: Records labelled by each rule.
        unlabelled: Records no rule decided.
        per_label: Labelled records per label (0 normal, 1 anomalous).
    """

    source: str
    rules: tuple[str, ...] = ()
    records: int = 0
    by_rule: Counter = field(default_factory=Counter)
    unlabelled: int = 0
    per_label: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        """One line for the log."""
        rules = ", ".join(f"{rule} {self.by_rule.get(rule, 0)}" for rule in self.rules) or "none"
        return (
            f"{self.source}: {self.records} records; labelled by {rules}; {self.unlabelled} unlabelled; "
            f"{self.per_label.get(0, 0)} normal, {self.per_label.get(1, 0)} anomalous"
        )

    def to_dict(self) -> dict[str, object]:
        """Plain dict, ready for JSON."""
        return {
            "source": self.source,
            "records": self.records,
            "by_rule": {rule: self.by_rule.get(rule, 0) for rule in self.rules},
            "unlabelled": self.unlabelled,
            "normal": self.per_label.get(0, 0),
            "anomalous": self.per_label.get(1, 0),
        }


def _folders(record: Mapping[str, object]) -> tuple[str, ...]:
    image = record.get("image")
    first = image[0] if isinstance(image, list) and image else image
    return PurePosixPath(first).parts[:-1] if isinstance(first, str) else ()


class FolderRule:
    """The ``folder`` rule over one file's records (it needs them all to know which folders sit together).

    Args:
        records: The file's records (their ``image`` paths).
        normal_folders: Folder names meaning normal (case-insensitive).
        anomalous_folders: Folder names meaning anomalous wherever they are (case-insensitive).
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, object]],
        normal_folders: Sequence[str] = NORMAL_FOLDERS,
        anomalous_folders: Sequence[str] = (),
    ) -> None:
        self.normal = {name.lower() for name in normal_folders}
        self.anomalous = {name.lower() for name in anomalous_folders}
        # parents of a normal folder: their other children are the defect folders
        self.normal_parents = {
            folders[:index]
            for folders in map(_folders, records)
            for index, name in enumerate(folders)
            if name.lower() in self.normal
        }

    def __call__(self, record: Mapping[str, object]) -> int | None:
        """0, 1, or None when the folders do not decide."""
        folders = _folders(record)
        if any(name.lower() in self.normal for name in folders):
            return 0
        for index, name in enumerate(folders):
            if folders[:index] in self.normal_parents or name.lower() in self.anomalous:
                return 1
        return None


def answer_label(record: Mapping[str, object]) -> int | None:
    """1 if the first assistant answer starts with "Yes", 0 if with "No", else None."""
    for turn in record.get("conversations") or ():
        if isinstance(turn, Mapping) and turn.get("from") == "gpt":
            match = _LEADING_ANSWER.match(str(turn.get("value", "")))
            return None if match is None else int(match.group(1).lower() == "yes")
    return None


def label_records(
    records: Sequence[Mapping[str, object]],
    rules: Sequence[str],
    source: str,
    label_key: str = "anomaly",
    normal_folders: Sequence[str] = NORMAL_FOLDERS,
    anomalous_folders: Sequence[str] = (),
) -> tuple[list[int | None], LabelReport]:
    """Labels each record by the first rule (in ``rules`` order) that decides it.

    Args:
        records: The file's records.
        rules: Names from :data:`LABEL_RULES`, in the order tried.
        source: The file (messages and the report).
        label_key: The boolean label key of the ``key`` rule.
        normal_folders: Folder names meaning normal (``folder`` rule).
        anomalous_folders: Folder names meaning anomalous (``folder`` rule).

    Returns:
        One label per record (None: unlabelled) and the report.

    Raises:
        ValueError: If a rule is unknown or a record's label key is not a boolean (naming the record).
    """
    unknown = [rule for rule in rules if rule not in LABEL_RULES]
    if unknown or not rules:
        raise ValueError(f"label rules {list(rules)}: each must be one of {list(LABEL_RULES)}")
    folder_rule = FolderRule(records, normal_folders, anomalous_folders) if "folder" in rules else None
    report = LabelReport(source, tuple(rules), records=len(records))
    labels: list[int | None] = []
    for index, record in enumerate(records):
        label = None
        for rule in rules:
            if rule == "key" and label_key in record:
                value = record[label_key]
                if not isinstance(value, bool):
                    raise ValueError(
                        f"{source} record {index} (id {record.get('id')!r}): {label_key!r} must be true or "
                        f"false, got {value!r}"
                    )
                label = int(value)
            elif rule == "folder":
                label = folder_rule(record)
            elif rule == "answer":
                label = answer_label(record)
            if label is not None:
                report.by_rule[rule] += 1
                report.per_label[label] += 1
                break
        report.unlabelled += label is None
        labels.append(label)
    return labels, report
