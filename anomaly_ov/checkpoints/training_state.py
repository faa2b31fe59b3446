"""Training checkpoints in safetensors: the model weights plus the state needed to resume exactly.

Per epoch a folder ``<run_dir>/checkpoints/epoch_<NNN>/`` (and, when a run is stopped by a signal in the
middle of an epoch, ``epoch_<NNN>_step_<SSSSSS>/``: ``NNN`` epochs and ``SSSSSS`` steps of the next) holds

* ``expert.safetensors`` -- the model (written by the model's own ``save``);
* ``training_state.safetensors`` -- the optimizer's tensors (``optimizer.<param>.<name>``), the CPU random
  state, and in the metadata the optimizer's param groups and non-tensor state, the scheduler's state and the
  loop counters, all as JSON.

The folder is written under a temporary name and renamed once complete, so :func:`latest_checkpoint` never
returns a half-written checkpoint. No pickle is written or read.
"""

import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from anomaly_ov.atomic_files import staged_folder
from anomaly_ov.weights_files import read_safetensors, safetensors_metadata

MODEL_FILE = "expert.safetensors"
STATE_FILE = "training_state.safetensors"
_EPOCH_DIR = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?$")


def optimizer_tensors(optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Splits an optimizer's state dict into tensors and JSON-able values.

    Returns:
        ``{"optimizer.<param id>.<name>": tensor}`` and ``{"param_groups": ..., "scalars": ...}``.
    """
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, object]] = {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(
    optimizer: Optimizer, tensors: Mapping[str, torch.Tensor], values: Mapping[str, object]
) -> None:
    """Inverse of :func:`optimizer_tensors`: rebuilds the state dict and loads it into ``optimizer``."""
    state: dict[int, dict[str, object]] = {}
    for key, tensor in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = tensor
    for param_id, entries in values["scalars"].items():
        state.setdefault(int(param_id), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": values["param_groups"]})


@dataclass(frozen=True)
class EpochCheckpoint:
    """A finished epoch's checkpoint folder.

    Attributes:
        epoch: Number of epochs completed (1 after the first).
        folder: The folder holding :data:`MODEL_FILE` and :data:`STATE_FILE`.
        step: Optimizer steps done in the next epoch (0 at an epoch boundary; more for a run stopped by a
            signal mid-epoch).
    """

    epoch: int
    folder: Path
    step: int = 0

    @property
    def model(self) -> Path:
        """The model weights file."""
        return self.folder / MODEL_FILE

    @property
    def state(self) -> Path:
        """The training-state file."""
        return self.folder / STATE_FILE


def save_epoch_checkpoint(
    run_dir: Path,
    epoch: int,
    save_model: Callable[[Path], None],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    counters: Mapping[str, object],
    step: int = 0,
) -> EpochCheckpoint:
    """Writes the checkpoint of a finished epoch, or of ``step`` steps into the next (one process only).

    Args:
        run_dir: The run folder.
        epoch: Epochs completed.
        save_model: Writes the model weights to the given path (e.g. ``expert.save``).
        optimizer: The optimizer.
        scheduler: The learning-rate scheduler.
        counters: JSON-able loop state (global step, losses, ...).
        step: Steps done in epoch ``epoch + 1`` (0: the epoch boundary).

    Returns:
        The checkpoint.
    """
    name = f"epoch_{epoch:03d}" if step == 0 else f"epoch_{epoch:03d}_step_{step:06d}"
    final = run_dir / "checkpoints" / name
    # a full disk: the error names the checkpoint, the half-written folder is removed, the earlier
    # checkpoints stay and are what a rerun resumes from
    with staged_folder(final, "the earlier checkpoints are kept") as temporary:
        save_model(temporary / MODEL_FILE)
        tensors, values = optimizer_tensors(optimizer)
        tensors["rng.cpu"] = torch.get_rng_state()
        metadata = {
            "optimizer": json.dumps(values),
            "scheduler": json.dumps(scheduler.state_dict()),
            "counters": json.dumps(dict(counters)),
        }
        save_file(tensors, str(temporary / STATE_FILE), metadata=metadata)
    # a mid-epoch checkpoint is superseded by any later one
    for match, path in _checkpoint_folders(run_dir):
        if match.group(2) is not None and _position(match) < (epoch, step):
            shutil.rmtree(path)
    return EpochCheckpoint(epoch, final, step)


def _position(match: re.Match) -> tuple[int, int]:
    return int(match.group(1)), int(match.group(2) or 0)


def _checkpoint_folders(run_dir: Path) -> list[tuple[re.Match, Path]]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return [(match, path) for path in folder.iterdir() if (match := _EPOCH_DIR.match(path.name))]


def load_training_state(checkpoint: EpochCheckpoint, optimizer: Optimizer, scheduler: LRScheduler) -> dict:
    """Restores the optimizer, the scheduler and the CPU random state from a checkpoint.

    Returns:
        The loop counters saved with it.
    """
    # a file that is not a valid safetensors file (a pickle, a lying header) is refused, naming it
    metadata = safetensors_metadata(checkpoint.state)
    tensors = read_safetensors(checkpoint.state)
    torch.set_rng_state(tensors.pop("rng.cpu"))
    load_optimizer_tensors(optimizer, tensors, json.loads(metadata["optimizer"]))
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    return json.loads(metadata["counters"])


def latest_checkpoint(run_dir: Path) -> EpochCheckpoint | None:
    """The newest complete checkpoint in ``run_dir`` (by epoch, then step), or None."""
    found = [
        EpochCheckpoint(epoch, path, step)
        for (epoch, step), path in ((_position(match), path) for match, path in _checkpoint_folders(run_dir))
        if (path / MODEL_FILE).is_file() and (path / STATE_FILE).is_file()
    ]
    return max(found, key=lambda c: (c.epoch, c.step), default=None)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Deletes all but the ``keep`` most recent epoch checkpoints of a run."""
    if keep < 1:
        raise ValueError(f"keep={keep} must be at least 1 (the last checkpoint is what a resume needs).")
    epochs = sorted((_position(match), path) for match, path in _checkpoint_folders(run_dir))
    for _, path in epochs[:-keep]:
        shutil.rmtree(path)
