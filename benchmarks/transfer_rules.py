"""What position geometry alone predicts off the training size, for a place recipe: each transfer rule's accuracy
(:mod:`mmrope.eval.transfer`) on the test scenes a grid scores, at every size and size protocol. Trains nothing.

    python benchmarks/transfer_rules.py --config configs/shapes_place.yaml --sizes 32,48,64,96,128
    python benchmarks/transfer_rules.py --config configs/shapes_cells.yaml --sizes 32,48,64,96,144 --n 100

A rule answers, for the patch under the object's centre, the place that patch's position code had in training:
corner (ids counted from the top-left corner: M-RoPE, a sin-cos table in patches), centre (VideoRoPE, HoPE), raster
(a flat 1D decoder, a flattened encoder), normalised (coordinates as fractions of the canvas: rope2d_norm, a learned
table resampled to the new grid), caption (ids counted back from the caption, as a rotary decoder reads M-RoPE's ids:
the text starts max(H, W) ids after the block). A trained arm's accuracy beside these rows says what training added
to geometry.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a level-1 shapes training YAML")
    p.add_argument("--sizes", required=True, help="comma-separated image sides, e.g. 32,48,64,96,128")
    p.add_argument("--n", type=int, default=100, help="test scenes (the ablation's eval.n)")
    p.add_argument("--split", default="test")
    args = p.parse_args()

    from mmrope.data.shapes import SIZE_PROTOCOLS
    from mmrope.eval.evaluation import data_set, parse_sizes
    from mmrope.eval.transfer import RULES, rule_accuracy
    from mmrope.train.config_reader import read_config

    config = read_config(["--config", args.config])
    data, vision = config["data"], config["model"]["vision"]
    if data["dataset"] != "shapes" or data["shapes"]["level"] != 1:
        raise SystemExit(f"{args.config}: a level-1 shapes recipe is needed (places)")
    train, patch = int(vision["image_size"]), int(vision["patch_size"]) * int(vision["spatial_merge_size"])
    scenes = data_set(data, args.split, args.n).scenes
    rows = []
    for protocol in SIZE_PROTOCOLS:
        for size in parse_sizes(args.sizes):
            if protocol != "scaled" and (size == train or (protocol == "anchored" and size < train)):
                continue
            rows.append([protocol, f"{size}{' (train)' if size == train else ''}",
                         *(f"{rule_accuracy(scenes, size, protocol, rule, patch, train):.3f}" for rule in RULES)])
    print(f"{args.config}: {args.n} {args.split} scenes, trained at {train} px, patches of {patch} px")
    print(markdown_table(["protocol", "size", *RULES], rows))


if __name__ == "__main__":
    main()
