"""get_rope_index: ours (vectorised) against transformers' Qwen2-VL (a Python loop per sample and per block).

    pip install -e ".[bench]" && python benchmarks/bench_rope_index.py [--batch 64]

Prints a markdown table of median times measured side by side, and checks both give the same ids first.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, time_side_by_side

from mmrope.model.position_ids import get_rope_index
from mmrope.model.tokens import IMAGE_TOKEN_ID, PAD_ID, VISION_END_ID, VISION_START_ID

TEXT = 100


LAYOUTS = {  # name -> (text before the image, image side in patches (None: 4..16 a side), text after)
    "captions": ((0, 0), None, (5, 20)),  # [vs, image, ve, caption]: what captioning trains on
    "prompted": ((3, 7), 16, (10, 22)),  # [prompt, vs, 16x16-patch image, ve, text]: a chat-style row
}


def make_batch(batch: int, seed: int = 0, merge: int = 2, layout: str = "captions"):
    """Left-padded rows of one of :data:`LAYOUTS`."""
    (before_lo, before_hi), side, (after_lo, after_hi) = LAYOUTS[layout]
    rng = random.Random(seed)
    rows, grids = [], []
    for _ in range(batch):
        h, w = (side, side) if side else (merge * rng.randint(2, 8), merge * rng.randint(2, 8))
        grids.append([1, h, w])
        image = [VISION_START_ID] + [IMAGE_TOKEN_ID] * (h * w // merge**2) + [VISION_END_ID]
        rows.append([TEXT] * rng.randint(before_lo, before_hi) + image + [TEXT] * rng.randint(after_lo, after_hi))
    n = max(map(len, rows))
    ids = torch.tensor([[PAD_ID] * (n - len(r)) + r for r in rows])
    mask = (torch.arange(n) >= (n - torch.tensor([len(r) for r in rows])).unsqueeze(1)).long()
    return ids, torch.tensor(grids), mask


def transformers_rope_index(merge: int):
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    host = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge)))
    host.get_vision_position_ids = lambda *a, **k: Qwen2VLModel.get_vision_position_ids(host, *a, **k)
    return lambda ids, grids, mask: Qwen2VLModel.get_rope_index(host, ids, (ids == IMAGE_TOKEN_ID).int(), grids,
                                                                None, mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a data-loader worker)")
    parser.add_argument("--layout", choices=LAYOUTS, default="captions",
                        help="captions: [vs, image of 4..16 patches a side, ve, 5-20 words]; prompted: 3-7 text "
                             "tokens, then a 16x16-patch image, then 10-22 text tokens (default: captions)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    ids, grids, mask = make_batch(args.batch, layout=args.layout)
    hf = transformers_rope_index(2)
    ours_pos, _ = get_rope_index(ids, grids, attention_mask=mask, image_token_id=IMAGE_TOKEN_ID)
    hf_pos, _ = hf(ids, grids, mask)
    assert torch.equal(ours_pos[:, mask.bool()], hf_pos[:, mask.bool()]), "ids differ from transformers'"

    times = time_side_by_side({
        "mmrope": lambda: get_rope_index(ids, grids, attention_mask=mask, image_token_id=IMAGE_TOKEN_ID),
        "transformers": lambda: hf(ids, grids, mask),
    })
    print(f"get_rope_index, batch {args.batch} {args.layout} rows (seq {ids.shape[1]}), CPU, {args.threads} thread(s), "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(markdown_table(["implementation", "median ms", "speed-up vs transformers"],
                         [[name, f"{t * 1e3:.2f}", f"{times['transformers'] / t:.1f}x"]
                          for name, t in times.items()]))


if __name__ == "__main__":
    main()
