"""Model parts: vision towers, the anomaly expert, the Anomaly-OV model and their builders.

Names are imported lazily so that ``import anomaly_ov.models`` does not import transformers or open_clip.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anomaly_ov.models.anomaly_ov import AnomalyOV
    from anomaly_ov.models.builders import build_expert, build_vision_tower
    from anomaly_ov.models.checkpoint import load_anomaly_ov, save_anomaly_ov
    from anomaly_ov.models.expert import AnomalyExpert, ExpertOutput, severity_word
    from anomaly_ov.models.mllm_builders import build_anomaly_ov, build_llm, build_lora
    from anomaly_ov.models.processor import AnomalyOVProcessor
    from anomaly_ov.models.vision import (
        AnyResCrops,
        FrozenVisionTower,
        HFVisionTower,
        OpenCLIPVisionTower,
        VisionFeatures,
        anyres_crops,
    )

_EXPORTS: dict[str, str] = {
    "AnomalyOV": "anomaly_ov.models.anomaly_ov",
    "AnomalyOVProcessor": "anomaly_ov.models.processor",
    "build_anomaly_ov": "anomaly_ov.models.mllm_builders",
    "build_llm": "anomaly_ov.models.mllm_builders",
    "build_lora": "anomaly_ov.models.mllm_builders",
    "save_anomaly_ov": "anomaly_ov.models.checkpoint",
    "load_anomaly_ov": "anomaly_ov.models.checkpoint",
    "AnomalyExpert": "anomaly_ov.models.expert",
    "ExpertOutput": "anomaly_ov.models.expert",
    "severity_word": "anomaly_ov.models.expert",
    "VisionFeatures": "anomaly_ov.models.vision",
    "FrozenVisionTower": "anomaly_ov.models.vision",
    "HFVisionTower": "anomaly_ov.models.vision",
    "OpenCLIPVisionTower": "anomaly_ov.models.vision",
    "AnyResCrops": "anomaly_ov.models.vision",
    "anyres_crops": "anomaly_ov.models.vision",
    "build_expert": "anomaly_ov.models.builders",
    "build_vision_tower": "anomaly_ov.models.builders",
}

__all__ = [
    "AnomalyExpert",
    "AnomalyOV",
    "AnomalyOVProcessor",
    "AnyResCrops",
    "ExpertOutput",
    "FrozenVisionTower",
    "HFVisionTower",
    "OpenCLIPVisionTower",
    "VisionFeatures",
    "anyres_crops",
    "build_anomaly_ov",
    "build_expert",
    "build_llm",
    "build_lora",
    "build_vision_tower",
    "load_anomaly_ov",
    "save_anomaly_ov",
    "severity_word",
]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anomaly_ov.models' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
