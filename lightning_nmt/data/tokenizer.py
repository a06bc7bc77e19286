"""Sentencepiece subword tokenizer shared by source and target (joint) or one model per side."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import sentencepiece as spm

from lightning_nmt.atomic import atomic_write_bytes, atomic_write_text
from lightning_nmt.data.encoder import Encoder, make_encoder
from lightning_nmt.data.errors import DataError
from lightning_nmt.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # what str.splitlines() splits on
MODEL_TYPES = ("unigram", "bpe")
CONFIG_KEYS = {"type": "model_type", "vocab_size": "vocab_size", "joint": "joint",
               "character_coverage": "character_coverage", "input_sentence_size": "input_sentence_size",
               "lowercase": "lowercase"}
INPUT_SENTENCE_SIZE = 1_000_000
THREADED_ENCODE_LINES = 32
"""sentencepiece encodes a list on a pool of threads it starts per call, which costs more than encoding a few lines
one by one (benchmarks/README.md, "CTranslate2 and serving"): fewer lines than this are encoded one by one, e.g.
`lnmt-serve` counting a request's pieces."""
TRAIN_SEED = 1
STATE_VERSION = 1


DEFAULT_SETTINGS = {"model_type": "unigram", "vocab_size": 8000, "joint": True, "character_coverage": 1.0,
                    "lowercase": False, "input_sentence_size": INPUT_SENTENCE_SIZE}
"""The tokenizer's defaults, by setting name (``CONFIG_KEYS`` maps the config's keys to these)."""


