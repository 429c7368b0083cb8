"""The model, in plain PyTorch: it imports nothing else of mmrope, so it can be lifted into any training loop.

    config.py              VisionConfig, TextConfig, CaptionerConfig: the YAML's ``model:`` section, validated
    rope.py                every rotary variant and the one apply function (the subject of the project)
    position_ids.py        (t, h, w) ids of the joint sequence and (t, row, col) ids of encoder patches
    registry.py            Registry: the name -> class table of every plug-in, checked live
    draws.py               TrainingDraws: a module's random draws in training, reproducible and resumable
    pos_encodings/         the encoder's ``pos_encoding`` plug-ins: base.py (ENCODERS), one module per family
    decoder_schemes/       the decoder's ``position_scheme`` plug-ins: base.py (SCHEMES), one module per family
    layers.py              RMSNorm, MLPs, attention with rotary q/k, GQA and a KV cache
    rotary_apply.py        which rotary apply runs (reference, compiled, Triton), chosen at build
    triton_rope.py         the fused rotary apply on CUDA
    vision.py              the ViT encoder and the patch merger
    text.py                the Llama-style decoder
    captioner.py           encoder + decoder joined by the position scheme
    generation.py          greedy, nucleus sampling and beam search
    tokens.py              the reserved token ids and the layout of a media block
    flops.py               parameter and FLOP counts
"""

import importlib

_EXPORTS = {
    "Captioner": "captioner", "Layout": "captioner", "CaptionerConfig": "config", "VisionConfig": "config",
    "TextConfig": "config", "num_parameters": "flops", "flops_per_token": "flops",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmrope.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmrope.model' has no attribute {name!r}")
