"""Corpus reading (in blocks and chunks), validation errors and train-split cleaning."""

import gzip
import logging
from pathlib import Path

import pytest

from lightning_nmt.atomic import atomic_path, atomic_write_text
from lightning_nmt.data import DataError, ParallelDataModule, corpus
from lightning_nmt.data.corpus import ParallelText, TextPair, read_all, resolve

WORDS = "the a cat dog sees likes small big house garden runs sleeps".split()


def write(prefix: Path, src: list[str], tgt: list[str], gz: bool = False) -> None:
    for lang, lines in (("en", src), ("fr", tgt)):
        data = "".join(line + "\n" for line in lines).encode()
        if gz:
            Path(f"{prefix}.{lang}.gz").write_bytes(gzip.compress(data))
        else:
            Path(f"{prefix}.{lang}").write_bytes(data)


def read_parallel(prefix: Path, src_lang: str, tgt_lang: str) -> ParallelText:
    return read_all(TextPair.from_prefix(prefix, src_lang, tgt_lang))


def sentences(n: int, offset: int = 0) -> list[str]:
    return [" ".join(WORDS[(i * 7 + k + offset) % len(WORDS)] for k in range(3 + i % 5)) for i in range(n)]


def test_reads_plain_and_gzip_and_strips_only_line_ends(tmp_path):
    (tmp_path / "a.en").write_bytes(b"one \r\n  two\r\n\n")
    (tmp_path / "a.fr.gz").write_bytes(gzip.compress("un\ndeux é\nx".encode()))
    text = read_parallel(tmp_path / "a", "en", "fr")
    assert text.src == ["one ", "  two", ""]
    assert text.tgt == ["un", "deux é", "x"]
    assert resolve(tmp_path / "a", "fr") == tmp_path / "a.fr.gz"


def test_blocks_and_chunks_do_not_change_the_lines(tmp_path, monkeypatch):
    src = "".join(f"ligne {i} é\u2028ü\r\n" if i % 3 else f"  {i}\n" for i in range(40)) + "last without newline"
    tgt = "".join(f"{i}\n" for i in range(41))
    (tmp_path / "a.en.gz").write_bytes(gzip.compress(src.encode()))
    (tmp_path / "a.fr").write_text(tgt)
    whole = read_parallel(tmp_path / "a", "en", "fr")
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 3)  # multi-byte characters and \r\n split across blocks
    chunks = list(TextPair.from_prefix(tmp_path / "a", "en", "fr").chunks(size=7))
    assert [c.start for c in chunks] == list(range(0, 41, 7))
    assert [line for c in chunks for line in c.src] == whole.src and len(whole.src) == 41
    assert whole.src[1] == "ligne 1 é\u2028ü" and whole.src[3] == "  3" and whole.src[-1] == "last without newline"
    assert [line for c in chunks for line in c.tgt] == whole.tgt


def test_errors_found_late_in_a_large_file_name_the_line_and_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 16)
    write(tmp_path / "a", sentences(100), sentences(100))
    data = (tmp_path / "a.fr").read_bytes().splitlines(keepends=True)
    (tmp_path / "a.fr").write_bytes(b"".join(data[:87]) + b"caf\xe9\n" + b"".join(data[88:]))
    with pytest.raises(DataError, match=r"invalid UTF-8 in .*a\.fr at line 88"):
        list(TextPair.from_prefix(tmp_path / "a", "en", "fr").chunks(size=10))
    write(tmp_path / "b", sentences(95), sentences(93))
    with pytest.raises(DataError, match=r"b\.en has 95 lines but .*b\.fr has 93"):
        list(TextPair.from_prefix(tmp_path / "b", "en", "fr").chunks(size=10))


