"""Sentencepiece tokenizer: training, exact round trips, special ids, serialization."""

import io

import pytest
import torch

from lightning_nmt.data import BOS_ID, EOS_ID, PAD_ID, UNK_ID, DataError, Tokenizer
from lightning_nmt.data.sample import generate_pairs
from lightning_nmt.data.tokenizer import settings_from_config

PAIRS = generate_pairs(1500, seed=5)
EN, FR = [p[0] for p in PAIRS], [p[1] for p in PAIRS]


@pytest.fixture(scope="module")
def joint() -> Tokenizer:
    return Tokenizer.train(EN, FR, model_type="unigram", vocab_size=1000, joint=True)


def test_special_ids_and_vocab(joint):
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert joint.tgt_pieces_from_ids([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert joint.src_vocab_size == joint.tgt_vocab_size <= 1000
    ids = joint.encode_src(EN[:50])
    assert all(i > EOS_ID for seq in ids for i in seq)  # no specials inside encodings


def test_round_trip_is_exact_even_for_unseen_characters_and_spaces(joint):
    lines = FR[:200] + ["  double  spaces and trailing ", "", "ünïcödé 漢字 ✓ ‘quotes’", "tab\there"]
    assert joint.decode_tgt(joint.encode_tgt(lines)) == lines


def test_decode_stops_at_eos_and_ignores_pad_and_bos(joint):
    ids = joint.encode_tgt(["le chien dort ."])[0]
    assert joint.decode_tgt([[BOS_ID, *ids, EOS_ID, *ids, PAD_ID], [PAD_ID, *ids, PAD_ID]]) == [
        "le chien dort .", "le chien dort ."]
    assert joint.decode_tgt(torch.tensor([[*ids, EOS_ID]])) == ["le chien dort ."]


def test_pieces_for_heatmap_labels(joint):
    pieces = joint.src_pieces("the cat sleeps .")
    src_ids = joint.encode_src(["the cat sleeps ."])[0]
    assert pieces[-1] == "</s>" and pieces == joint.src_pieces_from_ids([*src_ids, EOS_ID])
    assert "".join(pieces[:-1]).replace("▁", " ").strip() == "the cat sleeps ."
    ids = joint.encode_tgt(["le chat dort ."])[0]
    assert "".join(joint.tgt_pieces_from_ids(ids)).replace("▁", " ").strip() == "le chat dort ."


def test_separate_models_and_bpe():
    tok = Tokenizer.train(EN, FR, model_type="bpe", vocab_size=600, joint=False)
    # English side never saw "é": byte fallback pieces; the French model has it
    assert "<0xC3>" in tok.src_pieces("été")
    assert "<0xC3>" not in tok.tgt_pieces_from_ids(tok.encode_tgt(["été"])[0])
    assert tok.decode_tgt(tok.encode_tgt(FR[:100])) == FR[:100]
    assert tok.settings == {"model_type": "bpe", "vocab_size": 600, "joint": False,
                            "character_coverage": 1.0, "lowercase": False}


def test_training_is_deterministic(joint):
    again = Tokenizer.train(EN, FR, model_type="unigram", vocab_size=1000, joint=True)
    assert again.to_state() == joint.to_state()


def test_state_loads_with_weights_only_and_save_load(joint, tmp_path):
    buffer = io.BytesIO()
    torch.save({"tokenizer": joint.to_state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["tokenizer"]
    restored = Tokenizer.from_state(state)
    assert restored.encode_src(EN[:20]) == joint.encode_src(EN[:20])
    joint.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.to_state() == joint.to_state()


def test_invalid_settings_are_data_errors():
    with pytest.raises(DataError, match="unknown tokenizer type 'wordpiece'; valid: unigram, bpe"):
        Tokenizer.train(EN, FR, model_type="wordpiece")
    with pytest.raises(DataError, match="unknown tokenizer option"):
        settings_from_config({"type": "bpe", "vocab": 10})
    with pytest.raises(DataError, match="sentencepiece training failed"):
        Tokenizer.train(EN, FR, model_type="bpe", vocab_size=50)
    assert settings_from_config({"type": "bpe"})["vocab_size"] == 8000
    assert settings_from_config({})["input_sentence_size"] == 1_000_000
    with pytest.raises(DataError, match="input_sentence_size must be at least 2, got 1"):
        settings_from_config({"input_sentence_size": 1})


def test_decoded_hypothesis_is_one_line(tmp_path) -> None:
    """Byte-fallback pieces of line breaks (which an untrained model can emit) never split a hypothesis."""
    from lightning_nmt.data.tokenizer import Tokenizer

    lines = [f"a small line {i} with words" for i in range(200)]
    tok = Tokenizer.train(lines, lines, model_type="bpe", vocab_size=300, joint=True)
    newline_ids = tok.encode_tgt(["x\ny\rz\u2028w"])[0]
    (text,) = tok.decode_tgt([newline_ids])
    assert text == "x y z w" and len(text.splitlines()) == 1


def test_lowercase_tokenizer_reads_and_writes_lowercase_text() -> None:
    """`lowercase: true`: trained on lowercased text, every encoder lowercases (the bulk encoders of the cache
    included), decoding gives the lowercased sentence, and the setting survives the checkpoint state."""
    cased = [line.capitalize() + " Über Ärger" for line in FR[:300]]
    tok = Tokenizer.train(EN, cased, model_type="bpe", vocab_size=600, joint=True, lowercase=True)
    pieces = [p for p in tok.tgt_pieces_from_ids(range(4, tok.tgt_vocab_size)) if not p.startswith("<0x")]
    assert "▁über" in pieces and not any(piece.lower() != piece for piece in pieces)  # no cased piece learnt
    assert tok.encode_tgt(cased[:50]) == tok.encode_tgt([line.lower() for line in cased[:50]])
    assert tok.decode_tgt(tok.encode_tgt(cased[:50])) == [line.lower() for line in cased[:50]]
    src_bulk, tgt_bulk = tok.bulk_encoders(num_threads=1)
    ids, lengths = tgt_bulk(cased[:50])
    assert ids.tolist() == [i for seq in tok.encode_tgt(cased[:50]) for i in seq]
    assert lengths.tolist() == [len(seq) for seq in tok.encode_tgt(cased[:50])]
    assert tok.src_pieces("The Dog") == tok.src_pieces("the dog")
    assert Tokenizer.from_state(tok.to_state()).encode_src(["A Cat"]) == tok.encode_src(["a cat"])
    assert settings_from_config({"lowercase": True})["lowercase"] is True
    with pytest.raises(DataError, match="tokenizer lowercase must be true or false, got 'yes'"):
        settings_from_config({"lowercase": "yes"})


def test_tokenizer_state_from_before_lowercase_loads_cased(joint) -> None:
    """Checkpoints written before the `lowercase` setting existed keep working, cased."""
    state = joint.to_state()
    state["settings"] = {k: v for k, v in state["settings"].items() if k != "lowercase"}
    restored = Tokenizer.from_state(state)
    assert restored.settings["lowercase"] is False
    assert restored.encode_src(["The Dog"]) == joint.encode_src(["The Dog"]) != joint.encode_src(["the dog"])
