"""What a run on real captions from shards costs: the data pipeline per worker, the training step of
``configs/coco_shards.yaml``'s model, and from them a COCO-scale run on a CPU, one GPU and N nodes (estimates).

    python benchmarks/bench_real_captions.py [--images 96] [--batch 2] [--steps 3] [--threads N]

1. **Data.** ``--images`` photo-like 640 x 480 JPEGs (quality 90, about the size of a COCO image) are written to
   shards with :func:`mmrope.data.shards.write_shards`, then read back in one process through
   :class:`~mmrope.data.shards.ShardStream` exactly as training reads them (tar, JPEG decode, native resize to at
   most 448 x 448 in multiples of 32, augmentation, caption choice) with one torch thread, as a DataLoader
   worker has: images/s of one worker (one core).
2. **Step.** Forward, backward and AdamW of the coco_shards model (ViT-S/16 + a 512-wide 8-layer decoder,
   vocabulary ``--vocab-size``) in float32 on this CPU, on a batch as the collator lays out 512 x 384 images (what
   native resizing makes of a 640 x 480 photo) with 12-word captions: images/s and joint-sequence tokens/s.
3. **Estimates.** Training FLOPs per image (PaLM's count, as :func:`mmrope.model.flops.flops_per_token`), and the
   GPU rate they give at the 193 TFLOP/s the compiled ``shapes_base`` step reached on an H200
   (docs/performance.md, 19.5 % MFU): **an estimate, not a measurement** (no GPU measured this model). A
   COCO-scale run is the config's 30000 steps of 128 images; N nodes of 8 GPUs are taken to scale linearly.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
H200_TFLOPS = 193.0  # compiled shapes_base training step, docs/performance.md ("Training MFU of shapes_base")
COCO_TRAIN_IMAGES = 113_287  # Karpathy's train + restval
RUN_STEPS, RUN_BATCH = 30_000, 128  # configs/coco_shards.yaml


def photo(rng: random.Random, width: int = 640, height: int = 480) -> bytes:
    """A photo-like JPEG: smooth colour fields with detail and noise, so it compresses (and decodes) as photos do."""
    import numpy as np
    from PIL import Image, ImageFilter

    g = np.random.default_rng(rng.randrange(2**32))
    base = Image.fromarray(g.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC)
    detail = g.normal(0, 18, (height, width, 3))
    pixels = np.clip(np.asarray(base.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32) + detail, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def data_rate(n: int, folder: Path) -> tuple[float, float, float]:
    """(images/s of one process reading shards as training does, images per CPU second of it, mean JPEG kB)."""
    from mmrope.data.images import ImageTransform
    from mmrope.data.shards import ShardSample, ShardStream, read_shard_set, write_shards

    rng = random.Random(0)
    samples = [ShardSample(photo(rng), "jpg", [f"a photo number {i} of a red thing"], str(i)) for i in range(n)]
    write_shards(samples, folder, samples_per_shard=32)
    stream = ShardStream(read_shard_set(folder), ImageTransform(mode="native", patch_size=16, merge_size=2,
                                                                  min_pixels=256 * 256, max_pixels=448 * 448,
                                                                  augment=True),
                         batch_size=16, shuffle_window=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker, which torch gives one thread
    start, cpu = time.perf_counter(), time.process_time()
    count = sum(len(batch) for batch in stream)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    torch.set_num_threads(threads)
    return count / wall, count / cpu, sum(len(s.image) for s in samples) / n / 1e3


def coco_config(vocab_size: int):
    from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig

    model = yaml.safe_load((ROOT / "configs/coco_shards.yaml").read_text())["model"]
    return CaptionerConfig(vision=VisionConfig(**model["vision"]), text=TextConfig(**model["text"],
                                                                                   vocab_size=vocab_size),
                           position_scheme=model["position_scheme"], rotary_apply="reference")


def step_rate(config, batch: int, steps: int, height: int = 384, width: int = 512
              ) -> tuple[float, float, float, int]:
    """(images/s, tokens/s, images per CPU second (all threads), tokens per image) of forward + backward + AdamW
    on this CPU, float32, eager."""
    from mmrope.data.collate import CaptionCollator
    from mmrope.data.tokenizer import build_tokenizer
    from mmrope.model.captioner import Captioner

    words = [f"w{i}" for i in range(config.text.vocab_size)]
    rng = random.Random(0)
    tokenizer = build_tokenizer("word", [" ".join(words)])
    collate = CaptionCollator(tokenizer, config.vision.patch_size, config.vision.spatial_merge_size, 40)
    samples = [{"image": torch.rand(3, height, width), "caption": " ".join(rng.choices(words, k=12)),
                "references": [], "scene": None, "id": str(i)} for i in range(batch)]
    data = collate(samples)
    config.text.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = Captioner(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    layout = model.layout(data["input_ids"], data["image_grid_thw"], data["attention_mask"])

    def step():
        loss = model(data["images"], data["input_ids"], data["attention_mask"], data["labels"], layout=layout).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    seconds, cpu = (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps
    tokens = int(data["attention_mask"].sum())
    return batch / seconds, tokens / seconds, batch / cpu, tokens // batch


def flops_per_image(config, patches: int, tokens: int) -> float:
    """PaLM's 6N + attention for one image of ``patches`` encoder patches and a joint sequence of ``tokens``."""
    from mmrope.model.flops import matmul_weights

    v, t = config.vision, config.text
    w = matmul_weights(config)
    encoder = (6 * patches * w["per_patch"] + 6 * patches // v.spatial_merge_size**2 * w["per_merged"]
               + 12 * v.depth * v.dim * patches**2)
    decoder = 6 * tokens * w["per_token"] + 12 * t.depth * t.num_heads * t.head_dim * tokens**2
    return encoder + decoder


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="photos for the data measurement (default: 96)")
    parser.add_argument("--batch", type=int, default=2, help="images per timed CPU step (default: 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed CPU steps after one warm-up (default: 3)")
    parser.add_argument("--vocab-size", type=int, default=10000, help="COCO's word vocabulary is about this size")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4], help="nodes of 8 GPUs to estimate for")
    parser.add_argument("--cores-per-gpu", type=int, default=14,
                        help="data workers a GPU gets (default 14: an 8-GPU node with 112 cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        decode, decode_cpu, kb = data_rate(args.images, Path(tmp) / "shards")
    config = coco_config(args.vocab_size)
    images_s, tokens_s, images_cpu, per_image = step_rate(config, args.batch, args.steps)
    patches = (384 // 16) * (512 // 16)
    flops = flops_per_image(config, patches, per_image)
    compute = H200_TFLOPS * 1e12 / flops  # images/s one H200 would train at, were the data there
    fed = min(compute, args.cores_per_gpu * decode_cpu)  # ... and with the data workers it gets
    run_images = RUN_STEPS * RUN_BATCH

    print(f"CPU: {torch.get_num_threads()} threads, torch {torch.__version__}; measured (wall clock, and per CPU "
          "second of this process: what a core of its own would do on a shared machine)\n")
    print("| what | images/s | images per CPU s | tokens/s |\n|---|---:|---:|---:|")
    print(f"| data: shards -> decoded, resized, augmented 640x480 JPEGs ({kb:.0f} kB), one worker | {decode:.1f} | "
          f"{decode_cpu:.1f} | |")
    print(f"| coco_shards step, fp32 eager, batch {args.batch} of 512x384 ({patches} patches, {per_image} tokens "
          f"a row) | {images_s:.3f} | {images_cpu:.3f} | {tokens_s:.1f} |")
    print(f"\nEstimates from these and {H200_TFLOPS:.0f} TFLOP/s (the H200 rate measured on shapes_base, not on "
          "this model):\n")
    print(f"- training FLOPs per image: {flops / 1e9:.0f} GFLOP -> about {compute:.0f} images/s on one H200 if the "
          f"data keeps up: {compute / decode_cpu:.0f} data workers (cores) at the rate per CPU second above; with "
          f"{args.cores_per_gpu} cores a GPU, about {fed:.0f} images/s")
    print(f"- a COCO-scale run ({RUN_STEPS} steps x {RUN_BATCH} = {run_images / 1e6:.2f} M images, "
          f"{run_images / COCO_TRAIN_IMAGES:.0f} epochs of Karpathy's train split):")
    print(f"  - this CPU: {duration(run_images / images_s)} (measured rate, wall clock)")
    print(f"  - one H200: {duration(run_images / compute)} compute-bound, {duration(run_images / fed)} with "
          f"{args.cores_per_gpu} data workers (estimates)")
    for nodes in args.nodes:
        gpus = 8 * nodes
        print(f"  - {nodes} node(s) x 8 H200: {duration(run_images / compute / gpus)} compute-bound, "
              f"{duration(run_images / fed / gpus)} with {args.cores_per_gpu} data workers a GPU (estimates, "
              "linear scaling)")


if __name__ == "__main__":
    sys.exit(main())
