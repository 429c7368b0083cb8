"""Generation: the KV cache, left padding and per-row rope deltas against slow references, and search exactness."""

import functools
import itertools

import pytest
import torch

from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.decoder_schemes import SCHEMES as DECODER_SCHEMES
from mmrope.model.generation import image_prompts, suppress_special_tokens
from mmrope.model.tokens import EOS_ID, IGNORE_INDEX, NUM_SPECIAL, PAD_ID

SCHEMES = list(DECODER_SCHEMES)  # every registered scheme: a new one is tested here without an edit
MIXED_SIZES = [(32, 32), (32, 48), (48, 48), (48, 32)]  # 4, 6, 9, 6 image tokens: prompts need left padding
# two query heads on one key/value head; MHRoPE gives t, h and w whole key/value heads, so three (two query heads each)
TEXT_HEADS = {None: {"dim": 32, "num_heads": 2, "num_kv_heads": 1},
              "mhrope": {"dim": 48, "num_heads": 6, "num_kv_heads": 3}}


@functools.cache
def trained_model(scheme="mrope", pos_encoding="rope2d", vocab_size=16, seed=0) -> Captioner:
    """A tiny model trained for a few steps on eight random captions (1 to 5 tokens) of random images.

    A random tied-embedding model just repeats one token; this one's outputs depend on the image and the prefix, end
    with EOS at varied lengths, and its logits are far enough apart that no argmax hangs on rounding, so two exact
    computations must agree token for token. Thirty steps sometimes leave a model that writes one caption for every
    image (omni_rope at seed 0 did): then the next seed is trained, so that no comparison is vacuous. Cached: the
    tests only read it.
    """
    for attempt in range(3):
        torch.manual_seed(seed + 1000 * attempt)
        vision = VisionConfig(image_size=32, dim=32, depth=1, num_heads=2, pos_encoding=pos_encoding)
        text = TextConfig(vocab_size=vocab_size, depth=2, max_seq_len=64, **TEXT_HEADS.get(scheme, TEXT_HEADS[None]))
        model = Captioner(CaptionerConfig(vision, text, scheme))
        images = random_images(MIXED_SIZES * 2, seed=seed + 100)
        captions = [torch.randint(NUM_SPECIAL, vocab_size, (n,)).tolist() for n in torch.randint(1, 6, (8,)).tolist()]
        _train(model, images, captions, steps=30)
        model.eval()
        if len({tuple(c.tolist()) for c in model.generate(random_images(MIXED_SIZES), max_new_tokens=8)}) > 1:
            break
    return model


