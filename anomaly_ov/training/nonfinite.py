"""What a training step does when its loss or gradients are not finite (``trainer.fit.nonfinite``).

``stop`` (the default) ends the run with :class:`NonFiniteError`, naming the step and the samples of its
global batch; the step is not applied, and the checkpoints already written (the last good ones) are what a
rerun resumes from. ``skip`` drops the step (no update, the schedule does not advance), records it with its
samples, and still stops after ``max_consecutive`` non-finite steps in a row (a diverged run does not recover
by skipping). Both stages use :class:`NonFinitePolicy`; stage 2's DeepSpeed already leaves a step with
non-finite gradients unapplied, so its loop asks DeepSpeed and this policy decides what follows.
"""

from collections.abc import Sequence
from pathlib import Path

NONFINITE_MODES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """A step's loss or gradients were NaN or infinite (see the module docstring)."""


class NonFinitePolicy:
    """Decides, step by step, what a non-finite loss or gradient does.

    Args:
        mode: ``stop`` or ``skip``.
        max_consecutive: With ``skip``, stop after this many non-finite steps in a row.

    Attributes:
        skipped: ``{"step": global step (1-based), "loss": the loss or None, "sample_ids": [...]}`` of every
            skipped step, in order.
    """

    def __init__(self, mode: str = "stop", max_consecutive: int = 3) -> None:
        if mode not in NONFINITE_MODES:
            raise ValueError(f"nonfinite={mode!r} must be one of {NONFINITE_MODES}.")
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_nonfinite={max_consecutive} must be at least 1.")
        self.mode = mode
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped: list[dict] = []

    def good_step(self) -> None:
        """A finite step was applied: the count of consecutive non-finite steps restarts."""
        self.consecutive = 0

    def bad_step(
        self, step: int, loss: float, sample_ids: Sequence[str], last_checkpoint: Path | None
    ) -> dict:
        """Handles a non-finite step: returns its record (``skip``) or raises.

        Args:
            step: The global step (1-based) that was not applied.
            loss: Its loss (maybe finite, when only the gradients were not).
            sample_ids: The samples of its global batch.
            last_checkpoint: The newest checkpoint on disk (named in the error).

        Raises:
            NonFiniteError: With ``stop``, or after ``max_consecutive`` non-finite steps in a row.
        """
        self.consecutive += 1
        finite_loss = loss == loss and abs(loss) != float("inf")
        what = "gradients" if finite_loss else f"loss ({loss})"
        kept = (
            f"the last good checkpoint, {last_checkpoint}, is kept"
            if last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        samples = ", ".join(sample_ids)
        if self.mode == "stop":
            raise NonFiniteError(
                f"step {step}: non-finite {what}; the step was not applied and the run stops "
                f"(trainer.fit.nonfinite=stop); {kept}. Samples of the batch: {samples}"
            )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"step {step}: {self.consecutive} non-finite steps in a row (trainer.fit."
                f"max_consecutive_nonfinite={self.max_consecutive}); the run stops; {kept}. Samples of the "
                f"last batch: {samples}"
            )
        record = {"step": step, "loss": loss if finite_loss else None, "sample_ids": list(sample_ids)}
        self.skipped.append(record)
        return record

    def state(self) -> dict:
        """The policy's counters, saved with a checkpoint."""
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load(self, state: dict | None) -> None:
        """Restores :meth:`state` (a resumed run continues the count)."""
        if state:
            self.consecutive = int(state["consecutive"])
            self.skipped = list(state["skipped"])
