"""The command line of ``scripts/prepare_<dataset>.py``: read a layout, check every file, write a manifest.

    python scripts/prepare_aitex.py --root datasets/AITEX [--whole-strips]
    python scripts/prepare_elpv.py --root datasets/elpv-dataset [--label-rule any]
    python scripts/prepare_elpv.py --installed --out outputs/elpv/manifest.jsonl   # the elpv-dataset package

Counts (images, anomalous, masks, classes) are printed; a bad file stops the preparation with its name, or
with ``--skip-bad`` is left out and listed in ``<manifest>.skipped.json``.
"""

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anomaly_ov.data.images import BadInputError, SkippedFile
from anomaly_ov.data.manifest import write_manifest
from anomaly_ov.data.prepare import aitex, elpv, layouts
from anomaly_ov.data.zsad import AnomalySample, screen_samples, write_skipped


@dataclass(frozen=True)
class Preparation:
    """How one dataset is prepared.

    Attributes:
        title: The dataset's name in messages.
        read: ``(root, out_dir, args) -> samples``; ``out_dir`` is the manifest's folder.
        add_options: Adds the dataset's own options to the parser (or None).
        installed: Finds the dataset installed as a package (``--installed``), or None.
    """

    title: str
    read: Callable[[Path, Path, argparse.Namespace], list[AnomalySample]]
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    installed: Callable[[], Path] | None = None


def _elpv_options(parser: argparse.ArgumentParser) -> None:
    rules = "; ".join(f"{name}: {text}" for name, text in elpv.LABEL_RULES.items())
    parser.add_argument("--label-rule", choices=sorted(elpv.LABEL_RULES), default="certain", help=rules)


def _aitex_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--whole-strips", action="store_true", help="keep the 4096x256 strips (default: 256x256 patches)"
    )
    parser.add_argument("--patch-size", type=int, default=aitex.PATCH_SIZE, help="patch side in pixels")


PREPARATIONS: dict[str, Preparation] = {
    "aitex": Preparation(
        "AITEX",
        lambda root, out, args: aitex.read_aitex(
            root, out / "aitex_prepared", whole_strips=args.whole_strips, patch_size=args.patch_size
        ),
        _aitex_options,
    ),
    "elpv": Preparation(
        "ELPV",
        lambda root, out, args: elpv.read_elpv(root, args.label_rule),
        _elpv_options,
        elpv.installed_elpv_root,
    ),
    "btad": Preparation("BTAD", lambda root, out, args: layouts.read_btad(root)),
    "mpdd": Preparation("MPDD", lambda root, out, args: layouts.read_mpdd(root)),
    "brainmri": Preparation("BrainMRI", lambda root, out, args: layouts.read_brainmri(root)),
    "headct": Preparation("HeadCT", lambda root, out, args: layouts.read_headct(root)),
    "br35h": Preparation("Br35H", lambda root, out, args: layouts.read_br35h(root)),
}
"""Dataset key (as in ``configs/data/published.yaml``) -> its preparation."""


def prepare_main(dataset: str, argv: Sequence[str] | None = None) -> int:
    """Prepares one dataset from the command line.

    Args:
        dataset: A key of :data:`PREPARATIONS`.
        argv: Arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 on bad input or an unexpected layout (the message on stderr).
    """
    preparation = PREPARATIONS[dataset]
    parser = argparse.ArgumentParser(description=f"Writes the anomaly-ov manifest of {preparation.title}.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--root", type=Path, help=f"the extracted {preparation.title} folder")
    if preparation.installed is not None:
        where.add_argument(
            "--installed", action="store_true", help="read the installed dataset package (needs --out)"
        )
    parser.add_argument(
        "--out", type=Path, default=None, help="manifest path (default: <root>/manifest.jsonl)"
    )
    parser.add_argument("--no-check", action="store_true", help="skip decoding every image and mask")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unusable images out and list them in <manifest>.skipped.json instead of failing",
    )
    if preparation.add_options is not None:
        preparation.add_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if getattr(args, "installed", False) and args.out is None:
        parser.error("--installed needs --out (the package folder is not the place for a manifest)")
    skipped: list[SkippedFile] = []
    try:
        if getattr(args, "installed", False):
            args.root = preparation.installed()  # a missing or incomplete package: the file and the pip line
        out = args.out or args.root / "manifest.jsonl"
        samples = preparation.read(args.root, out.parent, args)
        if not samples:
            raise layouts.LayoutError(args.root, f"{preparation.title}'s published layout", "no sample")
        if not args.no_check:
            samples, skipped = screen_samples(samples, skip_bad=args.skip_bad, decode=True)
    except (BadInputError, FileNotFoundError, ValueError) as error:
        print(f"prepare {preparation.title}: {error}", file=sys.stderr)
        return 1
    write_manifest(samples, out)
    if skipped:
        write_skipped(skipped, out.with_suffix(".skipped.json"))
    classes = sorted({item.class_name for item in samples})
    anomalous = sum(item.label for item in samples)
    masks = sum(item.mask is not None for item in samples)
    report = f"; {len(skipped)} unusable files in {out.with_suffix('.skipped.json')}" if skipped else ""
    normal = len(samples) - anomalous
    counts = f"{len(samples)} images ({anomalous} anomalous, {normal} normal, {masks} masks)"
    print(f"{preparation.title}: {counts}, classes {classes} -> {out}{report}")
    return 0
