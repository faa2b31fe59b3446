"""The demo report: one folder a researcher opens (``index.md``, its PNGs, ``index.html``).

Built from the finished run folders of the pipeline (stage 1, zero-shot evaluation, stage 2, benchmark
evaluations, predict, chat); it only reads their files, so it never imports the recipes or the training code.

    anomaly-ov report --stage1 RUN --zero-shot RUN/eval/<time> \
        --stage2 "Tuned, with expert=RUN2" --benchmark "Tuned, with expert=EVAL" ... --out outputs/report
"""

import argparse
import sys
from pathlib import Path

from anomaly_ov.report.inputs import ReportInputError

__all__ = ["ReportInputError", "cli_main"]


def _named(values: list[str] | None, option: str) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ReportInputError(f"{option} {value!r}: expected 'NAME=FOLDER'")
        if name in named:
            raise ReportInputError(f"{option}: the name {name!r} is given twice")
        named[name] = Path(path)
    return named


def cli_main(argv: list[str] | None = None) -> int:
    """``anomaly-ov report ...``: builds the report; prints where it is.

    Returns:
        0 on success, 1 when a run folder lacks what the report needs (the message names the file).
    """
    parser = argparse.ArgumentParser(prog="anomaly-ov report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage1", required=True, type=Path, help="stage-1 run folder (train_expert)")
    parser.add_argument("--zero-shot", required=True, type=Path, help="its eval_zsad output folder")
    parser.add_argument("--stage2", action="append", metavar="NAME=RUN", help="stage-2 run (repeat)")
    parser.add_argument(
        "--benchmark",
        action="append",
        metavar="NAME=EVAL",
        help="VisA-D&R eval folder: a Table-4 row (repeat)",
    )
    parser.add_argument(
        "--scores",
        action="append",
        metavar="NAME=EVAL",
        help="fast-path detection eval over training-class and held-out images (repeat)",
    )
    parser.add_argument("--split", type=Path, help="the demo split's split.json (class lists)")
    parser.add_argument("--predict", type=Path, help="a predict output folder")
    parser.add_argument("--chat", type=Path, help="a chat transcript (text file)")
    parser.add_argument("--timings", type=Path, help="stage<TAB>seconds lines")
    parser.add_argument(
        "--zoo",
        choices=("tiny", "real"),
        default="tiny",
        help="the offline parts the run used (default: tiny)",
    )
    parser.add_argument(
        "--random-tower",
        type=Path,
        help="eval_zsad folder of the same stage 1 on a randomly initialised tower",
    )
    parser.add_argument("--out", required=True, type=Path, help="the report folder (replaced as a whole)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # imported here: the builder pulls in matplotlib and the evaluation code, which the demo's data split
    # (anomaly_ov.report.demo_data, same package) does not need
    from anomaly_ov.report.document import ReportInputs, build_report

    try:
        inputs = ReportInputs(
            stage1=args.stage1,
            zero_shot=args.zero_shot,
            stage2=_named(args.stage2, "--stage2"),
            benchmark=_named(args.benchmark, "--benchmark"),
            scores=_named(args.scores, "--scores"),
            split=args.split,
            predict=args.predict,
            chat=args.chat,
            timings=args.timings,
            zoo=args.zoo,
            random_tower=args.random_tower,
        )
        index = build_report(inputs, args.out)
    except ReportInputError as error:
        print(f"anomaly-ov report: {error}", file=sys.stderr)
        return 1
    print(f"report: {index}\n        {index.with_suffix('.html')}")
    return 0
