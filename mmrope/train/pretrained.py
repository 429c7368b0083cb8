"""Start the ViT from a timm checkpoint on disk: a ``.safetensors`` / ``.pth`` file in timm's names, or a timm model
name with a local weights file (timm builds the model and loads the file with its own converters, so original
layouts such as JAX ``.npz`` or OpenCLIP work too). Nothing is downloaded.

timm's ViT and :class:`mmrope.model.vision.VisionEncoder` share their names block for block (``norm1``,
``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``; q, k, v stacked in that order, heads inside
each), so the mapping is short:

    patch_embed.proj.*  -> patch_embed.*           (a Conv2d; with temporal_patch_size tp, repeated over the tp
                                                    stacked frames and divided by tp, so a still clip embeds as
                                                    the image did: Qwen2-VL's inflation)
    blocks.N.*          -> blocks.N.*              (a checkpoint without qkv bias gives ours zeros)
    norm.*              -> merger.norm.*           (the LayerNorm after the last block: the merger's is there)
    pos_embed           -> positions.pos_embed.weight, resampled to vision.image_size // patch_size with timm's
                           resample_abs_pos_embed when the encoding has a learned table (learned, rope2d_learned);
                           dropped otherwise (rope2d, sincos2d, ...: the blocks must learn positions anew)
    cls_token, reg_token   dropped: the encoder has no prefix tokens (their rows of pos_embed go too)
    head.*, fc_norm.*, attn_pool.*   dropped: the classifier

Any other tensor (layer scale, q/k norms, a pre-norm), or one whose shape does not fit, is one ``ValueError``
naming it. The merger's MLP and the decoder start from scratch.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from mmrope.errors import one_line

LAYERS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")  # a block's, in the order it runs them
BLOCK_TENSORS = {f"{layer}.{kind}" for layer in LAYERS for kind in ("weight", "bias")}
DROPPED = ("cls_token", "reg_token", "head.", "head_drop", "fc_norm.", "attn_pool.")


def read_timm_weights(path: str | Path, timm_model: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a timm ViT from a file on disk: read as they are (``.safetensors``, or a ``.pth`` / ``.pt``
    / ``.bin`` read with ``weights_only=True``), or, with ``timm_model``, loaded by timm into that model."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file (model.vision_init.path)")
    if timm_model is not None:
        import timm

        try:
            model = timm.create_model(timm_model, pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay={"file": str(path), "source": "file"})
        except Exception as e:  # noqa: BLE001 - timm raises RuntimeError, KeyError, ... for a file it cannot load
            raise ValueError(f"{path}: timm could not load it into {timm_model} ({one_line(e, 300)})"
                             ) from None
        return model.state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise ValueError(f"{path}: not a safetensors file ({one_line(e, 200)})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a torn or crafted file raises anything from pickle
        raise ValueError(f"{path}: cannot read it as a torch file of tensors ({one_line(e, 200)})"
                         ) from None
    for key in ("state_dict", "model", "module"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def vision_state_from_timm(timm_state: dict[str, torch.Tensor], encoder: nn.Module, where: str = "checkpoint"
                           ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm ViT tensors -> (a state for ``encoder``, with only the tensors the checkpoint gives; notes on what was
    resampled, dropped or zeroed). One ``ValueError`` names the first tensor that does not fit."""
    ours = encoder.state_dict()
    state: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    dropped = [k for k in timm_state if k.startswith(DROPPED)]
    if dropped:
        notes.append(f"dropped {', '.join(sorted({k.split('.')[0] for k in dropped}))} (no counterpart)")
    for name in sorted(timm_state, key=_model_order):  # "the first" as the model runs, whatever the file's order
        tensor = timm_state[name]
        if name.startswith(DROPPED):
            continue
        if name == "pos_embed":
            table = _pos_embed(timm_state, ours, encoder, where, notes)
            if table is not None:
                state["positions.pos_embed.weight"] = table
            continue
        target = _our_name(name)
        if target is None:
            raise ValueError(f"{where}: {name} {tuple(tensor.shape)} has no counterpart in mmrope's ViT "
                             "(timm options it cannot hold: layer scale, q/k norm, a pre-norm, ...)")
        if target not in ours:
            raise ValueError(f"{where}: {name} has no counterpart: the checkpoint has more blocks than "
                             f"vision.depth={len(encoder.blocks)}")
        if target == "patch_embed.weight":
            tensor = _inflate(tensor, ours[target], where)
        if tuple(tensor.shape) != tuple(ours[target].shape):
            raise ValueError(f"{where}: {name} has shape {tuple(tensor.shape)}, vision.{target} expects "
                             f"{tuple(ours[target].shape)} (vision.dim, num_heads, patch_size, mlp_ratio must "
                             "match the checkpoint)")
        state[target] = tensor.to(ours[target].dtype)
    for target in ours:
        if target in state or not target.startswith(("patch_embed.", "blocks.")):
            continue
        if target.endswith("attn.qkv.bias"):  # timm ViTs built with qkv_bias=False: no bias is a zero bias
            state[target] = torch.zeros_like(ours[target])
            continue
        source = "patch_embed.proj." + target.split(".")[-1] if target.startswith("patch_embed.") else target
        raise ValueError(f"{where}: has no {source} for vision.{target} (vision.depth={len(encoder.blocks)}: is "
                         "the checkpoint shallower?)")
    if any(k.endswith("attn.qkv.bias") for k in ours) and not any(k.endswith("attn.qkv.bias") for k in timm_state):
        notes.append("no qkv bias in the checkpoint: zero biases")
    return state, notes


