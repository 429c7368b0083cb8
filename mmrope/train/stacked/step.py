"""One optimiser step of every run stacked together, as one function of tensors.

The step computes every run's loss and gradients in one call: ``torch.func.vmap`` over ``functional_call`` of one
template model with each run's parameters (``stack: vmap``: batched matmuls, kernels r times larger), or a loop over
the runs (``stack: loop``); then each run's clipping by its own norm and its AdamW update
(:mod:`mmrope.train.stacked.optim`). Nothing in it waits for the host, so ``torch.compile`` traces it as one graph,
and with ``reduce-overhead`` it can replay as CUDA graphs.

The template is a run's :class:`~mmrope.model.captioner.Captioner` switched to the reference rotary apply
(:meth:`Captioner.use_rotary_apply`): ``torch.func`` cannot see inside the Triton kernel's autograd function, and a
compiled step fuses the plain maths anyway.

Einstein legend: r runs, b samples of a run's batch, n tokens, p parameter elements.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.func import functional_call, grad_and_value, vmap

from mmrope.model.captioner import Captioner, Layout
from mmrope.train.optim import OptimConfig
from mmrope.train.stacked.optim import AdamWState, FlatParameters, adamw_update, clip_per_run, lr_table

STACKS = ("auto", "vmap", "loop")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


class StackedStep:
    """``step(params, exp_avg, exp_avg_sq, adam_step, global_step, images, input_ids, labels, position_ids,
    media_slots)`` -> (losses (r,), the learning rate): one optimiser step of every run, in place on the state
    tensors (params (r, p), the AdamW state, the global step counter).

    ``model``: the template every run's parameters fill in; ``autocast``: the precision's forward context (a
    callable giving a context manager); ``clip``: ``trainer.gradient_clip_val`` (None: no clipping)."""

    def __init__(self, model: Captioner, flat: FlatParameters, optim: OptimConfig, clip: float | None,
                 max_steps: int, runs: int, stack: str, autocast, device: torch.device):
        self.model, self.flat, self.optim, self.clip = model, flat, optim, clip
        self.runs, self.stack, self.autocast, self.device = runs, stack, autocast, device
        self.decay = flat.decay.to(device)
        self.lrs = lr_table(optim, max_steps, device)  # (max_steps,) float64: the schedule, looked up on the device
        model.use_rotary_apply("reference")

    def loss(self, params: dict, images, input_ids, labels, position_ids, media_slots) -> torch.Tensor:
        layout = Layout(position_ids, None, media_slots, self.model.scheme.attention_groups(input_ids))
        with self.autocast():
            out = functional_call(self.model, params, (images, input_ids), {"labels": labels, "layout": layout})
        return out.loss

    def grads(self, params: dict, images, input_ids, labels, position_ids, media_slots):
        """Every run's gradients (name -> (r, ...)) and losses (r,)."""
        if self.stack == "vmap":
            # SDPA's fused CPU kernel has no batching rule (vmap would loop over the runs inside it); its plain
            # formulation batches. On CUDA vmap gets the fused kernels (whether they batch is not measured yet).
            backend = _math_attention() if self.device.type == "cpu" else nullcontext()
            with backend:
                return vmap(grad_and_value(self.loss), in_dims=(0, 0, 0, 0, 0, None))(
                    params, images, input_ids, labels, position_ids, media_slots)
        grads, losses = [], []
        for r in range(self.runs):
            g, loss = grad_and_value(self.loss)({k: v[r] for k, v in params.items()}, images[r], input_ids[r],
                                                labels[r], position_ids[r], media_slots)
            grads.append(g)
            losses.append(loss)
        return {k: torch.stack([g[k] for g in grads]) for k in grads[0]}, torch.stack(losses)

    def train_step(self, params, exp_avg, exp_avg_sq, adam_step, global_step, images, input_ids, labels,
                   position_ids, media_slots) -> tuple[torch.Tensor, torch.Tensor]:
        grads, losses = self.grads(self.flat.views(params), images, input_ids, labels, position_ids, media_slots)
        finite = torch.isfinite(losses.detach())  # a run whose loss is not finite keeps its state: no host sync
        _, factor = clip_per_run(grads, self.clip)
        flat_grads = self.flat.flatten(grads) * factor[:, None]
        lr = self.lrs[global_step]
        new, state = adamw_update(params, flat_grads, AdamWState(exp_avg, exp_avg_sq, adam_step), lr, self.decay,
                                  self.optim, finite)
        params.copy_(new)
        exp_avg.copy_(state.exp_avg)
        exp_avg_sq.copy_(state.exp_avg_sq)
        adam_step.copy_(state.step)
        global_step.add_(1)
        return losses.detach(), lr

    def compiled(self, mode: str, state: tuple[torch.Tensor, ...]):
        """:meth:`train_step` under ``torch.compile(mode=...)``; ``state``: the tensors it updates in place."""
        mode = None if mode == "default" else mode
        if mode == "reduce-overhead":  # state the graphs update in place: at fixed addresses, so they can replay
            for t in state:
                torch._dynamo.mark_static_address(t)
        return torch.compile(self.train_step, mode=mode, dynamic=False)


def _math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
