"""Caption generation: greedy, nucleus sampling and beam search, over a KV cache or recomputing everything.

Each prompt is one image or clip, or several in a row, each as ``[vision_start, image x N_i, vision_end]`` (video
tokens for a clip; break tokens closing the rows where the model's scheme asks for them); prompts of different
lengths are left-padded to the longest, so every row's next token sits in the same slot. Each row keeps its own rope
delta (the scheme's ids of the padded prompt), and the token decoded at slot c takes the id c + delta on all three
rows.
With ``use_cache=False`` every step runs the whole model on the whole sequence, positions recomputed from scratch:
the slow reference the cached path must match token for token.

Generation never emits the reserved ids other than EOS (an image or padding token in a caption means nothing, and
would break the reference's re-encoding). A sequence stops at EOS, which is not included in the returned ids.

Einstein legend: b prompts, r rows (b, or b * beams), p prompt length, v vocab.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from mmrope.model.tokens import EOS_ID, NUM_SPECIAL, PAD_ID, vision_block
from mmrope.model.vision import clip_mask


class CaptionModel(Protocol):
    """What generation needs of a model: :class:`mmrope.model.captioner.Captioner` is one (this module does not
    import it, so the captioner can offer ``generate`` without an import cycle)."""

    config: object
    vision: torch.nn.Module
    text: torch.nn.Module
    scheme: torch.nn.Module

    def embed(self, input_ids, media_tokens, media_slots=None) -> torch.Tensor: ...
    def position_ids(self, input_ids, grid_thw, attention_mask=None, clip=None, second_per_grid_t=None): ...
    def __call__(self, *args, **kwargs): ...

STRATEGIES = ("greedy", "sample", "beam")


def suppress_special_tokens(logits: torch.Tensor) -> torch.Tensor:
    """-inf on every reserved id except EOS, so the search ranges over EOS and the real vocabulary. (With a
    tokenizer saved before the break token existed, id 7 is its first byte or ``<unk>``: never emitted either.)"""
    banned = [i for i in range(NUM_SPECIAL) if i != EOS_ID]
    return logits.float().index_fill(-1, torch.tensor(banned, device=logits.device), -math.inf)


def image_prompts(grid_thw: torch.Tensor, merge: int, clip: torch.Tensor | None = None,
                  media_per_prompt: Sequence[int] | None = None, row_breaks: bool = False,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One vision block per medium of ``grid_thw`` (num_media, 3), video tokens where ``clip``, a break token after
    each row but the last with ``row_breaks`` (the scheme's :attr:`~DecoderScheme.row_breaks`); consecutive media
    form one prompt, ``media_per_prompt`` of them (default: one each) -> left-padded (input_ids, attention_mask)
    (b, p)."""
    counts = (grid_thw.prod(-1) // merge**2).tolist()
    row_lengths = (grid_thw[:, 2] // merge).tolist() if row_breaks else [None] * len(counts)
    clip = [False] * len(counts) if clip is None else clip.tolist()
    blocks = [vision_block(n, c, row) for n, c, row in zip(counts, clip, row_lengths)]
    prompts, start = [], 0
    for size in [1] * len(blocks) if media_per_prompt is None else media_per_prompt:
        prompts.append([token for block in blocks[start:start + size] for token in block])
        start += size
    p = max(map(len, prompts))
    input_ids = torch.full((len(prompts), p), PAD_ID, dtype=torch.long, device=grid_thw.device)
    attention_mask = torch.zeros_like(input_ids)
    for i, prompt in enumerate(prompts):
        input_ids[i, p - len(prompt):] = torch.tensor(prompt)
        attention_mask[i, p - len(prompt):] = 1
    return input_ids, attention_mask


class _Session:
    """Next-token logits for r rows, each captioning ``prompts[rows[i]]`` (a list of images and clips): prefill once
    then one token per step with the KV cache, or (``use_cache=False``) the full forward on the full sequence at
    every step. ``timing[i]`` holds prompt i's ``second_per_grid_t``, one per clip."""

    def __init__(self, model: CaptionModel, prompts: list[list[torch.Tensor]], timing: list[list[float]],
                 rows: torch.Tensor, max_new_tokens: int, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        media = [m for prompt in prompts for m in prompt]
        clip = clip_mask(media)
        media_tokens, grid_thw = model.vision(media)
        input_ids, attention_mask = image_prompts(grid_thw, model.config.vision.spatial_merge_size, clip,
                                                  [len(p) for p in prompts], model.scheme.row_breaks)
        self.length = input_ids.shape[1]  # slots filled so far
        if self.length + max_new_tokens > model.config.text.max_seq_len:
            raise ValueError(f"prompt of {self.length} tokens + max_new_tokens={max_new_tokens} exceeds "
                             f"text.max_seq_len={model.config.text.max_seq_len}")
        if use_cache:
            x = model.embed(input_ids, media_tokens)[rows]  # (r, p, c)
            position_ids, rope_deltas = model.position_ids(input_ids, grid_thw, attention_mask, clip,
                                                           [s for t in timing for s in t])
            self.rope_deltas = rope_deltas[rows]
            self.key_mask = torch.cat((attention_mask, attention_mask.new_ones(len(prompts), max_new_tokens)), 1)[rows]
            self.caches = model.text.new_kv_caches(self.length + max_new_tokens)
            groups = model.scheme.attention_groups(input_ids, attention_mask)
            self.first = (x, position_ids[:, rows], None if groups is None else groups[rows])
        else:
            self.prompts, self.timing = [prompts[i] for i in rows.tolist()], [timing[i] for i in rows.tolist()]
            self.input_ids, self.attention_mask = input_ids[rows], attention_mask[rows]

    def _full_forward(self) -> torch.Tensor:
        media = [m for prompt in self.prompts for m in prompt]
        timing = [s for t in self.timing for s in t]
        return self.model(media, self.input_ids, self.attention_mask, second_per_grid_t=timing).logits[:, -1]

    def start(self) -> torch.Tensor:
        if self.use_cache:
            x, position_ids, groups = self.first
            return self.model.text(x, position_ids, self.key_mask, self.caches, 0, groups=groups)[:, -1]
        return self._full_forward()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (r,) -> logits (r, v) for the next."""
        if self.use_cache:
            x = self.model.text.embed(tokens[:, None])
            position_ids = self.model.scheme.decode_position_ids(self.length, self.rope_deltas)  # (3, r, 1)
            logits = self.model.text(x, position_ids, self.key_mask, self.caches, self.length)[:, -1]
        else:
            self.input_ids = torch.cat((self.input_ids, tokens[:, None]), 1)
            self.attention_mask = torch.cat((self.attention_mask, self.attention_mask.new_ones(len(tokens), 1)), 1)
            logits = self._full_forward()
        self.length += 1
        return logits

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues the sequence of old row rows[i] (beam search)."""
        if self.use_cache:
            for cache in self.caches:
                cache.reorder(rows)
            self.rope_deltas, self.key_mask = self.rope_deltas[rows], self.key_mask[rows]
        else:
            keep = rows.tolist()
            self.prompts, self.timing = [self.prompts[i] for i in keep], [self.timing[i] for i in keep]
            self.input_ids, self.attention_mask = self.input_ids[rows], self.attention_mask[rows]


Prompt = torch.Tensor | Sequence[torch.Tensor]


@torch.no_grad()
def generate(model: CaptionModel, images: Sequence[Prompt] | torch.Tensor, max_new_tokens: int = 32,
             strategy: str = "greedy", num_beams: int = 4, length_penalty: float = 1.0, temperature: float = 1.0,
             top_p: float = 1.0, use_cache: bool = True, generator: torch.Generator | None = None,
             second_per_grid_t: Sequence[float] | None = None, num_return_sequences: int = 1) -> list[torch.Tensor]:
    """Caption each prompt of ``images`` -> one 1-D long tensor of new token ids per prompt, on the CPU, without the
    EOS that ended it. A prompt is an image (3, H, W), a clip (T, 3, H, W), or a list of them read in order (a clip
    given as separate frames); sizes may differ. A (b, 3, H, W) tensor is b images. ``second_per_grid_t`` holds
    one value per clip, in order, when the model's ``tokens_per_second`` is set. With beam search,
    ``num_return_sequences`` n (at most ``num_beams``) gives n per prompt, best first (prompt i's at i * n ... i * n
    + n - 1), the first of them what n = 1 gives.

    greedy  the most likely token at every step
    sample  nucleus sampling (Holtzman et al. 2020): softmax(logits / temperature), the smallest set of tokens whose
            probability reaches ``top_p``; pass a ``generator`` (on the model's device) for repeatable draws
    beam    ``num_beams`` beams per prompt; see :func:`_beam_search`
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is unknown: expected one of {', '.join(STRATEGIES)}")
    if max_new_tokens < 1 or num_beams < 1 or temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}, num_beams={num_beams}, temperature={temperature}, "
                         f"top_p={top_p}: expected max_new_tokens >= 1, num_beams >= 1, temperature > 0 and "
                         "0 < top_p <= 1")
    if num_return_sequences != 1 and (strategy != "beam" or not 1 <= num_return_sequences <= num_beams):
        raise ValueError(f"num_return_sequences={num_return_sequences}: expected strategy='beam' and at most "
                         f"num_beams={num_beams} sequences")
    device = next(model.parameters()).device
    prompts = [[m.to(device)] if isinstance(m, torch.Tensor) else [x.to(device) for x in m] for m in images]
    timing, clips = [], list(second_per_grid_t or [])
    if second_per_grid_t is not None and len(clips) != sum(m.ndim == 4 for p in prompts for m in p):
        raise ValueError(f"second_per_grid_t has {len(clips)} values: expected one per clip")
    for prompt in prompts:  # each prompt's share of second_per_grid_t, in order
        n = sum(m.ndim == 4 for m in prompt) if second_per_grid_t is not None else 0
        timing.append(clips[:n])
        clips = clips[n:]
    was_training = model.training
    model.eval()
    try:
        beams = num_beams if strategy == "beam" else 1
        rows = torch.arange(len(prompts), device=device).repeat_interleave(beams)
        session = _Session(model, prompts, timing, rows, max_new_tokens, use_cache)
        if strategy == "beam":
            return _beam_search(session, len(prompts), num_beams, max_new_tokens, length_penalty,
                                num_return_sequences)
        return _sample(session, max_new_tokens, strategy == "sample", temperature, top_p, generator)
    finally:
        model.train(was_training)


def _sample(session: _Session, max_new_tokens: int, sample: bool, temperature: float, top_p: float,
            generator: torch.Generator | None) -> list[torch.Tensor]:
    logits = session.start()
    steps, done = [], torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for t in range(max_new_tokens):
        logits = suppress_special_tokens(logits)
        token = _top_p_sample(logits, temperature, top_p, generator) if sample else logits.argmax(-1)
        token = token.masked_fill(done, EOS_ID)  # a finished row keeps feeding EOS; its output is unused
        steps.append(token)
        done |= token == EOS_ID
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        logits = session.step(token)
    return [_until_eos(row) for row in torch.stack(steps, 1).cpu()]


def _top_p_sample(logits: torch.Tensor, temperature: float, top_p: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    probs = (logits / temperature).softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # mass before this token already reaches top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)  # the most likely token is never outside
    choice = torch.multinomial(sorted_probs, 1, generator=generator)  # multinomial renormalises
    return order.gather(-1, choice).squeeze(-1)


def _until_eos(tokens: torch.Tensor) -> torch.Tensor:
    eos = (tokens == EOS_ID).nonzero()
    return tokens[: int(eos[0])] if len(eos) else tokens


def _beam_search(session: _Session, batch: int, num_beams: int, max_new_tokens: int,
                 length_penalty: float, num_return: int = 1) -> list[torch.Tensor]:
    """Per image, keep the ``num_beams`` highest-scoring unfinished sequences (score: sum of log-probabilities) ->
    the ``num_return`` best hypotheses of each image, best first, images one after another.

    A sequence that ends (EOS, or ``max_new_tokens`` reached) is a hypothesis scored ``logprob / len**length_penalty``
    with len its token count, EOS included. As in Hugging Face, an EOS counts only when it ranks among the image's
    top ``num_beams`` candidates. An image stops once no running beam can still beat its best hypothesis: log-probs
    only fall, so a beam with sum s can reach at most s / max_new_tokens**lp (lp > 0) or s / (len + 1)**lp (lp <= 0).
    With ``length_penalty=0`` one beam is exactly greedy search (with lp > 0 it may outlive greedy's EOS, since a
    longer sequence can score better); with as many beams as candidates at every step it is exhaustive search.
    With ``num_return`` n, an image stops once no running beam can beat its n-th best hypothesis: its best is the
    same as with n = 1, since the hypotheses it finds meanwhile score lower.
    """
    k = num_beams
    scores = torch.full((batch, k), -math.inf)
    scores[:, 0] = 0.0  # all beams start from the same prompt: keep one of them
    sequences = torch.zeros(batch * k, 0, dtype=torch.long)
    best = [[(-math.inf, [])] * num_return for _ in range(batch)]  # per image, best first
    done = [False] * batch
    logits = session.start()
    for t in range(max_new_tokens):
        logprobs = suppress_special_tokens(logits).log_softmax(-1).cpu()
        vocab = logprobs.shape[-1]
        candidates = (scores.unsqueeze(-1) + logprobs.view(batch, k, vocab)).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # enough for k beams after EOS
        rows = torch.arange(batch * k)  # rows of finished images stay put
        tokens = torch.full((batch * k,), EOS_ID, dtype=torch.long)
        scores = torch.full((batch, k), -math.inf)
        for i in range(batch):
            if done[i]:
                continue
            kept = 0
            for rank, (score, index) in enumerate(zip(top_scores[i].tolist(), top_index[i].tolist())):
                if score == -math.inf or kept == k:
                    break
                beam, token = divmod(index, vocab)
                if token == EOS_ID:
                    if rank < k:
                        _keep(best[i], score / (t + 1) ** length_penalty, sequences[i * k + beam].tolist())
                    continue
                rows[i * k + kept], tokens[i * k + kept], scores[i, kept] = i * k + beam, token, score
                kept += 1
        sequences = torch.cat((sequences[rows], tokens[:, None]), 1)
        if t == max_new_tokens - 1:  # the running beams end here, without EOS
            for i in range(batch):
                for kept in range(k):
                    if not done[i]:
                        _keep(best[i], scores[i, kept].item() / max_new_tokens**length_penalty,
                              sequences[i * k + kept].tolist())
            break
        reach = max_new_tokens if length_penalty > 0 else t + 2  # the length that flatters a running beam most
        done = [done[i] or best[i][-1][0] >= scores[i, 0].item() / reach**length_penalty for i in range(batch)]
        if all(done):
            break
        device = logits.device
        session.reorder(rows.to(device))
        logits = session.step(tokens.to(device))
    return [torch.tensor(tokens, dtype=torch.long) for hypotheses in best for _, tokens in hypotheses]


def _keep(hypotheses: list[tuple[float, list[int]]], score: float, tokens: list[int]) -> None:
    """Put (score, tokens) among ``hypotheses`` (best first, their number fixed) when it beats the worst; of equal
    scores the one found first ranks higher."""
    if score > hypotheses[-1][0]:
        hypotheses.insert(next(j for j, (s, _) in enumerate(hypotheses) if score > s), (score, tokens))
        hypotheses.pop()
