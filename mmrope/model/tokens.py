"""The token layout the model reads: reserved ids shared by every tokenizer, and the block that stands for a medium.

Both tokenizers put these ids at the start of their vocabulary, so a checkpoint's special ids never depend on which
tokenizer trained it. The joint sequence the decoder sees is
``[VISION_START, IMAGE x N, VISION_END, caption tokens ..., EOS]`` (Qwen2-VL's layout, without the chat template).
"""

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
VISION_START_ID = 3
VISION_END_ID = 4
IMAGE_TOKEN_ID = 5
VIDEO_TOKEN_ID = 6

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<vision_start>", "<vision_end>", "<image>", "<video>")
NUM_SPECIAL = len(SPECIAL_TOKENS)

IGNORE_INDEX = -100  # label value the loss skips (padding, image block)


def vision_block(num_tokens: int, clip: bool = False) -> list[int]:
    """The ids that stand for one image (or clip) in the decoder: the prompt a caption is generated from."""
    return [VISION_START_ID] + [VIDEO_TOKEN_ID if clip else IMAGE_TOKEN_ID] * num_tokens + [VISION_END_ID]