def _train(model, images, captions, steps):
    breaks = model.scheme.row_breaks  # the layout the scheme reads (Pixtral's rows end in break tokens)
    rows = [image_prompts(model.vision([img])[1], 2, row_breaks=breaks)[0][0].tolist() + c + [EOS_ID]
            for img, c in zip(images, captions)]
    length = max(map(len, rows))
    input_ids = torch.tensor([r + [PAD_ID] * (length - len(r)) for r in rows])
    labels = torch.tensor([[IGNORE_INDEX] * (len(r) - len(c) - 1) + c + [EOS_ID] + [IGNORE_INDEX] * (length - len(r))
                           for r, c in zip(rows, captions)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(images, input_ids, (input_ids != PAD_ID).long(), labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def random_images(sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=g) for h, w in sizes]


def as_lists(outputs):
    return [o.tolist() for o in outputs]


@pytest.mark.parametrize("scheme, pos_encoding", [(s, "rope2d") for s in SCHEMES] + [("mrope", "learned")])
def test_greedy_with_cache_equals_recomputing_everything(scheme, pos_encoding):
    model = trained_model(scheme, pos_encoding)
    images = random_images(MIXED_SIZES)
    cached = as_lists(model.generate(images, max_new_tokens=8))
    assert cached == as_lists(model.generate(images, max_new_tokens=8, use_cache=False))
    assert len({tuple(c) for c in cached}) > 1 and max(map(len, cached)) > 1  # not a degenerate comparison


@pytest.mark.parametrize("scheme", SCHEMES)
def test_beam_with_cache_equals_recomputing_everything(scheme):
    model = trained_model(scheme)
    images = random_images(MIXED_SIZES[:3])
    kwargs = {"max_new_tokens": 6, "strategy": "beam", "num_beams": 3}
    assert as_lists(model.generate(images, **kwargs)) == as_lists(model.generate(images, use_cache=False, **kwargs))


def test_decode_logits_match_the_full_forward():
    """Prefill part of a left-padded sequence, then decode the rest one token at a time through the cache."""
    model = trained_model()
    text = model.text
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 12, dtype=torch.long)  # covers every cache slot
    mask[0, :3] = 0
    position_ids = (mask.cumsum(1) - 1).clamp(min=0).expand(3, -1, -1) + torch.tensor([0, 2, 5])[:, None, None]
    position_ids = position_ids[..., :10]
    full = text(x, position_ids, mask[:, :10])
    caches = text.new_kv_caches(12)
    steps = [text(x[:, :6], position_ids[:, :, :6], mask, caches, 0)]
    steps += [text(x[:, i:i + 1], position_ids[:, :, i:i + 1], mask, caches, i) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1)[0, 3:], full[0, 3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1)[1], full[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batched_mixed_sizes_equal_one_by_one(scheme, strategy):
    model = trained_model(scheme)
    images = random_images(MIXED_SIZES)
    kwargs = {"max_new_tokens": 8, "strategy": strategy, "num_beams": 3}
    batched = as_lists(model.generate(images, **kwargs))
    assert batched == [model.generate([img], **kwargs)[0].tolist() for img in images]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_rope_deltas_continue_each_rows_own_ids(scheme):
    """Left padding shifts slots, not positions: the deltas of a padded batch give each row's next token the id its
    own unpadded sequence gives it."""
    model = trained_model(scheme)
    grid_thw = torch.tensor([[1, 4, 4], [1, 4, 6]])
    input_ids, attention_mask = image_prompts(grid_thw, merge=2, row_breaks=model.scheme.row_breaks)
    breaks = int(model.scheme.row_breaks)  # one break token in each: 2 rows
    assert attention_mask.tolist() == [[0, 0] + [1] * (6 + breaks), [1] * (8 + breaks)]
    _, deltas = model.position_ids(input_ids, grid_thw, attention_mask)
    next_ids = model.scheme.decode_position_ids(input_ids.shape[1], deltas)  # (3, 2, 1)
    for row in range(2):
        alone = torch.cat((input_ids[row][attention_mask[row].bool()], torch.tensor([NUM_SPECIAL + 1])))[None]
        ids, _ = model.position_ids(alone, grid_thw[row:row + 1])
        assert next_ids[:, row, 0].tolist() == ids[:, 0, -1].tolist()
    if scheme == "mrope":  # vs, 2x2 block (ids 1..2), ve = 3 -> 4; vs, 2x3 block, ve = 4 -> 5
        assert next_ids[0, :, 0].tolist() == [4, 5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_beam_is_greedy(seed):
    model = trained_model(seed=seed)
    images = random_images(MIXED_SIZES, seed=seed)
    beam = model.generate(images, max_new_tokens=8, strategy="beam", num_beams=1, length_penalty=0.0)
    assert as_lists(beam) == as_lists(model.generate(images, max_new_tokens=8))


def _sequence_logprob(model, image, tokens):
    """Sum of log-probabilities of ``tokens`` after the image's prompt, by the full forward (the slow way)."""
    prompt, _ = image_prompts(model.vision([image])[1], merge=2)
    input_ids = torch.cat((prompt, torch.tensor([tokens])), 1)
    logprobs = suppress_special_tokens(model([image], input_ids).logits).log_softmax(-1)[0]
    start = prompt.shape[1] - 1
    return sum(logprobs[start + i, t].item() for i, t in enumerate(tokens))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_on_a_tiny_vocabulary_is_exhaustive(length_penalty):
    """Three real tokens + EOS, at most 3 new tokens: 40 possible captions. With 12 beams no prefix is ever pruned,
    so beam search must return the best caption under logprob / len**length_penalty (len counts EOS)."""
    model = trained_model(vocab_size=NUM_SPECIAL + 3, seed=3)
    images = random_images([(32, 32), (32, 48)], seed=3)
    real = range(NUM_SPECIAL, NUM_SPECIAL + 3)
    found = as_lists(model.generate(images, max_new_tokens=3, strategy="beam", num_beams=12,
                                    length_penalty=length_penalty))
    for image, caption in zip(images, found):
        candidates = [list(c) + [EOS_ID] for n in range(3) for c in itertools.product(real, repeat=n)]
        candidates += [list(c) for c in itertools.product(real, repeat=3)]  # stopped by max_new_tokens
        scored = sorted(((_sequence_logprob(model, image, c) / len(c) ** length_penalty, c) for c in candidates),
                        reverse=True)
        assert scored[0][0] - scored[1][0] > 1e-4, "near tie: pick another seed"
        best = scored[0][1]
        assert caption == [t for t in best if t != EOS_ID], (caption, scored[:3])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_returns_the_best_captions_in_order(length_penalty):
    """With num_return_sequences, the exhaustive search above gives the n best of all 40 captions, best first, the
    first of them the one beam search gives alone."""
    model = trained_model(vocab_size=NUM_SPECIAL + 3, seed=3)
    images = random_images([(32, 32), (32, 48)], seed=3)
    real = range(NUM_SPECIAL, NUM_SPECIAL + 3)
    kwargs = {"max_new_tokens": 3, "strategy": "beam", "num_beams": 12, "length_penalty": length_penalty}
    found = as_lists(model.generate(images, num_return_sequences=4, **kwargs))
    assert len(found) == 2 * 4
    for i, image in enumerate(images):
        candidates = [list(c) + [EOS_ID] for n in range(3) for c in itertools.product(real, repeat=n)]
        candidates += [list(c) for c in itertools.product(real, repeat=3)]
        scored = sorted(((_sequence_logprob(model, image, c) / len(c) ** length_penalty, c) for c in candidates),
                        reverse=True)
        assert min(a[0] - b[0] for a, b in zip(scored[:5], scored[1:5])) > 1e-4, "near tie: pick another seed"
        assert found[4 * i: 4 * i + 4] == [[t for t in c if t != EOS_ID] for _, c in scored[:4]]
    assert as_lists(model.generate(images, **kwargs)) == found[::4]
    with pytest.raises(ValueError, match="num_return_sequences=5"):
        model.generate(images, strategy="beam", num_beams=4, num_return_sequences=5)
    with pytest.raises(ValueError, match="num_return_sequences=2"):
        model.generate(images, num_return_sequences=2)  # greedy has one caption


def test_sampling_is_repeatable_and_nucleus_shrinks_to_greedy():
    model = trained_model()
    images = random_images(MIXED_SIZES)

    def sample(seed, **kw):
        return as_lists(model.generate(images, max_new_tokens=8, strategy="sample",
                                       generator=torch.Generator().manual_seed(seed), **kw))

    assert sample(0, temperature=1.5) == sample(0, temperature=1.5)
    assert sample(0, temperature=1.5) != sample(1, temperature=1.5)
    assert sample(0, top_p=1e-6) == as_lists(model.generate(images, max_new_tokens=8))


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_never_emits_reserved_ids_and_restores_the_mode(strategy):
    model = trained_model()
    model.train()
    out = model.generate(random_images(MIXED_SIZES), max_new_tokens=6, strategy=strategy, num_beams=2,
                         generator=torch.Generator().manual_seed(0))
    is_training = model.training
    model.eval()
    assert is_training and all(o.dtype == torch.long and o.ndim == 1 and not o.requires_grad for o in out)
    assert all((o >= NUM_SPECIAL).all() for o in out)


def test_images_may_be_one_tensor():
    model = trained_model()
    images = random_images([(32, 48)] * 3)
    assert as_lists(model.generate(torch.stack(images), max_new_tokens=5)) == as_lists(
        model.generate(images, max_new_tokens=5))


def test_bad_arguments_raise():
    model = trained_model()
    images = random_images([(32, 32)])
    with pytest.raises(ValueError, match="strategy='topk'"):
        model.generate(images, strategy="topk")
    with pytest.raises(ValueError, match="top_p=0"):
        model.generate(images, strategy="sample", top_p=0)
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model.generate(images, max_new_tokens=100)


@pytest.fixture(scope="module")
def overfit():
    """A tiny model overfit on four captions of images of three sizes."""
    torch.manual_seed(0)
    model = Captioner(CaptionerConfig(VisionConfig(image_size=32, dim=32, depth=1, num_heads=2),
                                      TextConfig(vocab_size=16, dim=32, depth=2, num_heads=2, num_kv_heads=1)))
    images = random_images(MIXED_SIZES, seed=5)
    captions = [[14, 8, 9, 10], [11, 12, 13], [15, 14, 9, 11, 13], [8, 10]]  # ids from NUM_SPECIAL = 8 on
    _train(model, images, captions, steps=60)
    return model, images, captions


@pytest.mark.parametrize("kwargs", [{}, {"use_cache": False}, {"strategy": "beam", "num_beams": 3},
                                    {"strategy": "beam", "num_beams": 3, "use_cache": False}])
def test_overfit_model_says_its_captions_and_stops_at_eos(overfit, kwargs):
    model, images, captions = overfit
    assert as_lists(model.generate(images, max_new_tokens=10, **kwargs)) == captions
