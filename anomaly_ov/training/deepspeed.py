"""DeepSpeed through accelerate: the ZeRO config, the accelerator, and ZeRO-3 parameter gathering.

Stage 2 runs on DeepSpeed's ZeRO-2 or ZeRO-3 (optionally offloading optimizer state and parameters to the
CPU) via accelerate's integration: :func:`make_deepspeed_accelerator` builds the DeepSpeed JSON config from
typed values (``configs/trainer/stage2/*.yaml``) and an ``Accelerator`` around it. The same code runs as one
process (``python``), as N processes (``torchrun``, ``accelerate launch``, ``deepspeed``) on GPUs with NCCL,
and as N CPU processes with gloo (``DS_ACCELERATOR=cpu``, what the tests use).

ZeRO-3 partitions every parameter: outside its module's ``forward`` a parameter is an empty placeholder.
Anomaly-OV touches one trained parameter outside a module call -- LLaVA-OneVision's image newline, read by
:meth:`~anomaly_ov.models.anomaly_ov.AnomalyOV.encode_images` for the packed image features and the anomaly
tokens -- so :func:`register_outside_parameters` declares it an *external parameter* of the top module:
DeepSpeed then gathers it for the whole forward and backward of :class:`AnomalyOV` (ZeRO-3's documented
mechanism for exactly this). The severity text's embedding lookup is a call of the embedding module, and the
expert's tower-identity check runs at build time on full weights (``zero3_init_flag`` is off), so neither
needs more. Exporting gathers every parameter (:func:`full_parameters`).
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedType, InitProcessGroupKwargs
from torch import nn

logger = logging.getLogger(__name__)

ZERO_STAGES: tuple[int, ...] = (2, 3)


def deepspeed_config(
    zero_stage: int,
    per_device_batch_size: int,
    gradient_accumulation_steps: int,
    bf16: bool = True,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    gradient_clipping: float = 1.0,
    overlap_comm: bool = True,
) -> dict[str, Any]:
    """The DeepSpeed JSON config of a ZeRO-2 / ZeRO-3 run (optimizer and scheduler stay in Python).

    Args:
        zero_stage: 2 (optimizer state and gradients partitioned) or 3 (parameters too).
        per_device_batch_size: Samples per forward on one process (``train_micro_batch_size_per_gpu``).
        gradient_accumulation_steps: Micro-batches per optimizer step on one process.
        bf16: Keep the model in bfloat16 with fp32 master weights in the optimizer.
        offload_optimizer: Keep the optimizer state (and step) on the CPU.
        offload_parameters: Keep the partitioned parameters on the CPU (ZeRO-3 only).
        gradient_clipping: Global gradient-norm clip (0 = off).
        overlap_comm: Overlap gradient reduction with the backward pass (GPUs).

    Returns:
        The config dict for ``DeepSpeedPlugin(hf_ds_config=...)``.

    Raises:
        ValueError: For a stage other than 2 or 3, parameter offload without ZeRO-3, or non-positive sizes.
    """
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage={zero_stage}; expected one of {list(ZERO_STAGES)}.")
    if offload_parameters and zero_stage != 3:
        raise ValueError("offload_parameters needs zero_stage=3 (ZeRO-2 does not partition parameters).")
    if per_device_batch_size < 1 or gradient_accumulation_steps < 1:
        raise ValueError(
            f"per_device_batch_size={per_device_batch_size} and gradient_accumulation_steps="
            f"{gradient_accumulation_steps} must be positive."
        )
    zero: dict[str, Any] = {
        "stage": zero_stage,
        "overlap_comm": overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e8,
    }
    if zero_stage == 2:
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = 5e8
        zero["reduce_scatter"] = True
    else:
        zero["stage3_prefetch_bucket_size"] = 5e8
        zero["stage3_param_persistence_threshold"] = 1e5
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": per_device_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": gradient_clipping,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # the optimizer is a Python object (torch AdamW, or DeepSpeedCPUAdam when offloading)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _init_cpu_process_group(timeout_minutes: float) -> None:
    """Creates the gloo process group of a CPU run (DeepSpeed would otherwise ask for oneCCL)."""
    if torch.distributed.is_initialized() or torch.cuda.is_available():
        return
    torch.distributed.init_process_group("gloo", timeout=timedelta(minutes=timeout_minutes))


def _single_process_environment() -> None:
    """DeepSpeed needs a (one-member) process group even for one process started with plain ``python``."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    if "RANK" in os.environ:
        return
    os.environ.update(defaults)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


