"""Published dataset layouts: folder look-ups with errors naming the folder and the layout expected.

Readers of the smaller benchmarks live here too (BTAD, MPDD, BrainMRI, HeadCT, Br35H); ELPV and AITEX,
which the field converts in its own ways, have modules of their own.
"""

import csv
from pathlib import Path

from anomaly_ov.data.images import BadInputError, is_image_file
from anomaly_ov.data.zsad import AnomalySample, MVTecSource, sample


class LayoutError(FileNotFoundError):
    """A dataset folder that is not in the layout its reader expects.

    Attributes:
        folder: The folder looked at.
        expected: The layout expected there, in words.
    """

    def __init__(self, folder: str | Path, expected: str, found: str = "") -> None:
        detail = f" ({found})" if found else ""
        super().__init__(f"{folder}: unexpected dataset layout{detail}; expected {expected}")
        self.folder = str(folder)
        self.expected = expected


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of a folder (or of its whole tree), sorted."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(path for path in candidates if is_image_file(path))


def layout_folder(root: Path, name: str, expected: str) -> Path:
    """``root/name``, or ``root/name/name`` when a download nests the folder in one of the same name.

    Some archives (AITEX's among them) extract ``Defect_images/Defect_images/*.png``; both are read alike.

    Raises:
        LayoutError: If ``root/name`` is missing, naming ``root`` and the layout expected.
    """
    folder = root / name
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise LayoutError(root, expected, f"no folder {name}/; found {present[:12]}")
    nested = folder / name
    if nested.is_dir() and not image_files(folder):
        return nested
    return folder


def read_label_folders(
    root: Path, class_name: str, normal: str = "no", anomalous: str = "yes"
) -> list[AnomalySample]:
    """Samples of a dataset laid out as one folder per label (no masks), e.g. ``yes/`` and ``no/``.

    Args:
        root: The folder holding the two label folders.
        class_name: The dataset's single class.
        normal: Folder of the normal images.
        anomalous: Folder of the anomalous images.

    Raises:
        LayoutError: If a label folder is missing or holds no image.
    """
    expected = f"{root}/{{{normal},{anomalous}}}/<images>"
    samples = []
    for folder, label in ((normal, 0), (anomalous, 1)):
        directory = root / folder
        if not directory.is_dir():
            raise LayoutError(root, expected, f"no folder {folder}/")
        images = image_files(directory)
        if not images:
            raise LayoutError(directory, expected, "no image files")
        samples += [sample(image, label, class_name) for image in images]
    return samples


def read_brainmri(root: Path) -> list[AnomalySample]:
    """BrainMRI: all images of ``brain_tumor_dataset/{yes,no}`` (or ``{yes,no}`` directly); class "brain"."""
    nested = root / "brain_tumor_dataset"
    return read_label_folders(nested if nested.is_dir() else root, "brain")


def read_br35h(root: Path) -> list[AnomalySample]:
    """Br35H: ``yes/`` (anomalous) and ``no/`` (normal); ``pred/`` is unlabelled and not read."""
    return read_label_folders(root, "brain")


def read_headct(root: Path) -> list[AnomalySample]:
    """HeadCT: every image of ``labels.csv`` ("id, hemorrhage"), anomalous when hemorrhage is 1.

    Images are ``head_ct/head_ct/NNN.png`` (or ``head_ct/NNN.png``), named by id with three digits.
    """
    expected = f"{root}/labels.csv and {root}/head_ct/head_ct/NNN.png"
    labels = root / "labels.csv"
    if not labels.is_file():
        raise LayoutError(root, expected, "no labels.csv")
    images = root / "head_ct" / "head_ct"
    images = images if images.is_dir() else root / "head_ct"
    if not images.is_dir():
        raise LayoutError(root, expected, "no head_ct/ image folder")
    with labels.open(encoding="utf-8", newline="") as handle:
        # The published header is "id, hemorrhage" (with a space).
        rows = [{key.strip(): value.strip() for key, value in row.items()} for row in csv.DictReader(handle)]
    samples = []
    for number, row in enumerate(rows, start=2):
        if row.get("hemorrhage") not in ("0", "1") or not row.get("id", "").isdigit():
            raise ValueError(f"{labels} line {number}: expected an integer id and hemorrhage 0/1, got {row}")
        samples.append(sample(images / f"{int(row['id']):03d}.png", int(row["hemorrhage"]), "head_ct"))
    return samples


def read_btad(root: Path) -> list[AnomalySample]:
    """BTAD: the test images of every product, anomalous ones (``test/ko``) with their masks.

    Layout: ``<product>/test/{ok,ko}/*`` and ``<product>/ground_truth/ko/<stem>.{png,bmp}``.
    """
    expected = f"{root}/<01|02|03>/test/{{ok,ko}}/* and <product>/ground_truth/ko/*"
    if not root.is_dir():
        raise LayoutError(root, expected, "not a folder")
    products = sorted(p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())
    if not products:
        raise LayoutError(root, expected, "no <product>/test/ folder")
    samples = []
    for product in products:
        for folder in ("test/ok", "test/ko", "ground_truth/ko"):
            if not (product / folder).is_dir():
                raise LayoutError(product, expected, f"no {folder}/")
        samples += [sample(image, 0, product.name) for image in image_files(product / "test" / "ok")]
        masks = {mask.stem: mask for mask in image_files(product / "ground_truth" / "ko")}
        for image in image_files(product / "test" / "ko"):
            if image.stem not in masks:
                raise BadInputError(image, f"no mask with this name in {product / 'ground_truth' / 'ko'}")
            samples.append(sample(image, 1, product.name, masks[image.stem]))
    return samples


def read_mpdd(root: Path) -> list[AnomalySample]:
    """MPDD: MVTec AD's layout, test split, anomalous images with their masks."""
    if not root.is_dir():
        raise LayoutError(root, "MVTec AD's layout <class>/test/{good,<defect>}/*", "not a folder")
    return MVTecSource(root, split="test").read()
