"""The batches of runs trained side by side: at every step, each run's own batch.

Run k at global step g trains on exactly the batch ``mmrope train fit --seed_everything k --data.seed k`` trains on
at step g: the same data module builds the same dataset, sampler and collator (``train_dataloader()``),
and step g is batch g % B of epoch g // B (B batches an epoch, the last one short, as the DataLoader makes them).
Two ways to draw the pixels:

- ``pillow``: each sample is the dataset's own item, rendered by Pillow in this process (or the loader's workers):
  the standard path's batch, value for value;
- ``torch``: the scenes (or clips) are sampled on the host as the dataset samples them, packed into a few small
  tensors, and drawn on the training device in one batch by :mod:`mmrope.data.render` (pixel for pixel what Pillow
  draws); captions and tokens come from the same scene dicts. Shapes and clips without augmentation only.

The runs' batches are padded to one length and stacked on a leading run axis; positions and the attention layout are
worked out on the host per run (``Captioner.layout``), as the training module does before a batch moves.

Einstein legend: r runs, b samples of a batch, n tokens, t frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from mmrope.model.tokens import IGNORE_INDEX, PAD_ID
from mmrope.model.vision import clip_mask

RENDERERS = ("pillow", "torch")


@dataclass
class RunData:
    """One run's training data, as its data module makes it."""

    dataset: Dataset
    sampler: object  # a ResumableSampler
    collate: object  # a CaptionCollator
    batch_size: int

    @classmethod
    def of(cls, datamodule) -> RunData:
        if not datamodule.benchmark.generated:
            raise ValueError(f"stacked training draws its samples from (seed, index), as shapes and clips are drawn, "
                             f"not data.dataset={datamodule.dataset!r}: train real captions with `mmrope train fit`")
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        return cls(loader.dataset, loader.sampler, loader.collate_fn, loader.batch_size)

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.sampler) // self.batch_size)  # the last batch of an epoch may be short, as in training

    def indices(self, step: int, cache: dict) -> list[int]:
        """The dataset indices of the run's batch at global ``step`` (the sampler's shuffle of that epoch, which also
        moves the dataset to that epoch)."""
        epoch, batch = divmod(step, self.batches_per_epoch)
        if cache.get("epoch") != epoch:
            self.sampler.set_epoch(epoch)
            cache["epoch"], cache["order"] = epoch, list(iter(self.sampler))
        return cache["order"][batch * self.batch_size:(batch + 1) * self.batch_size]


def draw_samples(data: RunData, indices: list[int]) -> tuple[list[dict], list[dict] | None]:
    """The samples of a torch-rendered batch, without pixels -> (samples for the collator, scenes to draw).

    A sample holds what ``ShapesDataset`` / ``ClipsDataset`` give (the first caption, every caption as references,
    the scene, the id) and, in place of the pixels, a zero-stride tensor of their shape: the collator only reads
    shapes."""
    ds = data.dataset
    scenes = [ds.scene(i) for i in indices]
    samples = []
    for scene in scenes:
        captions = scene["captions"]
        sample = {"caption": captions[0], "references": list(captions), "scene": scene,
                  "id": f"{ds.name}/{ds.split}/{ds.seed}/{scene['index']}"}
        if hasattr(ds, "clip_args"):  # a generated clip: its frames
            frames = ds.clip_args["frames"]
            sample |= {"video": torch.empty(()).expand(frames, 3, ds.size, ds.size), "fps": scene["fps"]}
        else:
            sample["image"] = torch.empty(()).expand(3, ds.size, ds.size)
        samples.append(sample)
    return samples, scenes


def check_renderer(renderer: str, data: RunData) -> None:
    if renderer not in RENDERERS:
        raise ValueError(f"renderer={renderer!r} is unknown: expected one of {', '.join(RENDERERS)}")
    from mmrope.data.shapes_dataset import GeneratedDataset

    name = getattr(data.dataset, "name", None)
    generated = isinstance(data.dataset, GeneratedDataset)
    if renderer == "torch" and (not generated or data.dataset.transform is not None):
        raise ValueError("renderer='torch' draws shapes and clips without augmentation (data.augment: false); "
                         f"this run trains on {name or type(data.dataset).__name__}"
                         + (" with augmentation" if generated else "") + ": use renderer='pillow'")


