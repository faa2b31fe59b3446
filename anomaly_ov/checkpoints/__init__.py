"""Checkpoint formats: the exported model folder and the training state of a run.

* :mod:`anomaly_ov.checkpoints.model_folder` -- a saved Anomaly-OV (projector, newline, expert, LoRA adapter
  or merged weights, processor, resolved config) that ``predict``, ``chat`` and the evaluation load;
* :mod:`anomaly_ov.checkpoints.training_state` -- stage-1 epoch checkpoints (weights, optimizer, scheduler,
  random state) for exact resumption.

The expert's own file formats (safetensors with metadata, the release's ``.pth``) live with the expert in
:mod:`anomaly_ov.models.expert_io`. Rebuilding a model folder needs Hydra (it instantiates the saved config),
which is why this package sits above the framework-free model files.
"""

from anomaly_ov.checkpoints.model_folder import LoadedAnomalyOV, load_anomaly_ov, save_anomaly_ov

__all__ = ["LoadedAnomalyOV", "load_anomaly_ov", "save_anomaly_ov"]
