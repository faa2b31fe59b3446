"""Anomaly-OV: zero-shot anomaly detection and reasoning with multimodal LLMs.

Reimplementation of Xu et al., "Towards Zero-Shot Anomaly Detection and Reasoning with Multimodal Large
Language Models", CVPR 2025 (https://arxiv.org/abs/2502.07601).
"""

from anomaly_ov.config import register_resolvers

__version__ = "0.1.0"

register_resolvers()
