"""How many steps until a captioner reads positions? A learning-curve probe, not a timing.

    python benchmarks/probe_positions.py --level 1 --encoder sincos2d --lr 1e-3 --steps 400
    python benchmarks/probe_positions.py --level 2 --encoder rope2d --scheme mrope_interleaved --text-theta 100

Trains the ``configs/shapes_small.yaml`` model (with the encoder, scheme and learning rate given) on a fixed set of
pre-rendered shapes scenes (rendered once, cached under ``--cache``), without Lightning, and every ``--every`` steps
prints the teacher-forced accuracy on 512 validation scenes at the words that carry position: the relation words
(left, right, above, below) at level 2, the place words (top, bottom, left, right, centre) at level 1, next to the
colour words, which need the image but no position. The gap between the two is what the CPU ablation presets
fight: colours are read within 100 steps, positions much later or not at all (docs/ablation.md). Teacher forcing
gives partial credit a free-running caption does not ("at the" leaves only top or bottom), so these figures are
higher than the ablation's place accuracy; compare variants with each other, not with it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_step import small_config
from common import markdown_table

from mmrope.data.collate import CaptionCollator
from mmrope.data.shapes import vocabulary_captions
from mmrope.data.shapes_dataset import ShapesDataset
from mmrope.data.tokenizer import build_tokenizer
from mmrope.model.captioner import Captioner
from mmrope.train.module import cosine_with_warmup, parameter_groups

POSITION_WORDS = {1: ("top", "bottom", "left", "right", "centre"), 2: ("left", "right", "above", "below")}
COLOUR_WORDS = ("red", "green", "blue", "yellow")


def rendered(split: str, n: int, level: int, cache: Path) -> tuple[torch.Tensor, list[str]]:
    """``n`` scenes of ``split`` as (n, 3, 64, 64) float images and their captions, rendered once."""
    path = cache / f"shapes_l{level}_{split}_{n}.pt"
    if path.exists():
        return torch.load(path)
    data = ShapesDataset(n=n, split=split, seed=0, level=level, canvas=64)
    samples = [data[i] for i in range(n)]
    out = torch.stack([s["image"] for s in samples]), [s["caption"] for s in samples]
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, default=2, choices=(1, 2))
    parser.add_argument("--encoder", default="rope2d", help="model.vision.pos_encoding")
    parser.add_argument("--scheme", default="mrope", help="model.position_scheme")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (shapes_small: 3e-3)")
    parser.add_argument("--text-theta", type=float, default=None, help="model.text.rope_theta (default 10000)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=16384, help="pre-rendered training scenes, cycled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/probe_cache"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = build_tokenizer("word", vocabulary_captions())
    collate = CaptionCollator(tokenizer, patch_size=8, merge_size=2, max_caption_tokens=32)
    train_images, train_captions = rendered("train", args.n_train, args.level, args.cache)
    val_images, val_captions = rendered("val", 512, args.level, args.cache)
    ids = {name: torch.tensor([tokenizer.encode(w)[0] for w in words])
           for name, words in (("position", POSITION_WORDS[args.level]), ("colour", COLOUR_WORDS))}

    config = small_config(args.encoder, args.scheme, tokenizer.vocab_size)
    if args.text_theta is not None:
        config.text.rope_theta = args.text_theta
    torch.manual_seed(args.seed)
    model = Captioner(config)
    opt = torch.optim.AdamW(parameter_groups(model, 0.05), lr=args.lr, betas=(0.9, 0.95))  # recipes: (0.9, 0.98)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(100, args.steps, 0.1))

    def batch(images, captions, index):
        return collate([{"image": images[i], "caption": captions[i], "references": [], "id": str(i)} for i in index])

    @torch.no_grad()
    def accuracy() -> dict[str, float]:
        model.eval()
        right, total = dict.fromkeys(ids, 0), dict.fromkeys(ids, 0)
        for start in range(0, len(val_captions), 128):
            b = batch(val_images, val_captions, range(start, min(start + 128, len(val_captions))))
            predicted = model(b["images"], b["input_ids"], b["attention_mask"]).logits[:, :-1].argmax(-1)
            targets = b["labels"][:, 1:]
            for name, words in ids.items():
                at = torch.isin(targets, words)
                right[name] += int((predicted == targets)[at].sum())
                total[name] += int(at.sum())
        model.train()
        return {name: right[name] / max(total[name], 1) for name in ids}

    g = torch.Generator().manual_seed(args.seed)
    order, pos, rows, start = torch.randperm(args.n_train, generator=g), 0, [], time.perf_counter()
    print(f"level {args.level}, {args.encoder}-{args.scheme}, lr {args.lr:g}, text theta {config.text.rope_theta:g}: "
          f"{args.steps} steps of {args.batch}", file=sys.stderr)
    for step in range(1, args.steps + 1):
        if pos + args.batch > args.n_train:
            order, pos = torch.randperm(args.n_train, generator=g), 0
        b = batch(train_images, train_captions, order[pos:pos + args.batch].tolist())
        pos += args.batch
        loss = model(b["images"], b["input_ids"], b["attention_mask"], b["labels"]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % args.every == 0 or step == args.steps:
            acc = accuracy()
            rows.append([step, f"{loss.item():.3f}", f"{acc['position']:.3f}", f"{acc['colour']:.3f}",
                         f"{time.perf_counter() - start:.0f}"])
            print(f"step {step}: position words {acc['position']:.3f}, colour words {acc['colour']:.3f}",
                  file=sys.stderr)
    print(markdown_table(["step", "train loss", "position words", "colour words", "seconds"], rows))


if __name__ == "__main__":
    main()
