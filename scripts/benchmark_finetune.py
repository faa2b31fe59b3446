"""Peak memory and step time of a stage-2 training step at LLaVA-OneVision-0.5B widths (SPEC §4).

Model: random weights built locally from configs with the 0.5B's widths and vocabulary -- SigLIP width 1152
(MLP 4304, 16 heads, 384 px, patch 14: 27 x 27 tokens per crop), the released expert's sizes, Qwen2 width
896 (MLP 4864, 14 heads, 2 key/value heads, vocabulary 151,936, tied head) -- with the layer counts reduced
(``--vision-layers 2 --llm-layers 2`` by default; the expert reads hidden states 1, 1, 2, 2). Input: one
AnyRes image of the 6 x 6 pinpoint grid (37 crops; ``anyres_max_9`` packs it to ~7.4k image tokens) plus the
severity and anomaly positions, a short prompt and a 100-token answer; only the answer is labelled.

Variants, each in a fresh subprocess, one at a time (peak memory = the child's peak resident set on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU):

* ``full_logits`` -- LoRA; the loss the transformers way: ``llava(inputs_embeds, labels=...)`` computes the
  vocabulary projection for every position;
* ``labelled`` -- LoRA; Anomaly-OV's own loss, computed only at the labelled positions;
* ``full_ft`` -- full fine-tuning of the LLM (labelled-only loss);
* ``zero2`` / ``zero3`` -- full fine-tuning under DeepSpeed on 2 processes (``torchrun``; gloo on CPUs),
  memory per rank.

A step is forward + backward + AdamW step (plain PyTorch for the single-process variants). Each child caps
its data segment (``--memory-limit-gib``) so that a variant too large for the machine fails on its own.

    .venv/bin/python scripts/benchmark_finetune.py [--variants full_logits labelled full_ft zero2 zero3]
        [--grid 6] [--answer-tokens 100] [--vision-layers 2] [--llm-layers 2] [--steps 1]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

VOCAB = 151_936
IMAGE_TOKEN, SEVERITY_TOKEN, ANOMALY_TOKEN = 151_646, 151_647, 151_648
VARIANTS = ("full_logits", "labelled", "full_ft", "zero2", "zero3")


def build_model(vision_layers: int, llm_layers: int, tuning: str):
    """The reduced-depth 0.5B-width Anomaly-OV with random weights (seeded, so every variant is the same)."""
    from dataclasses import replace

    from transformers import LlavaOnevisionForConditionalGeneration

    from anomaly_ov.data.tokens import SEVERITY_WORDS, PlaceholderTokens
    from anomaly_ov.models.anomaly_ov import AnomalyOV
    from anomaly_ov.models.builders import build_expert
    from anomaly_ov.models.mllm_builders import apply_lora, build_lora
    from anomaly_ov.training.tuning import apply_tuning
    from anomaly_ov.zoo.shapes import LLAVA_OV_05B, llava_onevision_config

    torch.manual_seed(0)
    shape = replace(LLAVA_OV_05B, vision_layers=vision_layers, llm_layers=llm_layers)
    assert shape.vocab_size == VOCAB
    config = llava_onevision_config(shape, image_token_index=IMAGE_TOKEN)
    config._attn_implementation = "sdpa"
    llava = LlavaOnevisionForConditionalGeneration(config)
    expert = build_expert(vision_dim=1152, expert_dim=512, grid=27, attention_dim=512, score_hidden_dim=512)
    levels = [1, 1, 2, 2] if vision_layers < 4 else [vision_layers // 4 * k for k in range(1, 5)]
    if tuning == "lora":
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        apply_lora(llava, build_lora(rank=64, alpha=128, dropout=0.0, target_modules=targets))
    model = AnomalyOV(
        llava,
        expert,
        levels,
        PlaceholderTokens(
            image=IMAGE_TOKEN, severity=SEVERITY_TOKEN, anomaly=ANOMALY_TOKEN, severity_slots=6
        ),
        {word: [1000 + i for i in range(6)] for word in SEVERITY_WORDS},
    )
    apply_tuning(model, tuning)
    return model


def make_batch(model, grid: int, answer_tokens: int) -> dict:
    """One sample: the 6x6-grid AnyRes image's reserved runs, a prompt and a labelled answer."""
    side = 384 * grid
    crops = 1 + grid * grid
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(crops, 3, 384, 384, generator=generator)
    image_sizes = torch.tensor([[side, side]])
    with torch.no_grad():
        encoding = model.encode_images(pixel_values, image_sizes, [crops])
    n_image, n_anomaly = len(encoding.image_features[0]), len(encoding.anomaly_tokens[0])
    prompt = torch.randint(2000, 100_000, (20,), generator=generator)
    question = torch.randint(2000, 100_000, (12,), generator=generator)
    answer = torch.randint(2000, 100_000, (answer_tokens,), generator=generator)
    reserved = torch.tensor([IMAGE_TOKEN] * n_image + [SEVERITY_TOKEN] * 6 + [ANOMALY_TOKEN] * n_anomaly)
    input_ids = torch.cat([prompt, reserved, question, answer])[None]
    labels = torch.full_like(input_ids, -100)
    labels[0, -answer_tokens:] = answer
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "pixel_values": pixel_values,
        "image_sizes": image_sizes,
        "image_num_crops": torch.tensor([crops]),
    }


