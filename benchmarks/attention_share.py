"""Where the decoder looks when it says each word: the share of attention the query that predicts each caption word
gives the image tokens, per layer, averaged over heads and over validation scenes (teacher-forced on the scene's
own caption). A diagnostic: a decoder that reads places from the image attends to it at the place words.

    python benchmarks/attention_share.py RUN_DIR [RUN_DIR ...] --n 50

Each RUN_DIR is a run folder of a grid (its ``checkpoints/last.ckpt``); the scenes are drawn from the data section the
checkpoint's run trained on (``arm.json``'s base config and train overrides, as the ablation scores them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--n", type=int, default=50, help="validation scenes")
    args = p.parse_args()

    import torch

    from mmrope.ablation.plan import override_args
    from mmrope.data.images import to_tensor
    from mmrope.eval.evaluation import data_set
    from mmrope.inference import load
    from mmrope.train.config_reader import read_config
    from mmrope.viz.attention import decoder_attention

    rows, width, words = [], 0, []
    for run in args.runs:
        arm = json.loads((run / "arm.json").read_text(encoding="utf-8"))
        data = read_config(["--config", arm["base"], *override_args(arm["train"])])["data"]
        scenes = data_set({**data, "seed": arm["seed"]}, "val", args.n)
        pipeline = load(run / "checkpoints" / "last.ckpt", device="cpu")
        images = scenes.images(int(data["image_size"]))
        per_scene = []  # (layers, words) for each scene
        for scene, image in zip(scenes.scenes, images):
            caption = torch.tensor(pipeline.tokenizer.encode(scene["captions"][0]))
            attention = decoder_attention(pipeline.model, to_tensor(image), caption)
            start = attention.prompt_length - 1  # the query at i predicts token i + 1
            w = attention.weights.mean(1)[:, start:start + len(caption)]  # (layers, words, n): mean over heads
            per_scene.append(w[..., attention.media_index].sum(-1))
            words = [pipeline.tokenizer.decode([t]) for t in caption.tolist()]
        length = min(s.shape[1] for s in per_scene)  # captions differ in length: the words every one has
        shares = torch.stack([s[:, :length] for s in per_scene]).mean(0)
        for layer, row in enumerate(shares.tolist()):
            rows.append([f"{arm['encoder']}-{arm['scheme']} seed {arm['seed']}", layer,
                         *(f"{x:.2f}" for x in row)])
        width = max(width, length)
    print(f"share of each caption word's attention on the image tokens, mean over heads and {args.n} scenes "
          f"(words of the last scene's caption: {' '.join(words)})")
    print(markdown_table(["run", "layer", *(f"word {k + 1}" for k in range(width))],
                         [row + [""] * (width + 2 - len(row)) for row in rows]))


if __name__ == "__main__":
    main()
