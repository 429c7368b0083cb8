"""Make the sample images and their captions in every supported format (run once; the output is committed).

    PYTHONPATH=. python data/samples/make_samples.py

Three images come from the shapes generator, three are drawn by hand: non-square, odd-sized, a JPEG, a greyscale.
The same captions are written as metadata.jsonl (imagefolder), captions.csv and captions_coco.json (COCO), plus a
Karpathy-style split file, dataset_coco.json. ``places/`` holds eight more one-object scenes (level 1, the test
split: never trained on) with their captions, the scenes the Quickstart's model is shown captioning.
"""

import csv
import json
from pathlib import Path

from PIL import Image, ImageDraw

from mmrope.data.shapes import render_scene, sample_scene

HERE = Path(__file__).parent
PLACES = 8  # one-object scenes in places/


def hand_made() -> list[tuple[str, Image.Image, list[str]]]:
    wide = Image.new("RGB", (160, 96), (135, 190, 235))  # sky
    d = ImageDraw.Draw(wide)
    d.rectangle([0, 70, 159, 95], fill=(70, 150, 60))  # grass
    d.ellipse([122, 8, 150, 36], fill=(250, 210, 40))  # sun, top right
    d.rectangle([20, 44, 50, 70], fill=(180, 60, 50))  # house
    d.polygon([(15, 44), (35, 28), (55, 44)], fill=(110, 60, 40))  # roof

    tall = Image.new("RGB", (72, 120), (245, 245, 240))
    d = ImageDraw.Draw(tall)
    d.rectangle([20, 14, 52, 46], fill=(40, 80, 220))  # blue square, top
    d.ellipse([18, 74, 54, 110], fill=(220, 40, 40))  # red ball, bottom

    grey = Image.new("L", (100, 70), 200)  # odd size, greyscale
    ImageDraw.Draw(grey).polygon([(10, 60), (30, 20), (50, 60)], fill=20)  # dark triangle on the left

    return [
        ("wide.png", wide, ["a red house with a brown roof on green grass under a blue sky",
                            "a small house on the left and the sun in the top right"]),
        ("tall.jpg", tall, ["a blue square above a red ball", "a red circle below a blue square",
                            "two shapes on a white background"]),
        ("grey.png", grey, ["a black triangle on the left of a grey image"]),
    ]


def main() -> None:
    items = []  # (file name, image, captions, scene or None)
    for name, level, size, background in (("shapes_l1.png", 1, 64, "plain"), ("shapes_l2.png", 2, 64, "plain"),
                                          ("shapes_l3.png", 3, 96, "noisy")):
        scene = sample_scene(seed=0, index=0, split="val", level=level, background=background, canvas=size)
        items.append((name, render_scene(scene), scene["captions"], scene))
    items += [(name, img, caps, None) for name, img, caps in hand_made()]

    for name, img, _, _ in items:
        if name.endswith(".jpg"):
            img.save(HERE / name, format="JPEG", quality=90)
        else:
            img.save(HERE / name, format="PNG", compress_level=9)

    with open(HERE / "metadata.jsonl", "w", encoding="utf-8") as f:
        for name, _, caps, scene in items:
            row = {"file_name": name, "text": caps} | ({"scene": scene} if scene else {})
            f.write(json.dumps(row, sort_keys=True) + "\n")

    with open(HERE / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name", "text"])
        for name, _, caps, _ in items:
            for c in caps:
                w.writerow([name, c])

    coco = {"info": {"description": "mmrope sample captions"}, "images": [], "annotations": []}
    karpathy = {"dataset": "coco", "images": []}
    splits = ["train", "train", "restval", "train", "val", "test"]
    for i, (name, img, caps, _) in enumerate(items, start=1):
        coco["images"].append({"id": i, "file_name": name, "width": img.width, "height": img.height})
        for c in caps:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "caption": c})
        karpathy["images"].append({"cocoid": i, "filename": name, "filepath": "", "split": splits[i - 1],
                                   "sentences": [{"raw": c} for c in caps]})
    (HERE / "captions_coco.json").write_text(json.dumps(coco, indent=1) + "\n", encoding="utf-8")
    (HERE / "dataset_coco.json").write_text(json.dumps(karpathy, indent=1) + "\n", encoding="utf-8")

    places = HERE / "places"
    places.mkdir(exist_ok=True)
    with open(places / "metadata.jsonl", "w", encoding="utf-8") as f:
        for index in range(PLACES):
            scene = sample_scene(seed=0, index=index, split="test", level=1, background="plain", canvas=64)
            name = f"place_{index}.png"
            render_scene(scene).save(places / name, format="PNG", compress_level=9)
            f.write(json.dumps({"file_name": name, "text": scene["captions"], "scene": scene}, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
