"""Times the anomaly expert's forward and forward+backward at the released shapes and reports peak memory.

Default shapes: D = 1152, 27 x 27 = 729 tokens, 4 levels, 8 images x 10 AnyRes crops = 80 crops per step
(random frozen-tower features, so the inputs need no gradient, as in stage-1 training). The loss is the
binary cross-entropy of the image scores. Runs on the CPU, and on the GPU when one is present
(``--device auto``).

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during a step minus the memory held before it
(inputs and weights); on the CPU the peak resident set size (sampled by a thread with psutil every 2 ms)
minus the resident size before the step.

    .venv/bin/python scripts/benchmark_expert.py [--images 8] [--crops 10] [--steps 3] [--device auto]
        [--dtype float32|bfloat16|float16] [--threads N]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

import psutil
import torch
import torch.nn.functional as F

from anomaly_ov.models import AnomalyExpert, ExpertConfig
from anomaly_ov.models.builders import DTYPES


class PeakRSS:
    """Samples the process's resident set size in a background thread; ``peak`` is the maximum seen."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[], None], device: torch.device, steps: int) -> tuple[float, float]:
    """Returns (seconds per step, peak extra MiB of one step) after one warm-up step."""
    step()
    synchronize(device)
    times, peaks = [], []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - start)
            peaks.append(torch.cuda.max_memory_allocated(device) - before)
        else:
            before = psutil.Process().memory_info().rss
            with PeakRSS() as rss:
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            peaks.append(rss.peak - before)
    return sum(times) / len(times), max(peaks) / 2**20


def run(device: torch.device, dtype: torch.dtype, images: int, crops: int, steps: int) -> None:
    torch.manual_seed(0)
    expert = AnomalyExpert(ExpertConfig(vision_dim=1152, expert_dim=512, grid=27)).to(
        device=device, dtype=dtype
    )
    num_crops = images * crops
    final = torch.randn(num_crops, 729, 1152, device=device, dtype=dtype)
    levels = [torch.randn(num_crops, 729, 1152, device=device, dtype=dtype) for _ in range(4)]
    crops_per_image = [crops] * images
    labels = (torch.arange(images, device=device) % 2).float()
    input_mib = (final.numel() * 5 * final.element_size()) / 2**20

    def forward() -> None:
        with torch.no_grad():
            expert(final, levels, crops_per_image)

    def forward_backward() -> None:
        expert.zero_grad(set_to_none=True)
        out = expert(final, levels, crops_per_image)
        F.binary_cross_entropy_with_logits(out.score_logits.float(), labels).backward()

    print(
        f"\n{device.type} {str(dtype).removeprefix('torch.')}: {images} images x {crops} crops = "
        f"{num_crops} crops, 729 tokens, D=1152, E=512, 4 levels; inputs {input_mib:.0f} MiB, "
        f"{sum(p.numel() for p in expert.parameters()) / 1e6:.2f} M parameters"
    )
    for name, step in (("forward (no grad)", forward), ("forward+backward", forward_backward)):
        seconds, peak_mib = measure(step, device, steps)
        print(
            f"  {name:18s} {seconds * 1000:9.1f} ms/step  {images / seconds:8.2f} images/s  "
            f"{num_crops / seconds:8.1f} crops/s  peak +{peak_mib:8.0f} MiB"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--crops", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: float32 on CPU, bf16 on GPU"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        parser.error("--device cuda: no CUDA device is available")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        dtype = (
            DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        )
        run(device, dtype, args.images, args.crops, args.steps)
        if device.type == "cuda" and args.dtype is None:
            run(device, torch.float32, args.images, args.crops, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