def test_missing_file_names_the_paths_tried(tmp_path):
    write(tmp_path / "a", ["x"], ["y"])
    with pytest.raises(DataError, match=r"missing corpus file: .*b\.en or .*b\.en\.gz"):
        read_parallel(tmp_path / "b", "en", "fr")
    (tmp_path / "a.fr").unlink()
    with pytest.raises(DataError, match=r"a\.fr or .*a\.fr\.gz"):
        read_parallel(tmp_path / "a", "en", "fr")


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    write(tmp_path / "a", ["x", "y", "z"], ["x", "y"])
    with pytest.raises(DataError) as err:
        read_parallel(tmp_path / "a", "en", "fr")
    msg = str(err.value)
    assert "a.en" in msg and "a.fr" in msg and "3" in msg and "2" in msg and "mismatch" in msg


def test_invalid_utf8_names_file_and_line(tmp_path):
    (tmp_path / "a.en").write_text("ok\nok\nok\n")
    (tmp_path / "a.fr.gz").write_bytes(gzip.compress(b"ok\nfine\nbad \xff\xfe here\n"))
    with pytest.raises(DataError, match=r"invalid UTF-8 in .*a\.fr\.gz at line 3"):
        read_parallel(tmp_path / "a", "en", "fr")


def test_empty_split_is_an_error(tmp_path):
    write(tmp_path / "a", [], [])
    with pytest.raises(DataError, match="empty split"):
        read_parallel(tmp_path / "a", "en", "fr")


def test_truncated_gzip_is_a_data_error(tmp_path):
    write(tmp_path / "a", ["x"] * 50, ["y"] * 50, gz=True)
    data = (tmp_path / "a.en.gz").read_bytes()
    (tmp_path / "a.en.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read .*a\.en\.gz"):
        read_parallel(tmp_path / "a", "en", "fr")


def test_train_cleaning_drops_and_logs_counts_but_never_touches_eval(tmp_path, caplog):
    src, tgt = sentences(300), sentences(300, offset=3)
    src[5], tgt[9], src[11], tgt[11] = "", "   \t", " ", ""  # 3 empty pairs
    long_line = " ".join(WORDS * 6)  # 72 words > max_len pieces, even if every word is one piece
    src[20], tgt[30] = long_line, long_line  # 2 long pairs
    write(tmp_path / "train", src, tgt)
    val_src, val_tgt = ["", long_line, "the cat"], ["le chat", "", long_line]
    write(tmp_path / "val", val_src, val_tgt)
    write(tmp_path / "test", val_src[::-1], val_tgt[::-1], gz=True)
    kwargs = dict(src_lang="en", tgt_lang="fr", train=str(tmp_path / "train"), val=str(tmp_path / "val"),
                  test=str(tmp_path / "test"), max_len=60, tokenizer={"type": "bpe", "vocab_size": 300},
                  cache_dir=str(tmp_path / "cache"))
    dm = ParallelDataModule(**kwargs)
    with caplog.at_level(logging.INFO, logger="lightning_nmt.data"):
        dm.setup("fit")
    assert dm.drop_counts == {"empty": 3, "too_long": 2}
    assert "dropped 3 empty or whitespace-only pairs and 2 pairs over max_len=60" in caplog.text
    kept = [i for i in range(300) if i not in (5, 9, 11, 20, 30)]
    assert dm.sources("train") == [src[i] for i in kept]
    assert dm.references("train") == [tgt[i] for i in kept]
    assert dm.sources("val") == val_src and dm.references("val") == val_tgt
    assert dm.references("test") == val_tgt[::-1]
    assert len(dm.val_dataloader().dataset) == 3 and len(dm.test_dataloader().dataset) == 3
    cached = ParallelDataModule(**kwargs)
    cached.setup("fit")
    assert not cached.built_cache and cached.drop_counts == dm.drop_counts


def test_validation_happens_in_setup_for_every_split(tmp_path):
    write(tmp_path / "train", sentences(20), sentences(20))
    write(tmp_path / "val", ["a", "b"], ["a"])
    dm = ParallelDataModule(src_lang="en", tgt_lang="fr", train=str(tmp_path / "train"),
                            val=str(tmp_path / "val"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="mismatch"):
        dm.setup("fit")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("bin-*"))


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "héllo")
    assert target.read_text() == "héllo"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "héllo"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]