def full_logits_loss(model, batch: dict) -> torch.Tensor:
    """The transformers way: the vocabulary projection at every position, then the shifted cross-entropy."""
    embedding = model.embed_inputs(
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        batch["image_sizes"],
        batch["image_num_crops"],
        labels=batch["labels"],
    )
    return model.llava(
        inputs_embeds=embedding.inputs_embeds,
        attention_mask=embedding.attention_mask,
        position_ids=embedding.position_ids,
        labels=embedding.labels,
        use_cache=False,
    ).loss


def peak_gib(device: torch.device) -> float:
    """This process's peak: CUDA allocator peak, or the resident-set peak (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_gib() -> float:
    """Resident set now."""
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def run_child(args: argparse.Namespace) -> None:
    """One variant in this process; prints one JSON line."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":  # on a GPU the allocator's own limit applies (CUDA maps large host regions)
        limit = int(args.memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    variant = args.child
    tuning = "lora" if variant in ("full_logits", "labelled") else "full"
    model = build_model(args.vision_layers, args.llm_layers, tuning)
    batch = make_batch(model, args.grid, args.answer_tokens)
    record: dict = {"variant": variant, "tokens": int(batch["input_ids"].shape[1]), "tuning": tuning}
    trainable = [p for p in model.parameters() if p.requires_grad]
    record["trainable_parameters"] = sum(p.numel() for p in trainable)
    if variant in ("zero2", "zero3"):
        from anomaly_ov.training.deepspeed import make_deepspeed_accelerator

        accelerator = make_deepspeed_accelerator(zero_stage=int(variant[-1]), bf16=device.type == "cuda")
        engine, optimizer = accelerator.prepare(model, torch.optim.AdamW(trainable, lr=1e-5))
        if int(variant[-1]) == 3:
            from anomaly_ov.training.deepspeed import outside_parameters, register_outside_parameters

            register_outside_parameters(engine.module, outside_parameters(engine.module))
        engine.train()
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            loss = engine(**batch).loss
            accelerator.backward(loss)
            times.append(time.perf_counter() - start)
        record.update(
            rank=accelerator.process_index,
            loss=float(loss),
            step_s=min(times),
            peak_gib=peak_gib(device),
            held_after_step_gib=current_gib(),
        )
        print("RESULT " + json.dumps(record), flush=True)
        torch.distributed.destroy_process_group()
        return
    model.to(device).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        # bfloat16 autocast on a GPU, as the release trains; float32 on a CPU
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = full_logits_loss(model, batch) if variant == "full_logits" else model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    record.update(
        loss=float(loss), step_s=min(times), peak_gib=peak_gib(device), held_after_step_gib=current_gib()
    )
    print("RESULT " + json.dumps(record), flush=True)


def launch(args: argparse.Namespace, variant: str) -> list[dict]:
    """Runs one variant in fresh processes (2 with torchrun for the ZeRO variants); returns their records."""
    script = str(Path(__file__).resolve())
    common = [
        "--child",
        variant,
        "--grid",
        str(args.grid),
        "--answer-tokens",
        str(args.answer_tokens),
        "--vision-layers",
        str(args.vision_layers),
        "--llm-layers",
        str(args.llm_layers),
        "--steps",
        str(args.steps),
        "--memory-limit-gib",
        str(args.memory_limit_gib),
    ]
    if variant in ("zero2", "zero3"):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            script,
        ]
    else:
        command = [sys.executable, script]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([*command, *common], capture_output=True, text=True, env=env)
    records = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not records:
        return [{"variant": variant, "error": (done.stderr or done.stdout)[-600:]}]
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--grid", type=int, default=6, help="AnyRes tile grid side (6: the 6x6 pinpoint)")
    parser.add_argument("--answer-tokens", type=int, default=100)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per variant (the fastest is shown)")
    parser.add_argument("--memory-limit-gib", type=float, default=20.0, help="data-segment cap per process")
    parser.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        run_child(args)
        return
    results = []
    for variant in args.variants:
        for record in launch(args, variant):
            results.append(record)
            print(json.dumps(record), flush=True)
    by_name = {r["variant"]: r for r in results if "error" not in r and r.get("rank", 0) == 0}
    print(f"\n{'variant':<12} {'tokens':>7} {'loss':>9} {'step s':>8} {'peak GiB':>9} {'held GiB':>9}")
    for record in results:
        if "error" in record:
            print(f"{record['variant']:<12} failed: {record['error'][-200:]!r}")
            continue
        name = record["variant"] + (f"[{record['rank']}]" if "rank" in record else "")
        print(
            f"{name:<12} {record['tokens']:>7} {record['loss']:>9.5f} {record['step_s']:>8.2f} "
            f"{record['peak_gib']:>9.2f} {record['held_after_step_gib']:>9.2f}"
        )
    if "full_logits" in by_name and "labelled" in by_name:
        full, labelled = by_name["full_logits"], by_name["labelled"]
        print(
            f"\nlabelled-only / full-logits: peak memory {labelled['peak_gib'] / full['peak_gib']:.2f}x, "
            f"step time {labelled['step_s'] / full['step_s']:.2f}x, loss difference "
            f"{abs(labelled['loss'] - full['loss']) / abs(full['loss']):.1e} (relative)"
        )


if __name__ == "__main__":
    main()
