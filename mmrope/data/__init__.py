"""Data: the synthetic benchmarks, real caption formats, robust image and clip loading, tokenizers and collation.

    shapes.py          the shapes benchmark's scenes: sampled, rendered, captioned
    shapes_dataset.py  GeneratedDataset (samples drawn from split, seed, index), ShapesDataset
    clips.py           synthetic clips, rendering, ClipsDataset
    render.py          the shapes and clips scenes drawn as one batch of tensors, on any device
    images.py          load_image, smart_resize, ImageTransform
    videos.py          frame folders and animated files as clips
    captions.py        COCO / imagefolder / CSV records + CaptionDataset
    hf_datasets.py     Hugging Face save_to_disk folders, parquet and arrow files, read with pyarrow
    shards/            WebDataset shards: index, split over ranks and workers, resume, write
    tokenizer.py       byte and word tokenizers
    collate.py         samples -> the decoder's joint sequences
    loader.py          the DataLoader that says once, in the main process, why a sample was skipped

The scorers of the benchmarks' captions are in :mod:`mmrope.eval`. The main names are re-exported here lazily, so
that ``import mmrope.data`` does not pull in torch.
"""

import importlib

_EXPORTS = {
    "ShapesDataset": "shapes_dataset", "sample_scene": "shapes", "render_scene": "shapes", "held_out_combos": "shapes",
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
