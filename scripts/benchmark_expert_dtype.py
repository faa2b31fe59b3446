"""How far the expert's scores move when it runs in bfloat16 (as the release evaluates it) instead of fp32.

Scores a trained run's test images twice (the same tower features, the expert cast to each dtype) and
prints the score and map differences, how many severity words change and both AUROCs, as JSON:

    python scripts/train_expert.py debug=tiny run_dir=/tmp/tiny_run
    python scripts/benchmark_expert_dtype.py --run /tmp/tiny_run --mvtec-root outputs/synthetic/mvtec
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from anomaly_ov.data.zsad import MVTecSource
from anomaly_ov.eval.zsad import score_samples
from anomaly_ov.models.expert_io import load_expert_weights
from anomaly_ov.offline import enforce_offline


def main() -> None:
    """Prints the fp32-vs-bf16 figures of one run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished train_expert run folder")
    parser.add_argument("--mvtec-root", type=Path, required=True, help="test images in MVTec AD's layout")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    enforce_offline()
    cfg = OmegaConf.load(args.run / "config.yaml")
    tower = instantiate(cfg.model.vision)
    source = instantiate(cfg.features)(tower=tower, tower_spec=OmegaConf.to_container(cfg.model.vision))
    samples = MVTecSource(args.mvtec_root, split="test").read()
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        expert = instantiate(cfg.model.expert)
        load_expert_weights(expert, args.run / "expert.safetensors")
        expert.to(dtype).eval()
        _, scores, maps, _ = score_samples(expert, source, samples, False, args.batch_size)
        results[dtype] = (scores, maps, expert.severity_words(torch.as_tensor(scores)))
    (full, full_maps, full_words), (half, half_maps, half_words) = results.values()
    labels = np.asarray([item.label for item in samples])
    difference = np.abs(full - half)
    pairs = zip(full_maps, half_maps, strict=True)
    map_difference = np.asarray([float((a - b).abs().max()) for a, b in pairs])
    changed = sum(a != b for a, b in zip(full_words, half_words, strict=True))
    print(
        json.dumps(
            {
                "images": len(samples),
                "score_abs_diff_max": float(difference.max()),
                "score_abs_diff_mean": float(difference.mean()),
                "map_abs_diff_max": float(map_difference.max()),
                "severity_word_changes": int(changed),
                "severity_word_change_rate": changed / len(samples),
                "image_auroc_fp32": float(roc_auc_score(labels, full)),
                "image_auroc_bf16": float(roc_auc_score(labels, half)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
