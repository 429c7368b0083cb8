"""The token layout the model reads: reserved ids shared by every tokenizer, and the block that stands for a medium.

Both tokenizers put these ids at the start of their vocabulary, so a checkpoint's special ids never depend on which
tokenizer trained it. The joint sequence the decoder sees is
``[VISION_START, IMAGE x N, VISION_END, caption tokens ..., EOS]`` (Qwen2-VL's layout, without the chat template).
A scheme whose media rows end in break tokens (Pixtral's, ``DecoderScheme.row_breaks``) reads an image of 2 x 3
merged tokens as ``[VISION_START, IMAGE x 3, IMAGE_BREAK, IMAGE x 3, VISION_END, ...]``.
"""

import torch

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
VISION_START_ID = 3
VISION_END_ID = 4
IMAGE_TOKEN_ID = 5
VIDEO_TOKEN_ID = 6
IMAGE_BREAK_ID = 7  # ends each row of a media block but the last (Pixtral's [IMG_BREAK]); an ordinary embedded token

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<vision_start>", "<vision_end>", "<image>", "<video>", "<image_break>")
NUM_SPECIAL = len(SPECIAL_TOKENS)

IGNORE_INDEX = -100  # label value the loss skips (padding, image block)


def media_blocks(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Which media block each token belongs to -> (b, n) long: 0 for text and padding, k > 0 for the k-th run of
    image or video tokens of its row. A block is one run, since vision start and end tokens close every medium."""
    is_media = (input_ids == IMAGE_TOKEN_ID) | (input_ids == VIDEO_TOKEN_ID)
    if attention_mask is not None:
        is_media = is_media & attention_mask.bool()
    after_media = torch.cat((torch.zeros_like(is_media[:, :1]), is_media[:, :-1]), dim=1)
    starts = is_media & ~after_media  # the first token of each run
    return starts.long().cumsum(1) * is_media


def vision_block(num_tokens: int, clip: bool = False, row_length: int | None = None) -> list[int]:
    """The ids that stand for one image (or clip) in the decoder: the prompt a caption is generated from.

    With ``row_length`` (merged tokens per row of the decoder grid) a break token ends every row but the last, whose
    end the vision end marks, as Pixtral's [IMG_END] replaces its last [IMG_BREAK]; a clip's frames are rows one
    after another. E.g. ``vision_block(6, row_length=3)`` is ``[3, 5, 5, 5, 7, 5, 5, 5, 4]``."""
    media = VIDEO_TOKEN_ID if clip else IMAGE_TOKEN_ID
    if row_length is None:
        return [VISION_START_ID] + [media] * num_tokens + [VISION_END_ID]
    if row_length <= 0 or num_tokens % row_length:
        raise ValueError(f"a media block of {num_tokens} tokens cannot be cut into rows of {row_length}")
    rows = ([media] * row_length + [IMAGE_BREAK_ID]) * (num_tokens // row_length)
    return [VISION_START_ID] + rows[:-1] + [VISION_END_ID]
