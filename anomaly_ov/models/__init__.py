"""Model parts: vision towers, the anomaly expert, the Anomaly-OV model and their builders.

Names are imported lazily so that ``import anomaly_ov.models`` does not import transformers or open_clip.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anomaly_ov.models.anomaly_ov import AnomalyOV
    from anomaly_ov.models.builders import (
        build_clip_tower,
        build_expert,
        build_llava_onevision_tower,
        build_open_clip_tower,
        build_siglip_tower,
    )
    from anomaly_ov.models.expert import AnomalyExpert, ExpertConfig, ExpertOutput
    from anomaly_ov.models.mllm_builders import build_anomaly_ov, build_llm, build_lora
    from anomaly_ov.models.processor import AnomalyOVProcessor
    from anomaly_ov.models.vision import (
        FrozenVisionTower,
        HFVisionTower,
        OpenCLIPVisionTower,
        VisionFeatures,
    )

_EXPORTS: dict[str, str] = {
    "AnomalyOV": "anomaly_ov.models.anomaly_ov",
    "AnomalyOVProcessor": "anomaly_ov.models.processor",
    "build_anomaly_ov": "anomaly_ov.models.mllm_builders",
    "build_llm": "anomaly_ov.models.mllm_builders",
    "build_lora": "anomaly_ov.models.mllm_builders",
    "AnomalyExpert": "anomaly_ov.models.expert",
    "ExpertConfig": "anomaly_ov.models.expert",
    "ExpertOutput": "anomaly_ov.models.expert",
    "VisionFeatures": "anomaly_ov.models.vision",
    "FrozenVisionTower": "anomaly_ov.models.vision",
    "HFVisionTower": "anomaly_ov.models.vision",
    "OpenCLIPVisionTower": "anomaly_ov.models.vision",
    "build_expert": "anomaly_ov.models.builders",
    "build_siglip_tower": "anomaly_ov.models.builders",
    "build_clip_tower": "anomaly_ov.models.builders",
    "build_llava_onevision_tower": "anomaly_ov.models.builders",
    "build_open_clip_tower": "anomaly_ov.models.builders",
}

__all__ = [
    "AnomalyExpert",
    "AnomalyOV",
    "AnomalyOVProcessor",
    "ExpertConfig",
    "ExpertOutput",
    "FrozenVisionTower",
    "HFVisionTower",
    "OpenCLIPVisionTower",
    "VisionFeatures",
    "build_anomaly_ov",
    "build_clip_tower",
    "build_expert",
    "build_llava_onevision_tower",
    "build_llm",
    "build_lora",
    "build_open_clip_tower",
    "build_siglip_tower",
]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anomaly_ov.models' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
