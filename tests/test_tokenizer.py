import json

import pytest

from mmrope.data.tokenizer import ByteTokenizer, WordTokenizer, build_tokenizer, load_tokenizer
from mmrope.model.tokens import BOS_ID, EOS_ID, IMAGE_TOKEN_ID, NUM_SPECIAL, PAD_ID

CAPTIONS = ["red circle left of blue square", "blue square right of red circle", "A cat, sitting on the mat."]


def test_special_ids_are_distinct_and_reserved():
    assert len({PAD_ID, BOS_ID, EOS_ID}) == 3
    for tok in (ByteTokenizer(), WordTokenizer.train(CAPTIONS)):
        assert (tok.pad_id, tok.bos_id, tok.eos_id) == (PAD_ID, BOS_ID, EOS_ID)
        ids = [i for c in CAPTIONS for i in tok.encode(c)]
        assert min(ids) >= NUM_SPECIAL and max(ids) < tok.vocab_size


def test_byte_round_trip_any_text():
    tok = ByteTokenizer()
    for text in ["", "red circle left of blue square", "naïve café — 日本語 🙂", "tabs\tand\nnewlines"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == NUM_SPECIAL + 256


def test_byte_decode_skips_or_shows_specials():
    tok = ByteTokenizer()
    ids = [IMAGE_TOKEN_ID] + tok.encode("hé") + [EOS_ID, PAD_ID]
    assert tok.decode(ids) == "hé"
    assert tok.decode(ids, skip_special=False) == "<image>hé<eos><pad>"


def test_word_round_trip_normalises_case_and_spacing():
    tok = WordTokenizer.train(CAPTIONS)
    assert tok.decode(tok.encode("Red  circle LEFT of blue square")) == "red circle left of blue square"
    assert tok.decode(tok.encode("A cat, sitting on the mat.")) == "a cat, sitting on the mat."


def test_word_unknown_words_and_min_freq():
    tok = WordTokenizer.train(CAPTIONS)
    assert tok.encode("red zebra") == [tok.encode("red")[0], tok.unk_id]
    assert tok.decode([tok.unk_id]) == "<unk>"
    frequent = WordTokenizer.train(CAPTIONS, min_freq=2)
    assert set(frequent.words) == {"red", "circle", "of", "blue", "square"}
    assert frequent.vocab_size == NUM_SPECIAL + 1 + 5


def test_word_vocab_is_most_frequent_first():
    tok = WordTokenizer.train(["b a", "a c", "a"])
    assert tok.words == ["a", "b", "c"]
    assert tok.encode("a") == [NUM_SPECIAL + 1]


@pytest.mark.parametrize("kind", ["byte", "word"])
def test_save_and_load_round_trip(tmp_path, kind):
    tok = build_tokenizer(kind, CAPTIONS)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    for c in CAPTIONS:
        assert loaded.encode(c) == tok.encode(c)
    assert load_tokenizer(json.loads(path.read_text())).encode(CAPTIONS[0]) == tok.encode(CAPTIONS[0])


def test_clear_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        build_tokenizer("bpe", CAPTIONS)
    with pytest.raises(ValueError, match="needs the training captions"):
        build_tokenizer("word")
    with pytest.raises(ValueError, match="'kind' must be one of"):
        load_tokenizer({"kind": "sentencepiece"})
    with pytest.raises(ValueError, match="outside"):
        ByteTokenizer().decode([999])
    with pytest.raises(ValueError, match="reserved"):
        WordTokenizer(["<eos>", "red"])


def test_new_tokenizers_reserve_the_break_token():
    for tok in (ByteTokenizer(), WordTokenizer.train(CAPTIONS)):
        assert tok.num_special == NUM_SPECIAL == 8 and tok.to_dict()["num_special"] == 8
        assert min(i for c in CAPTIONS for i in tok.encode(c)) >= 8
    assert ByteTokenizer().decode([7], skip_special=False) == "<image_break>"
    for saved in ({"kind": "byte", "num_special": 7}, {"kind": "word", "words": ["red"], "num_special": 5}):
        with pytest.raises(ValueError, match=f"num_special={saved['num_special']}: expected 8"):
            load_tokenizer(saved)  # its ordinary ids would not be this tokenizer's
