"""Times the exact MVTec AD AUPRO against the 200-threshold compatibility loop on one class-sized input.

Also times the pixel AUROC / AP / F1-max (one sort), and with ``--sklearn`` checks them against sklearn on
the flattened pixels (slow, several GiB).

Default input: 500 smooth random anomaly maps of 256 x 256 with random elliptic defect blobs in half of
the images (fixed seed), i.e. the pixel count of a large MVTec AD / VisA class after upsampling. Prints
wall time, peak memory traced by ``tracemalloc`` (numpy reports its buffers to it) and the value of each
metric, and the speed ratio.

    .venv/bin/python scripts/benchmark_aupro.py [--num-images 500] [--size 256] [--seed 0] [--sklearn]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly_ov.data.crops import upsample_maps
from anomaly_ov.eval.aupro import aupro, aupro_200_thresholds
from anomaly_ov.eval.metrics import pixel_metrics


def make_class(num_images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random smooth maps [N, size, size] float32 and blob masks [N, size, size] bool."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, size, size), dtype=bool)
    rows, cols = np.mgrid[0:size, 0:size]
    for index in np.flatnonzero(rng.random(num_images) < 0.5):
        for _ in range(rng.integers(1, 4)):
            center_row, center_col = rng.uniform(0, size, 2)
            radius_row, radius_col = rng.uniform(size / 40, size / 8, 2)
            blob = ((rows - center_row) / radius_row) ** 2 + ((cols - center_col) / radius_col) ** 2 <= 1
            masks[index] |= blob
    noise = upsample_maps(rng.standard_normal((num_images, size // 16, size // 16)), (size, size))
    # Maps that partly follow the masks, so the curve is neither trivial nor random.
    signal = ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, size / 64, size / 64))
    return (noise + 2.0 * signal).astype(np.float32), masks


def measure(function: Callable[[], float]) -> tuple[float, float, float]:
    """Returns (value, seconds, peak MiB of memory allocated during the call)."""
    tracemalloc.start()
    start = time.perf_counter()
    value = function()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, seconds, peak / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-fpr", type=float, default=0.3)
    parser.add_argument("--sklearn", action="store_true", help="also compare pixel metrics with sklearn")
    args = parser.parse_args(argv)

    maps, masks = make_class(args.num_images, args.size, args.seed)
    print(
        f"input: {args.num_images} maps of {args.size}x{args.size} = {maps.size / 1e6:.1f}M pixels "
        f"({maps.nbytes / 2**20:.0f} MiB float32), {masks.mean():.2%} anomalous, "
        f"{int(masks.any(axis=(1, 2)).sum())} defective images"
    )
    exact, exact_s, exact_mib = measure(lambda: aupro(maps, masks, args.max_fpr))
    compat, compat_s, compat_mib = measure(lambda: aupro_200_thresholds(maps, masks, args.max_fpr))
    print(f"exact AUPRO (MVTec AD)        : {exact:.6f}   {exact_s:7.3f} s   peak {exact_mib:7.0f} MiB")
    print(f"200-threshold compatibility   : {compat:.6f}   {compat_s:7.3f} s   peak {compat_mib:7.0f} MiB")
    print(f"speed-up exact vs 200-threshold loop: {compat_s / exact_s:.1f}x")

    pixel, pixel_s, pixel_mib = measure(lambda: pixel_metrics(maps, masks))
    print(
        f"pixel AUROC {pixel.auroc:.6f} AP {pixel.ap:.6f} F1-max {pixel.f1_max:.6f}   {pixel_s:7.3f} s   "
        f"peak {pixel_mib:7.0f} MiB"
    )
    if args.sklearn:
        labels, scores = masks.ravel(), maps.ravel()
        sk_auroc, sk_auroc_s, _ = measure(lambda: roc_auc_score(labels, scores))
        sk_ap, sk_ap_s, _ = measure(lambda: average_precision_score(labels, scores))
        print(
            f"sklearn     AUROC {sk_auroc:.6f} ({sk_auroc_s:.2f} s)   AP {sk_ap:.6f} ({sk_ap_s:.2f} s)   "
            f"|diff| {abs(sk_auroc - pixel.auroc):.1e} / {abs(sk_ap - pixel.ap):.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