class StepBatches(Dataset):
    """Item g: every run's batch at global step g, stacked -> a dict of

    ``input_ids``, ``labels``   (r, b, n) long, right-padded to one length n
    ``position_ids``            (r, 3, b, n) the (t, h, w) ids of each run's layout
    ``media_slots``             (sum N_i,) the media slots' flat indices, the same for every run (checked)
    ``images``                  (r, b, ...) float media (``pillow``), or
    ``scenes`` + ``media_shape``  the packed scenes of all runs (``torch``, see :mod:`mmrope.data.render`) and the
                                (r, b, ...) shape the drawn frames take
    ``step``                    g

    A DataLoader over it (``batch_size=None``) assembles steps ahead of training, in worker processes if asked.
    ``caption_room``: pad every step to the media prompt plus this many tokens (``data.max_caption_tokens``: one
    shape for every step, as a compiled step wants), else to the longest row of the step's runs. ``layout``:
    ``Captioner.layout`` of a model on the host (its position scheme).
    """

    def __init__(self, runs: list[RunData], steps: range, layout, renderer: str = "pillow",
                 caption_room: int | None = None):
        for data in runs:
            check_renderer(renderer, data)
        sizes = {(d.batches_per_epoch, d.batch_size) for d in runs}
        if len(sizes) != 1:
            raise ValueError(f"runs trained together need the same batches per epoch and batch size, got {sizes}")
        self.runs, self.steps, self.layout, self.renderer = runs, steps, layout, renderer
        self.caption_room = caption_room
        self._orders = [{} for _ in runs]  # per run: the current epoch's shuffle

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> dict:
        step = self.steps[i]
        batches, scenes = [], []
        for data, order in zip(self.runs, self._orders):
            indices = data.indices(step, order)
            if self.renderer == "pillow":
                batches.append(data.collate([data.dataset[j] for j in indices]))
            else:
                samples, drawn = draw_samples(data, indices)
                batches.append(data.collate(samples))
                scenes += drawn
        out = self._stack(batches)
        out["step"] = step
        if self.renderer == "pillow":
            out["images"] = torch.stack([torch.stack(b["images"]) for b in batches])  # (r, b, ...) media
        else:
            from mmrope.data.render import clip_frame_scenes, pack_scenes

            media = batches[0]["images"][0]
            clips = media.ndim == 4
            frames = clip_frame_scenes(scenes) if clips else scenes
            out["scenes"] = pack_scenes(frames, media.shape[-1])
            out["media_shape"] = (len(batches), len(batches[0]["images"]), *media.shape)
        return out

    def _stack(self, batches: list[dict]) -> dict:
        length = max(b["input_ids"].shape[1] for b in batches)
        if self.caption_room is not None:  # the prompt (where the first caption label sits) + the caption's room
            length = int((batches[0]["labels"][0] != IGNORE_INDEX).nonzero()[0]) + self.caption_room
        ids, labels, positions, slots = [], [], [], None
        for b in batches:
            extra = length - b["input_ids"].shape[1]
            if extra < 0:
                raise ValueError(f"a batch holds {b['input_ids'].shape[1]} tokens, more than its prompt and "
                                 f"data.max_caption_tokens={self.caption_room}")
            input_ids = torch.nn.functional.pad(b["input_ids"], (0, extra), value=PAD_ID)  # right padding
            mask = torch.nn.functional.pad(b["attention_mask"], (0, extra), value=0)
            layout = self.layout(input_ids, b["image_grid_thw"], mask, clip_mask(b["images"]), b["second_per_grid_t"])
            if layout.attention_mask is not None:
                raise ValueError("stacked training needs right-padded batches (plain causal attention); this layout "
                                 "keeps an attention mask")
            if slots is not None and not torch.equal(slots, layout.media_slots):
                raise ValueError("runs trained together need their media at the same places of the sequence")
            slots = layout.media_slots
            ids.append(input_ids)
            labels.append(torch.nn.functional.pad(b["labels"], (0, extra), value=IGNORE_INDEX))
            positions.append(layout.position_ids)
        return {"input_ids": torch.stack(ids), "labels": torch.stack(labels), "position_ids": torch.stack(positions),
                "media_slots": slots}


def to_device(batch: dict, device: torch.device) -> dict:
    """A step's batch on ``device``, drawn there if it holds scenes -> input_ids, labels, position_ids, media_slots,
    images (r, b, ...). Copies from page-locked memory are asynchronous: nothing here waits for the device."""
    from mmrope.data.render import render_packed

    out = {k: batch[k].to(device, non_blocking=True) for k in ("input_ids", "labels", "position_ids", "media_slots")}
    if "images" in batch:
        out["images"] = batch["images"].to(device, non_blocking=True)
    else:
        out["images"] = render_packed(batch["scenes"].to(device, non_blocking=True)).view(batch["media_shape"])
    return out
