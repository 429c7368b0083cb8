"""Data: the shapes benchmark, real caption formats, robust image loading, and collation.

    shapes.py    scenes, rendering and ShapesDataset      scoring.py   caption parser and scorer for shapes
    images.py    load_image, smart_resize, ImageTransform  captions.py  COCO / imagefolder / CSV + CaptionDataset
    collate.py   CaptionCollator                          export.py    the ``mmrope data shapes`` command

The main names are re-exported here lazily, so that importing ``mmrope.data.export`` for the CLI does not pull
in torch.
"""

import importlib

_EXPORTS = {
    "ShapesDataset": "shapes", "sample_scene": "shapes", "render_scene": "shapes", "held_out_combos": "shapes",
    "parse_caption": "scoring", "score_caption": "scoring", "score_captions": "scoring", "aggregate": "scoring",
    "ImageError": "images", "load_image": "images", "smart_resize": "images", "ImageTransform": "images",
    "denormalize": "images", "MEAN": "images", "STD": "images",
    "CaptionRecord": "captions", "CaptionDataset": "captions", "load_coco": "captions",
    "load_imagefolder": "captions", "load_csv": "captions", "load_caption_records": "captions",
    "CaptionCollator": "collate",
}

def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmrope.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmrope.data' has no attribute {name!r}")