def settings_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Map the ``data.tokenizer`` config group to validated settings: ``Tokenizer.train`` keyword arguments plus
    ``input_sentence_size``, the number of sentences each sentencepiece model is trained on at most (a random
    sample of the train split when it has more)."""
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise DataError(f"unknown tokenizer option(s) {unknown}; valid: {sorted(CONFIG_KEYS)}")
    settings = {**DEFAULT_SETTINGS, **{CONFIG_KEYS[k]: v for k, v in cfg.items()}}
    sample = int(settings.pop("input_sentence_size"))
    if sample < 2:
        raise DataError(f"tokenizer input_sentence_size must be at least 2, got {sample}")
    return {**check_settings(**settings), "input_sentence_size": sample}


def check_settings(
    model_type: str, vocab_size: int, joint: bool, character_coverage: float, lowercase: bool = False
) -> dict[str, Any]:
    """Validate tokenizer settings and return them as a plain dict (a tokenizer state without
    ``lowercase`` loads with False)."""
    if model_type not in MODEL_TYPES:
        raise DataError(f"unknown tokenizer type {model_type!r}; valid: {', '.join(MODEL_TYPES)}")
    if int(vocab_size) <= 0:
        raise DataError(f"tokenizer vocab_size must be positive, got {vocab_size}")
    if not 0.0 < float(character_coverage) <= 1.0:
        raise DataError(f"tokenizer character_coverage must be in (0, 1], got {character_coverage}")
    if not isinstance(lowercase, bool):
        raise DataError(f"tokenizer lowercase must be true or false, got {lowercase!r}")
    return {"model_type": model_type, "vocab_size": int(vocab_size), "joint": bool(joint),
            "character_coverage": float(character_coverage), "lowercase": lowercase}


def _train_model(lines: Iterable[str], settings: Mapping[str, Any]) -> bytes:
    """Train one sentencepiece model in memory and return its serialized proto.

    Identity normalization, kept whitespace and byte fallback make ``decode(encode(x)) == x`` (``x.lower()`` with
    ``lowercase``) for any text, so detokenized output compares exactly with raw references. One thread:
    deterministic, and faster on a busy machine (parallel sweep jobs; benchmarks/HISTORY.md).
    """
    spm.set_random_generator_seed(TRAIN_SEED)
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=writer,
            model_type=settings["model_type"], vocab_size=settings["vocab_size"],
            character_coverage=settings["character_coverage"], hard_vocab_limit=False,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
            num_threads=1, minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"sentencepiece training failed: {' '.join(str(e).split())}") from e
    return writer.getvalue()


def _content_ids(ids: Iterable[int]) -> list[int]:
    """Ids up to the first EOS, without PAD and BOS."""
    out = []
    for i in map(int, ids):
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            out.append(i)
    return out


def _encode(model: spm.SentencePieceProcessor, lines: list[str]) -> list[list[int]]:
    """Piece ids of each line (see THREADED_ENCODE_LINES)."""
    return model.encode(lines) if len(lines) >= THREADED_ENCODE_LINES else [model.encode(line) for line in lines]


class Tokenizer:
    """Sentencepiece tokenizer for a language pair (one joint model or one model per side).

    Ids never include BOS/EOS: the collate function adds them. With ``lowercase``, every text is lowercased
    (``str.lower``) before it is trained on or encoded, as Joey NMT's ``lowercase`` and the Multi30k papers
    that score lowercased BLEU do: the model then reads and writes lowercase text.
    """

    def __init__(self, src_model: bytes, tgt_model: bytes | None, settings: Mapping[str, Any]) -> None:
        self.settings = check_settings(**settings)
        self._src_model, self._tgt_model = src_model, tgt_model
        self._src = spm.SentencePieceProcessor(model_proto=src_model)
        self._tgt = self._src if tgt_model is None else spm.SentencePieceProcessor(model_proto=tgt_model)

    def _normalize(self, lines: Iterable[str]) -> list[str]:
        """The text the sentencepiece models read: lowercased with ``lowercase``, else unchanged."""
        return [line.lower() for line in lines] if self.settings["lowercase"] else list(lines)

    @classmethod
    def train(
        cls,
        src_lines: Iterable[str],
        tgt_lines: Iterable[str],
        *,
        model_type: str = "unigram",
        vocab_size: int = 8000,
        joint: bool = True,
        character_coverage: float = 1.0,
        lowercase: bool = False,
    ) -> Tokenizer:
        """Train deterministically on the given sentences (joint: one model on the source, then the target
        sentences; with ``lowercase`` lowercased). The sentences are streamed to sentencepiece (which keeps its
        own copy)."""
        settings = check_settings(model_type, vocab_size, joint, character_coverage, lowercase)
        if lowercase:
            src_lines, tgt_lines = map(str.lower, src_lines), map(str.lower, tgt_lines)
        if joint:
            return cls(_train_model(chain(src_lines, tgt_lines), settings), None, settings)
        return cls(_train_model(src_lines, settings), _train_model(tgt_lines, settings), settings)

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size()

    def encode_src(self, lines: Sequence[str]) -> list[list[int]]:
        """Source sentences -> piece ids (no EOS)."""
        return _encode(self._src, self._normalize(lines))

    def encode_tgt(self, lines: Sequence[str]) -> list[list[int]]:
        """Target sentences -> piece ids (no BOS/EOS)."""
        return _encode(self._tgt, self._normalize(lines))

    def bulk_encoders(self, num_threads: int) -> tuple[Encoder, Encoder]:
        """(source, target) encoders of whole corpora (see ``encoder``): the ids of ``encode_src`` /
        ``encode_tgt``, flat. One object (one word cache) for a joint model."""
        src = make_encoder(self._src, self.settings["model_type"], num_threads)
        tgt = src if self._tgt_model is None else make_encoder(self._tgt, self.settings["model_type"], num_threads)
        if not self.settings["lowercase"]:
            return src, tgt
        return (lambda lines: src(self._normalize(lines))), (lambda lines: tgt(self._normalize(lines)))

    def decode_tgt(self, ids_list: Iterable[Iterable[int]]) -> list[str]:
        """Target ids -> sentences; each sequence stops at its first EOS, PAD and BOS are ignored.

        Byte-fallback pieces can spell a line break (e.g. an undertrained model emitting <0x0A>); it
        becomes a space, so one sentence always stays one line of a hypothesis file.
        """
        return [LINE_BREAK.sub(" ", text) for text in self._tgt.decode([_content_ids(ids) for ids in ids_list])]

    def src_pieces(self, line: str) -> list[str]:
        """The pieces of the model input for ``line``, EOS (``</s>``) included: one per source position."""
        return [*self._src.encode(self._normalize([line])[0], out_type=str), self._src.id_to_piece(EOS_ID)]

    def src_pieces_from_ids(self, ids: Iterable[int]) -> list[str]:
        """Source ids -> piece strings, one per id (EOS -> ``</s>``; for attention heatmap labels)."""
        return [self._src.id_to_piece(int(i)) for i in ids]

    def tgt_pieces_from_ids(self, ids: Iterable[int]) -> list[str]:
        """Target ids -> piece strings, one per id (for attention heatmap labels)."""
        return [self._tgt.id_to_piece(int(i)) for i in ids]

    def differences(self, other: Tokenizer) -> list[str]:
        """What makes `other` segment or normalise text differently: the source or target sentencepiece model
        (compared byte for byte), lowercasing. Empty: the same tokenizer."""
        found = []
        if self._src_model != other._src_model:
            found.append("the source sentencepiece model")
        if (self._tgt_model or self._src_model) != (other._tgt_model or other._src_model):
            found.append("the target sentencepiece model")
        if self.settings["lowercase"] != other.settings["lowercase"]:
            found.append(f"lowercase ({self.settings['lowercase']} and {other.settings['lowercase']})")
        return found

    def to_state(self) -> dict[str, Any]:
        """Primitive-typed state (loads under ``torch.load(weights_only=True)``)."""
        return {"version": STATE_VERSION, "settings": dict(self.settings),
                "src_model": self._src_model, "tgt_model": self._tgt_model}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Tokenizer:
        """Inverse of ``to_state``."""
        return cls(state["src_model"], state["tgt_model"], state["settings"])

    def __reduce__(self) -> tuple[Any, ...]:
        return (Tokenizer.from_state, (self.to_state(),))

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` and the model file(s) (``joint.model`` or ``src.model``/``tgt.model``)."""
        directory = Path(directory)
        if self._tgt_model is None:
            atomic_write_bytes(directory / "joint.model", self._src_model)
        else:
            atomic_write_bytes(directory / "src.model", self._src_model)
            atomic_write_bytes(directory / "tgt.model", self._tgt_model)
        atomic_write_text(directory / "tokenizer.json", json.dumps(self.settings, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Inverse of ``save``."""
        directory = Path(directory)
        settings = json.loads((directory / "tokenizer.json").read_text())
        if settings["joint"]:
            return cls((directory / "joint.model").read_bytes(), None, settings)
        return cls((directory / "src.model").read_bytes(), (directory / "tgt.model").read_bytes(), settings)
