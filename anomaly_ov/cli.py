"""The ``anomaly-ov`` command line: one subcommand per user task.

Each subcommand lives in the module that owns its concept and exposes ``cli_main(argv) -> int``;
this file only dispatches, importing the module lazily so ``anomaly-ov --help`` stays fast.
"""

import importlib
import sys

from anomaly_ov.offline import enforce_offline

COMMANDS: dict[str, tuple[str, str]] = {
    "make-synthetic": (
        "anomaly_ov.data.synthetic",
        "write the synthetic anomaly dataset (the embedded default)",
    ),
    "make-tiny-zoo": (
        "anomaly_ov.zoo",
        "build the tiny offline model zoo (vision towers, LLM, LLaVA-OV)",
    ),
    "make-real-zoo": (
        "anomaly_ov.zoo.real",
        "build the real offline zoo (DINOv2-S/14, SmolLM2-135M, their LLaVA-OV) from installed packages",
    ),
    "chat": (
        "anomaly_ov.inference.chat",
        "multi-turn chat about one image (or the views of one object); prints the expert's score",
    ),
    "predict": (
        "anomaly_ov.inference.predict",
        "score and describe a folder or list of images; JSON lines and heatmap overlays",
    ),
    "serve": (
        "anomaly_ov.app.serve",
        "the inspection web app: upload an image or views, see the anomaly map, ask follow-up questions",
    ),
    "finetune": ("anomaly_ov.recipes.finetune", "stage 2: instruction-tune with DeepSpeed (Hydra overrides)"),
    "merge-lora": (
        "anomaly_ov.checkpoints.model_folder",
        "copy a saved model folder with its LoRA adapter merged into full weights",
    ),
    "eval": ("anomaly_ov.recipes.eval_benchmark", "VisA-D&R detection + reasoning or MMAD (Hydra overrides)"),
    "report": ("anomaly_ov.report", "the demo report (index.md, PNGs, index.html) from finished run folders"),
    "tables": ("anomaly_ov.eval.gather", "merge finished stage-1 runs into Tables 1 and 2 beside the paper"),
}


def _usage() -> str:
    lines = ["usage: anomaly-ov <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``anomaly-ov <command> ...`` to the command's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"anomaly-ov: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    enforce_offline()
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
