"""The LightningModule: the training loop around :class:`mmrope.model.captioner.Captioner`.

The model knows nothing of Lightning; this adds what a training run needs: the optimizer and schedule, a step that
stops (or skips) on a non-finite loss, validation that generates captions and scores them, and checkpoints that
carry the model config and tokenizer, so that inference needs neither Lightning nor this module.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from mmrope.checkpoints import mmrope_entry
from mmrope.data.collate import SkippedBatch
from mmrope.data.tokenizer import Tokenizer, load_tokenizer
from mmrope.eval.scoring import score_generated
from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, RotaryApplyName, TextConfig, VisionConfig, as_config
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.flops import num_parameters
from mmrope.model.vision import clip_mask
from mmrope.train.optim import OptimConfig, cosine_with_warmup, parameter_groups

log = logging.getLogger("mmrope")


class NonFiniteLossError(FloatingPointError):
    pass


@dataclass
class VisionInit:
    """Start the ViT from a timm checkpoint on disk (:mod:`mmrope.train.pretrained`; nothing is downloaded)."""
    path: str  # a .safetensors / .pth file in timm's names, or the weights file of `timm_model`
    timm_model: str | None = None  # a timm model name: timm builds it and loads `path` with its own converters
    freeze_steps: int = 0  # the loaded tensors get no update for this many optimizer steps (the new parts settle)

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"model.vision_init.path={self.path!r}: expected the path of a weights file")
        if not isinstance(self.freeze_steps, int) or self.freeze_steps < 0:
            raise ValueError(f"model.vision_init.freeze_steps={self.freeze_steps!r}: expected a whole number >= 0")


class CaptionModule(L.LightningModule):
    """A :class:`Captioner` with its training and evaluation loop.

    The first five arguments are those of :class:`CaptionerConfig`, so the YAML reads ``model.vision.dim`` and the
    command line ``--model.vision.pos_encoding rope1d_flat``. ``tokenizer`` is filled in from the data module.
    ``vision_init`` starts the ViT from a timm checkpoint when a run starts (not when it resumes).
    """

    def __init__(self, vision: VisionConfig = VisionConfig(), text: TextConfig = TextConfig(),  # noqa: B008
                 position_scheme: str = "mrope_interleaved",
                 tokens_per_second: float | None = None, rotary_apply: RotaryApplyName = "auto",
                 optim: OptimConfig = OptimConfig(), max_new_tokens: int = 24,  # noqa: B008
                 on_nonfinite: Literal["raise", "skip"] = "raise", compile: bool = False,
                 log_samples: int = 8, vision_init: VisionInit | None = None, tokenizer: dict | None = None):
        super().__init__()
        # copies: the defaults above are shared, and checkpoints hand back plain dicts
        vision, text, optim = (copy.deepcopy(as_config(cls, v, prefix)) for cls, v, prefix in
                               ((VisionConfig, vision, "model.vision."), (TextConfig, text, "model.text."),
                                (OptimConfig, optim, "model.optim.")))
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"model.on_nonfinite={on_nonfinite!r}: expected 'raise' or 'skip'")
        self.tokenizer: Tokenizer | None = load_tokenizer(tokenizer) if tokenizer is not None else None
        if self.tokenizer is not None:
            text.vocab_size = self.tokenizer.vocab_size
        self.config = CaptionerConfig(vision=vision, text=text, position_scheme=position_scheme,
                                      tokens_per_second=tokens_per_second, rotary_apply=rotary_apply)
        self.optim, self.max_new_tokens, self.on_nonfinite = optim, max_new_tokens, on_nonfinite
        self.log_samples = log_samples
        self.vision_init = copy.deepcopy(as_config(VisionInit, vision_init, "model.vision_init.")) \
            if vision_init is not None else None
        self._frozen: list[str] = []  # the vision parameters vision_init set, held while freeze_steps last
        # plain dicts only, so that checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters({**self.config.to_dict(), "optim": asdict(optim), "max_new_tokens": max_new_tokens,
                                   "on_nonfinite": on_nonfinite, "compile": compile, "log_samples": log_samples,
                                   "vision_init": asdict(self.vision_init) if self.vision_init else None,
                                   "tokenizer": tokenizer})
        self.model = Captioner(self.config)
        self.compile_model = compile  # in configure_model: a Trainer compiles, the stacked engine its whole step
        self._eval_outputs: dict[int, list[dict]] = {}
        self._probe_counts: dict[str, torch.Tensor] = {}  # teacher-forced probe words: (right, total)

    def configure_model(self) -> None:
        """``model.compile: true``: ``torch.compile`` the model once, when a Trainer first runs it (the weights' names
        do not change)."""
        if self.compile_model and not getattr(self, "_compiled", False):
            self.model.compile()
            self._compiled = True

    # checkpoints carry what inference needs, independent of Lightning's hyper-parameters
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mmrope"] = mmrope_entry(self.config, self.tokenizer)
        if self._frozen:
            checkpoint["vision_frozen"] = list(self._frozen)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._frozen = list(checkpoint.get("vision_frozen", []))

    def _start_vision_from_timm(self) -> None:
        """A new run starts the ViT from ``vision_init``; a resumed one has its weights, and the names of the frozen
        ones, from its checkpoint. Called at the start of fit, once Lightning has restored any checkpoint (it
        restores after ``setup``, which would overwrite the loaded tensors) and before the first step."""
        if self.vision_init is None or self.trainer.ckpt_path is not None:
            return
        from mmrope.train.pretrained import load_timm_vision

        init = self.vision_init
        loaded, notes = load_timm_vision(self.model.vision, init.path, init.timm_model)
        self._frozen = loaded if init.freeze_steps else []
        if self.global_rank == 0:
            frozen = f"; frozen for {init.freeze_steps} steps" if init.freeze_steps else ""
            log.info("vision: %d tensors from %s (%s)%s", len(loaded), init.path, "; ".join(notes) or "all", frozen)

    def on_before_optimizer_step(self, optimizer) -> None:
        """While ``vision_init.freeze_steps`` last, the loaded tensors get no gradient, so AdamW leaves them (and
        their moments and weight decay) alone; the backward still runs through them, so DDP's buckets fill."""
        if self._frozen and self.vision_init is not None and self.global_step < self.vision_init.freeze_steps:
            params = dict(self.model.vision.named_parameters())
            for name in self._frozen:
                params[name].grad = None

    def on_fit_start(self) -> None:
        self._start_vision_from_timm()
        if self.global_rank == 0:
            log.info("model: %s parameters", f"{num_parameters(self.model):,}")

    def forward(self, images, input_ids, attention_mask=None, labels=None):
        return self.model(images, input_ids, attention_mask, labels)

    def training_step(self, batch: dict | SkippedBatch, batch_idx: int):
        if isinstance(batch, SkippedBatch):  # every image of the batch was unreadable (BadDataGuard counts it)
            return None
        loss = self._loss(batch)
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:  # every rank must agree, or a skipping rank hangs the others
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
            if self.on_nonfinite == "raise":
                raise NonFiniteLossError(f"training loss is {loss.item()} at {where}: lower model.optim.lr, check "
                                         "the data, or set model.on_nonfinite: skip")
            warnings.warn(f"skipping batch: training loss is {loss.item()} at {where}", stacklevel=1)
            return None
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["prompts"]))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(parameter_groups(self.model, self.optim.weight_decay), lr=self.optim.lr,
                                betas=tuple(self.optim.betas), fused=self.device.type == "cuda" or None)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(self.optim.warmup_steps, total, self.optim.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_before_batch_transfer(self, batch: dict | SkippedBatch, dataloader_idx: int) -> dict | SkippedBatch:
        """Work out positions, the attention mask and the media slots while the batch is still on the host (see
        :meth:`Captioner.layout`): on a GPU, the step then never waits on the device, and a compiled model runs as
        one graph."""
        if isinstance(batch, dict) and "labels" in batch:
            batch["layout"] = self.model.layout(batch["input_ids"], batch["image_grid_thw"], batch["attention_mask"],
                                                clip_mask(batch["images"]), batch["second_per_grid_t"])
        return batch

    def _loss(self, batch: dict) -> torch.Tensor:
        return self.model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                          second_per_grid_t=batch["second_per_grid_t"], layout=batch.get("layout")).loss

    # evaluation: generate, then score once every rank's captions are in
    @torch.no_grad()
    def _generate_batch(self, batch: dict) -> list[str]:
        ids = self.model.generate(batch["prompts"], max_new_tokens=self.max_new_tokens,
                                  second_per_grid_t=batch["second_per_grid_t"])
        return [self.tokenizer.decode(t.tolist()) for t in ids]

    def validation_step(self, batch: dict | SkippedBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(batch, SkippedBatch):
            return
        if dataloader_idx == 0:
            out = self.model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                             second_per_grid_t=batch["second_per_grid_t"], layout=batch.get("layout"))
            self.log("val/loss", out.loss, batch_size=len(batch["prompts"]), add_dataloader_idx=False,
                     sync_dist=True)
            self._count_probes(out.logits, batch["labels"])
        captions = self._generate_batch(batch)
        outputs = self._eval_outputs.setdefault(dataloader_idx, [])
        for i, caption in enumerate(captions):
            outputs.append({"id": batch["ids"][i], "prediction": caption, "references": batch["references"][i],
                            "scene": batch["scenes"][i],
                            "image": filmstrip(batch["prompts"][i]) if len(outputs) < 16 else None})

    test_step = validation_step

    def _probes(self) -> dict[str, torch.Tensor]:
        """The benchmark's probe words (:meth:`mmrope.benchmarks.Benchmark.probe_words`) as token ids, each word
        one token of this tokenizer (a byte tokenizer has no such probes)."""
        benchmark = getattr(getattr(self.trainer, "datamodule", None), "benchmark", None)
        probes = {}
        for name, words in (benchmark.probe_words() if benchmark is not None else {}).items():
            ids = [self.tokenizer.encode(w) for w in words]
            if all(len(i) == 1 for i in ids):
                probes[name] = torch.tensor([i[0] for i in ids], device=self.device)
        return probes

    def _count_probes(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Teacher-forced accuracy at the probe words: right and total per probe, summed over the epoch."""
        predicted, target = logits[:, :-1].argmax(-1), labels[:, 1:]  # logits[:, i] predicts token i + 1
        for name, ids in self._probes().items():
            at = torch.isin(target, ids)
            counts = torch.stack(((predicted == target)[at].sum(), at.sum())).float()
            self._probe_counts[name] = self._probe_counts.get(name, 0) + counts

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    def _gather(self, outputs: list[dict]) -> list[dict]:
        """Every rank's captions, each sample once: the distributed sampler pads with duplicates."""
        if self.trainer.world_size > 1:
            light = [{k: v for k, v in o.items() if k != "image"} for o in outputs]
            gathered: list[list[dict]] = [None] * self.trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, light)
            outputs = [o for rank in gathered for o in rank]
        unique = {o["id"]: o for o in outputs}
        return [unique[k] for k in sorted(unique)]

    def _score(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "eval_names", [])
        benchmark = getattr(datamodule, "benchmark", None)  # whose accuracies score the captions
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank asks
        for name, counts in self._probe_counts.items():
            if self.trainer.world_size > 1:
                counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
            if counts[1] > 0:
                self.log(f"{stage}/tf_{name}", float(counts[0] / counts[1]), rank_zero_only=False)
        self._probe_counts = {}
        for idx in sorted(self._eval_outputs):
            local = self._eval_outputs[idx]
            outputs = self._gather(local)
            prefix = stage if idx == 0 else f"{stage}@{names[idx - 1]}"
            metrics = score_generated([o["prediction"] for o in outputs], [o["references"] for o in outputs],
                                      [o["scene"] for o in outputs], benchmark.accuracies if benchmark else None)
            metrics["num_samples"] = float(len(outputs))
            for name, value in metrics.items():
                self.log(f"{prefix}/{name}", float(value), add_dataloader_idx=False, rank_zero_only=False)
            if idx == 0 and self.global_rank == 0 and not self.trainer.sanity_checking:
                self._write_samples(stage, local, log_dir)
        self._eval_outputs = {}

    def _write_samples(self, stage: str, outputs: list[dict], log_dir: str | None) -> None:
        """A few images with their generated captions: a PNG under the log folder, and TensorBoard when used."""
        shown = [o for o in outputs if o["image"] is not None][: self.log_samples]
        if not shown or log_dir is None:
            return
        from mmrope.viz.figures import plot_captioned_images

        path = Path(log_dir) / "samples" / f"{stage}_step{self.global_step:06d}.png"
        plot_captioned_images([o["image"] for o in shown], [o["prediction"] for o in shown], path,
                              [o["references"][0] for o in shown])
        for logger in self.loggers:
            if hasattr(getattr(logger, "experiment", None), "add_text"):
                text = "\n\n".join(f"{o['prediction']}  (reference: {o['references'][0]})" for o in shown)
                logger.experiment.add_text(f"{stage}/samples", text, self.global_step)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return [{"id": i, "caption": c} for i, c in zip(batch["ids"], self._generate_batch(batch))]


# `--help` shows the names registered when this module is imported (jsonargparse reads the docstring);
# CaptionerConfig checks the live registry, so a plug-in registered later (MMROPE_PLUGINS) counts as well
CaptionModule.__doc__ += f"""
    Args:
        position_scheme: a name in SCHEMES (README "Model"): {', '.join(SCHEMES)}, or a plug-in's
"""


def filmstrip(media: list[torch.Tensor]) -> torch.Tensor:
    """A sample's images and clip frames side by side, (3, H, sum of widths), for the sample PNGs."""
    frames = [f for m in media for f in (m if m.ndim == 4 else [m])]
    height = min(f.shape[-2] for f in frames)
    return torch.cat([f[..., :height, :] for f in frames], dim=-1)
