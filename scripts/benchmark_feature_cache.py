"""Benchmark: a stage-1 epoch from the feature cache vs. one that recomputes the frozen encoder.

At released shapes: a randomly initialised SigLIP-so400m vision tower as LLaVA-OneVision uses it (26
blocks, patch 14, 27 x 27 = 729 tokens, width 1152, MLP 4304, 16 heads; level taps 7, 13, 19, 25) and the
released expert shapes (E = 512), on 384-px crops. Both epochs run the same training loop
(``ExpertTrainer``) on the same images; only where the features come from differs. The cache build (a
one-time cost) is timed separately, and the cache size is estimated before it is built.

    python scripts/benchmark_feature_cache.py                 # 8 images, single crop, CPU
    python scripts/benchmark_feature_cache.py --images 64 --device cuda --dtype bfloat16

Prints the times and the ratio; exits with 1 if the ratio is below ``--target`` (20).
"""

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomaly_ov.offline import enforce_offline

enforce_offline()


def main(argv: list[str] | None = None) -> int:
    from transformers import LlavaOnevisionImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from anomaly_ov.data.crops import ImageCrops
    from anomaly_ov.data.feature_cache import format_bytes
    from anomaly_ov.data.features import FeatureSource, build_feature_source
    from anomaly_ov.data.zsad import sample
    from anomaly_ov.models.expert import AnomalyExpert, ExpertConfig
    from anomaly_ov.models.vision import HFVisionTower
    from anomaly_ov.training.distributed import make_accelerator
    from anomaly_ov.training.expert import ExpertTrainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images in the epoch (default: 8)")
    parser.add_argument("--batch", type=int, default=4, help="global batch size (default: 4)")
    parser.add_argument("--anyres", action="store_true", help="AnyRes crops instead of one crop per image")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="tower dtype")
    parser.add_argument("--target", type=float, default=20.0, help="required speed-up (default: 20)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    side = 384  # 27 x 27 patches of 14 px (the convolution drops the 6-px remainder)
    config = SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
        image_size=side, patch_size=14,
    )  # fmt: skip
    tower = HFVisionTower(SiglipVisionModel(config).to(getattr(torch, args.dtype)), [7, 13, 19, 25], -1)
    tower.to(args.device)
    processor = LlavaOnevisionImageProcessor(
        size={"height": side, "width": side},
        image_grid_pinpoints=[[side * i, side * j] for i in range(1, 4) for j in range(1, 4)],
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    crops = ImageCrops(processor, single_crop=not args.anyres)
    accelerator = make_accelerator(cpu=args.device == "cpu")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        samples = []
        for index in range(args.images):
            path = root / "images" / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)).save(path)
            samples.append(sample(path, index % 2, "noise"))
        labels = [item.label for item in samples]

        def epoch(source: FeatureSource, name: str) -> float:
            prepared = source.prepare(samples, skip_bad=False, progress=False)
            torch.manual_seed(0)
            expert = AnomalyExpert(ExpertConfig(vision_dim=1152, expert_dim=512, grid=27)).to(args.device)
            trainer = ExpertTrainer(
                expert,
                partial(torch.optim.AdamW, lr=1e-4),
                partial(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts),
                accelerator,
                root / name,
                epochs=1,
                global_batch_size=args.batch,
                progress=False,
            )
            start = time.perf_counter()
            trainer.fit(prepared.dataset, prepared.collate_fn, prepared.featurize, labels, resume=False)
            return time.perf_counter() - start

        spec = {"benchmark": "siglip-so400m-26-blocks-random", "dtype": args.dtype}
        common = {"tower": tower, "crops": crops, "tower_spec": spec, "cache_dir": str(root / "cache")}
        cached = build_feature_source(**common, cache=True, max_gb=1000.0, images_per_batch=args.batch)
        plan = cached.cache.plan(samples, crops, skip_bad=False)
        print(
            f"cache estimate: {plan.crops} crops x {format_bytes(cached.cache.bytes_per_crop)} = "
            f"{format_bytes(plan.bytes)}"
        )
        start = time.perf_counter()
        cached.prepare(samples, skip_bad=False, progress=False)
        build_seconds = time.perf_counter() - start
        on_disk = sum(p.stat().st_size for p in (root / "cache").rglob("*.npy"))
        cached_seconds = epoch(cached, "cached")
        streamed_seconds = epoch(build_feature_source(**common, cache=False, max_gb=0.0), "streamed")

    ratio = streamed_seconds / cached_seconds
    results = {
        "images": args.images,
        "crops": plan.crops,
        "device": args.device,
        "dtype": args.dtype,
        "bytes_per_crop": cached.cache.bytes_per_crop,
        "cache_bytes": on_disk,
        "cache_build_seconds": build_seconds,
        "epoch_from_cache_seconds": cached_seconds,
        "epoch_recomputing_encoder_seconds": streamed_seconds,
        "speedup": ratio,
        "target": args.target,
    }
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    verdict = "meets" if ratio >= args.target else "MISSES"
    print(f"epoch from cache: {ratio:.1f}x faster than recomputing the encoder ({verdict} {args.target}x)")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
