"""The commands the fault tests run (stage 1, stage 2, evaluations) and their uninterrupted references.

Each reference is run once per test session and shared by the tests that compare against it.
"""

import sys
from pathlib import Path

from harness import PROJECT, PYTHON, environment, json_of, run_once

sys.path.insert(0, str(PROJECT / "tests" / "integration"))
from finetune_runs import overrides as finetune_overrides  # the stage-2 tests' recipe

STAGE1_EPOCHS = 6


def stage1_arguments(out: Path, zoo, data, *extra: str) -> list[str]:
    """Tiny stage 1 on the synthetic data: 9 cache shards of 8 images, 6 epochs of 5 steps, no tracker."""
    return [
        "debug=tiny",
        "trainer=cpu",
        "logger=none",
        f"trainer.fit.epochs={STAGE1_EPOCHS}",
        "trainer.fit.progress=false",
        "features.shard_size=8",
        f"paths.output_root={out}",
        f"paths.zoo_dir={zoo.root}",
        f"paths.synthetic_dir={data.root}",
        f"run_dir={out / 'run'}",
        *extra,
    ]


def stage1_command(out: Path, zoo, data, *extra: str, processes: int = 1) -> list[str]:
    """``scripts/train_expert.py`` (``torchrun`` for several processes)."""
    return [
        *_launcher(processes),
        str(PROJECT / "scripts" / "train_expert.py"),
        *stage1_arguments(out, zoo, data, *extra),
    ]


def stage2_command(out: Path, zoo, data, *extra: str, processes: int = 1) -> list[str]:
    """``scripts/finetune.py`` with the stage-2 integration tests' recipe (8 records, 4 steps)."""
    arguments = [*finetune_overrides(out, zoo, data, *extra), f"run_dir={out / 'run'}"]
    return [*_launcher(processes), str(PROJECT / "scripts" / "finetune.py"), *arguments]


def _launcher(processes: int) -> list[str]:
    if processes == 1:
        return [PYTHON]
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


_REFERENCES: dict[tuple, Path] = {}


def reference(kind: str, command_of, tmp_path_factory, *extra: str, processes: int = 1) -> Path:
    """The output folder of an uninterrupted run (once per session for the same kind and arguments)."""
    key = (kind, extra, processes)
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp(f"reference_{kind}")
        done = run_once(command_of(out, *extra, processes=processes), env=environment(), timeout=600)
        assert done.returncode == 0, done.output
        _REFERENCES[key] = out
    return _REFERENCES[key]


def losses_of(out: Path) -> list[float]:
    """The loss of every step of a finished run (``train_metrics.json``)."""
    return json_of(out / "run" / "train_metrics.json")["losses"]
