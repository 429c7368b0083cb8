import pytest
import torch

from mmrope.data.collate import CaptionCollator, SkippedBatch, image_token_count
from mmrope.data.shapes_dataset import ShapesDataset
from mmrope.data.tokenizer import ByteTokenizer, WordTokenizer
from mmrope.model.tokens import (
    EOS_ID,
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
    vision_block,
)


def sample(h, w, caption, id="x"):
    return {"image": torch.zeros(3, h, w), "caption": caption, "references": [caption], "scene": None, "id": id}


def test_rows_masks_and_labels_for_mixed_sizes():
    tok = ByteTokenizer()
    samples = [sample(64, 64, "a red circle", "a"), sample(32, 48, "hi", "b")]
    batch = CaptionCollator(tok, patch_size=8, merge_size=2)(samples)
    n = [16, 6]  # (64/16)*(64/16), (32/16)*(48/16)
    lengths = [n[0] + 2 + 12 + 1, n[1] + 2 + 2 + 1]
    B, L = batch["input_ids"].shape
    assert (B, L) == (2, max(lengths))
    assert [tuple(x.shape) for x in batch["images"]] == [(3, 64, 64), (3, 32, 48)]
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 4, 6]]
    for i, s in enumerate(samples):
        ids, mask, labels = batch["input_ids"][i], batch["attention_mask"][i], batch["labels"][i]
        caption = tok.encode(s["caption"]) + [EOS_ID]
        expected = [VISION_START_ID] + [IMAGE_TOKEN_ID] * n[i] + [VISION_END_ID] + caption
        assert ids[: lengths[i]].tolist() == expected
        assert (ids[lengths[i]:] == PAD_ID).all()
        assert mask.tolist() == [1] * lengths[i] + [0] * (L - lengths[i])
        assert labels.tolist() == [IGNORE_INDEX] * (n[i] + 2) + caption + [IGNORE_INDEX] * (L - lengths[i])
        supervised = labels != IGNORE_INDEX
        assert torch.equal(labels[supervised], ids[supervised])
    assert batch["ids"] == ["a", "b"] and batch["scenes"] == [None, None] and batch["num_skipped"] == 0
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long


def test_truncation_keeps_eos():
    tok = ByteTokenizer()
    batch = CaptionCollator(tok, max_caption_tokens=5)([sample(16, 16, "a very long caption indeed")])
    labels = batch["labels"][0]
    assert labels[labels != IGNORE_INDEX].tolist() == tok.encode("a ve") + [EOS_ID]
    assert batch["input_ids"].shape == (1, 1 + 1 + 1 + 5)


def test_none_samples_are_dropped_and_counted():
    collate = CaptionCollator(ByteTokenizer())
    batch = collate([None, sample(16, 16, "ok", "kept"), None])
    assert batch["ids"] == ["kept"] and batch["num_skipped"] == 2 and batch["input_ids"].shape[0] == 1
    assert collate([None, None]) == SkippedBatch(2)


def test_image_not_on_the_grid_is_a_one_line_error():
    with pytest.raises(ValueError, match="sample odd: image size 20x32 is not a multiple of patch_size\\*merge_size"):
        CaptionCollator(ByteTokenizer(), patch_size=8, merge_size=2)([sample(20, 32, "x", "odd")])
    assert image_token_count(64, 32, 8, 2) == 8 and image_token_count(64, 32, 16, 2) == 2
    assert vision_block(2) == [VISION_START_ID, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, VISION_END_ID]


def test_shapes_batch_with_word_tokenizer():
    ds = ShapesDataset(6, level=2)
    tok = WordTokenizer.train(ds[i]["caption"] for i in range(6))
    batch = CaptionCollator(tok, patch_size=8, merge_size=2)([ds[i] for i in range(6)])
    words = [len(c.split()) for c in batch["captions"]]  # "red circle above blue square": 5, "left of": 6
    assert set(words) <= {5, 6} and batch["input_ids"].shape == (6, 16 + 2 + max(words) + 1)
    assert all(s["level"] == 2 for s in batch["scenes"])
    assert tok.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()) == batch["captions"][0]


def test_loss_words_leave_only_those_words_as_targets():
    """The relation-only diagnostic: the caption is read in full, but only its relation word is predicted."""
    data = ShapesDataset(4, split="train", level=2, loss_words=("left", "right", "above", "below"))
    tokenizer = WordTokenizer.train([data[i]["caption"] for i in range(4)] + ["left right above below"])
    batch = CaptionCollator(tokenizer, patch_size=8, merge_size=2)([data[i] for i in range(4)])
    for row, labels, caption in zip(batch["input_ids"], batch["labels"], batch["captions"]):
        targets = [tokenizer.decode([t]) for t in labels.tolist() if t != IGNORE_INDEX]
        assert len(targets) == 1 and targets[0] in ("left", "right", "above", "below")
        assert tokenizer.encode(caption)[0] in row.tolist()  # the whole caption is still read