def _model_order(name: str) -> tuple:
    """Where a timm ViT tensor is met in a forward pass: patch embedding, positions, block by block, the rest."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        rest = ".".join(parts[2:])
        order = sorted(BLOCK_TENSORS, key=lambda t: (LAYERS.index(t.rsplit(".", 1)[0]), t.endswith("bias")))
        return (2, int(parts[1]), order.index(rest) if rest in order else len(order), rest)
    first = {"patch_embed": 0, "cls_token": 1, "reg_token": 1, "pos_embed": 1}.get(parts[0], 3)
    return (first, 0, parts[-1] != "weight", name)  # a layer's weight before its bias


def _our_name(name: str) -> str | None:
    if name.startswith("patch_embed.proj."):
        return "patch_embed." + name.removeprefix("patch_embed.proj.")
    if name in ("norm.weight", "norm.bias"):
        return "merger." + name
    parts = name.split(".", 2)
    if parts[0] == "blocks" and len(parts) == 3 and parts[1].isdigit() and parts[2] in BLOCK_TENSORS:
        return name
    return None


def _inflate(weight: torch.Tensor, like: torch.Tensor, where: str) -> torch.Tensor:
    """A (dim, 3, p, p) patch conv for tp stacked frames (dim, 3 * tp, p, p): repeated and divided by tp."""
    channels, wanted = weight.shape[1], like.shape[1]
    if weight.ndim == 4 and like.ndim == 4 and wanted != channels and wanted % channels == 0:
        tp = wanted // channels
        return weight.repeat(1, tp, 1, 1) / tp
    return weight


def _pos_embed(timm_state: dict, ours: dict, encoder: nn.Module, where: str, notes: list[str]) -> torch.Tensor | None:
    """timm's absolute table without its prefix rows, resampled to our grid; None when our encoding has no table."""
    table = timm_state["pos_embed"]
    if "positions.pos_embed.weight" not in ours:
        notes.append(f"pos_embed dropped (vision.pos_encoding={encoder.config.pos_encoding!r} has no learned table)")
        return None
    if table.ndim == 4:  # (1, H, W, C): timm's dynamic_img_size layout
        (old_h, old_w), prefix = table.shape[1:3], 0
        table = table.reshape(1, old_h * old_w, table.shape[-1])
    else:
        prefix = int("cls_token" in timm_state) + (timm_state["reg_token"].shape[1] if "reg_token" in timm_state else 0)
        n = table.shape[1]
        side = math.isqrt(n - prefix)
        if side * side != n - prefix:
            side, prefix = math.isqrt(n), 0  # no_embed_class: the prefix tokens have no rows
            if side * side != n:
                raise ValueError(f"{where}: pos_embed {tuple(table.shape)} is not a square grid of patches")
        old_h = old_w = side
    from timm.layers import resample_abs_pos_embed

    grid = encoder.positions.pos_embed.grid
    dim = ours["positions.pos_embed.weight"].shape[-1]
    if table.shape[-1] != dim:
        raise ValueError(f"{where}: pos_embed has width {table.shape[-1]}, vision.positions.pos_embed.weight "
                         f"expects {dim}")
    resampled = resample_abs_pos_embed(table.float(), new_size=[grid, grid], old_size=[old_h, old_w],
                                       num_prefix_tokens=prefix, interpolation="bicubic", antialias=True)
    notes.append(f"pos_embed {old_h}x{old_w} resampled to {grid}x{grid}" if (old_h, old_w) != (grid, grid)
                 else "pos_embed kept")
    return resampled[0, prefix:].to(ours["positions.pos_embed.weight"].dtype)  # (grid * grid, dim), raster order


def load_timm_vision(encoder: nn.Module, path: str | Path, timm_model: str | None = None
                     ) -> tuple[list[str], list[str]]:
    """Load a timm ViT checkpoint into ``encoder`` (see the module docstring) -> (the names of the parameters it
    set, notes for the log)."""
    where = f"{path}" + (f" ({timm_model})" if timm_model else "")
    state, notes = vision_state_from_timm(read_timm_weights(path, timm_model), encoder, where)
    with torch.no_grad():
        params = dict(encoder.named_parameters())
        buffers = dict(encoder.named_buffers())
        for name, tensor in state.items():
            (params.get(name) if name in params else buffers[name]).copy_(tensor)
    return [n for n in state if n in params], notes