def make_deepspeed_accelerator(
    zero_stage: int = 2,
    per_device_batch_size: int = 1,
    gradient_accumulation_steps: int = 1,
    global_batch_size: int | None = None,
    bf16: bool = True,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    gradient_clipping: float = 1.0,
    timeout_minutes: float = 120.0,
    log_with: str | None = None,
    project_dir: str | None = None,
) -> Accelerator:
    """The accelerate state of this process with DeepSpeed ZeRO (``configs/trainer/stage2/*.yaml``).

    Args:
        zero_stage: 2 or 3.
        per_device_batch_size: Samples per forward on one process.
        gradient_accumulation_steps: Micro-batches per optimizer step on one process; ignored when
            ``global_batch_size`` is given.
        global_batch_size: Samples per optimizer step over all processes (None: ``per_device_batch_size *
            gradient_accumulation_steps * processes``). Setting it keeps the optimisation the same for any
            number of processes (the accumulation adapts).
        bf16: bfloat16 weights and activations (GPUs); False keeps float32 (CPU tests).
        offload_optimizer: Optimizer state on the CPU.
        offload_parameters: Parameters on the CPU (ZeRO-3).
        gradient_clipping: Global gradient-norm clip (0 = off).
        timeout_minutes: Collective-operation timeout: the other ranks wait this long for the main process's
            pass over the mixture (it reads every image header before training).
        log_with: Experiment tracker ("wandb") or None.
        project_dir: Where trackers write.

    Returns:
        The accelerator (``distributed_type`` DEEPSPEED).

    Raises:
        ValueError: If ``global_batch_size`` is not a multiple of ``per_device_batch_size * processes``.
    """
    _single_process_environment()
    _init_cpu_process_group(timeout_minutes)
    world = int(os.environ["WORLD_SIZE"])
    if global_batch_size is not None:
        per_step = per_device_batch_size * world
        if global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not a multiple of per_device_batch_size="
                f"{per_device_batch_size} x {world} processes."
            )
        gradient_accumulation_steps = global_batch_size // per_step
    config = deepspeed_config(
        zero_stage,
        per_device_batch_size,
        gradient_accumulation_steps,
        bf16=bf16,
        offload_optimizer=offload_optimizer,
        offload_parameters=offload_parameters,
        gradient_clipping=gradient_clipping,
        overlap_comm=torch.cuda.is_available(),
    )
    # zero3_init_flag off: models are built whole on every process and partitioned by deepspeed.initialize,
    # so build-time checks (the expert's tower identity) read real weights.
    plugin = DeepSpeedPlugin(hf_ds_config=config, zero3_init_flag=False)
    # on CPUs accelerate only distributes when told the backend (its cpu=True would turn DeepSpeed off)
    backend = None if torch.cuda.is_available() else "gloo"
    handlers = [InitProcessGroupKwargs(backend=backend, timeout=timedelta(minutes=timeout_minutes))]
    accelerator = Accelerator(
        deepspeed_plugin=plugin, log_with=log_with, project_dir=project_dir, kwargs_handlers=handlers
    )
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise RuntimeError(f"accelerate chose {accelerator.distributed_type}, not DeepSpeed.")
    return accelerator


@contextmanager
def whole_weights_build(accelerator: Accelerator) -> Iterator[None]:
    """Models built inside the block load whole weights on every process (no ``deepspeed.zero.Init``).

    accelerate registers its DeepSpeed config with transformers, whose ``from_pretrained`` then partitions
    a ZeRO-3 model while loading it; the builders' checks (the expert's tower identity) need real weights,
    and ``accelerator.prepare`` partitions the model anyway. (A 7B model in bf16 then takes ~15 GB of host
    memory per process while it is built.)
    """
    from transformers.integrations import unset_hf_deepspeed_config

    plugin = accelerator.state.deepspeed_plugin
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if plugin is not None:
            plugin.set_deepspeed_weakref()


def zero_stage(accelerator: Accelerator) -> int:
    """The ZeRO stage of a DeepSpeed accelerator (0 without DeepSpeed)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def register_outside_parameters(module: nn.Module, parameters: list[nn.Parameter]) -> None:
    """Declares parameters that ``module``'s forward reads outside their own modules' calls (ZeRO-3).

    DeepSpeed then gathers them whenever it gathers ``module``'s own parameters (forward and backward). A
    no-op without ZeRO-3 parameter partitioning.

    Args:
        module: The module whose forward reads them (Anomaly-OV's top module).
        parameters: E.g. ``[model.llava.model.image_newline]``.
    """
    import deepspeed

    for parameter in parameters:
        deepspeed.zero.register_external_parameter(module, parameter)


def outside_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters :class:`AnomalyOV` reads outside a module call: the image newline."""
    return [model.llava.model.image_newline]


@contextmanager
def full_parameters(module: nn.Module, stage: int) -> Iterator[None]:
    """Every parameter of ``module`` whole on every process inside the block (ZeRO-3 gathers; else no-op).

    Use it to read weights (export, checksums); writes inside the block are not kept.
    """
    if stage != 3:
        with nullcontext():
            yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


def parameter_count(parameter: nn.Parameter) -> int:
    """Element count of a parameter, also when ZeRO-3 has partitioned it (``ds_numel``)."""
    return int(parameter.ds_numel) if hasattr(parameter, "ds_numel") else parameter.numel()
