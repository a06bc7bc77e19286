"""lnmt-translate and `Translator`: chunked streaming in input order, an interactive pipe answered line by line,
very long lines translated in segments with a warning, bad input as one line."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_nmt.app import train
from lightning_nmt.data.tokenizer import EOS_ID
from lightning_nmt.search import SearchResult
from lightning_nmt.search.segments import bounded, cut_points, split_rows
from lightning_nmt.translate import Translator, read_chunks
from tests.conftest import ROOT, compose_config

TINY = [
    "data.sample_sizes={train:600,val:20,test:20}", "data.tokenizer.vocab_size=300", "data.max_tokens=1024",
    "data.max_len=40", "model.embedding_dim=16", "model.encoder_hidden=16", "model.decoder_hidden=32",
    "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
    "decoding.beam_size=2", "callbacks.num_heatmaps=0", "logger=none", "test_after_training=false",
]
LINES = ["the old man sees a dog .", "", "a red car is in the street .", "she sings", "the cat eats fish ."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("translate")
    train(compose_config("train", TINY, tmp))
    return tmp / "run" / "checkpoints" / "last.ckpt"


def cli(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_nmt.translate", *args], input=stdin, text=True,
                          capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


# ---- segments --------------------------------------------------------------------------------------------

def test_cut_points_are_sentence_ends_and_the_limit_inside_a_too_long_sentence():
    dot = 9
    ids = [1, 2, dot, 3, 4, 5, dot, 6, 7, 8, 1, 2, 3, 4]
    assert cut_points(ids, 5, frozenset({dot})) == [3, 7, 12, 14]  # after each '.', then at the limit
    assert cut_points(ids, 100, frozenset({dot})) == [3, 7, 14]
    assert cut_points(ids, 4, frozenset()) == [4, 8, 12, 14]


def test_long_rows_are_searched_in_segments_and_joined_in_order():
    src = torch.tensor([[5, 6, 9, 7, 8, EOS_ID], [4, EOS_ID, 0, 0, 0, 0]])
    lengths = torch.tensor([6, 2])
    rows, row_lengths, owners = split_rows(src, lengths, 4, frozenset({9}))
    assert rows.tolist() == [[5, 6, 9, EOS_ID], [7, 8, EOS_ID, 0], [4, EOS_ID, 0, 0]]
    assert row_lengths.tolist() == [4, 3, 2] and owners == [[(0, 0), (1, 3)], [(2, 0)]]

    def echo(rows: torch.Tensor, lengths: torch.Tensor) -> SearchResult:  # "translates" a row into its ids
        tokens = [[row[: n - 1]] for row, n in zip(rows.tolist(), lengths.tolist())]
        attention = [[torch.eye(n)] for n in lengths.tolist()]  # each output attends to its own source piece
        return SearchResult(tokens, -lengths.float().unsqueeze(1), attention)

    joined = bounded(echo, src, lengths, 4, frozenset({9}))
    assert joined.tokens == [[[5, 6, 9, 7, 8]], [[4]]]
    assert joined.scores.squeeze(1).tolist() == [-3.5, -2.0]  # the mean of the segments'
    assert torch.equal(joined.attention[0][0], torch.eye(6))  # blocks at their source positions, EOS last


# ---- the Python API and the CLI ---------------------------------------------------------------------------

def test_translator_streams_in_chunks_with_the_same_output_as_one_batch(checkpoint):
    translator = Translator.from_checkpoint(checkpoint, beam_size=2)
    whole = translator.translate(LINES)
    assert len(whole) == len(LINES) and whole[1] == "" and all(whole[i] for i in (0, 2, 3, 4))
    assert list(translator.stream(line + "\n" for line in LINES * 3)) == whole * 3
    chunks = read_chunks(((line.encode(), True) for line in LINES * 3), "x", chunk_lines=2, chunk_tokens=10**6)
    assert [len(c) for c in chunks] == [2] * 7 + [1]


def test_file_in_small_chunks_equals_one_chunk_with_global_nbest_indices_and_heatmap_names(checkpoint, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    common = [f"ckpt_path={checkpoint}", f"input={src}", "beam_size=2", "nbest=2"]
    one = cli([*common, f"output={tmp_path / 'one.txt'}"])
    small = cli([*common, f"output={tmp_path / 'small.txt'}", "chunk_lines=2", f"attention_dir={tmp_path}/att"])
    assert one.returncode == 0 and small.returncode == 0, small.stderr
    text = (tmp_path / "small.txt").read_text()
    assert text == (tmp_path / "one.txt").read_text()
    # two hypotheses a line, one (empty) for the empty line 2: indices count over the whole input, not the chunk
    assert [int(line.split(" ||| ")[0]) for line in text.splitlines()] == [0, 0, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(p.name for p in (tmp_path / "att").iterdir()) == ["00001.png", "00003.png", "00004.png",
                                                                   "00005.png"]


def test_interactive_pipe_gets_each_translation_before_the_next_line_is_written(checkpoint):
    proc = subprocess.Popen([sys.executable, "-m", "lightning_nmt.translate", f"ckpt_path={checkpoint}",
                             "input=-", "output=-", "beam_size=1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        answers = []
        for line in ("the old man sees a dog .", "she sings"):
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()  # the pipe stays open: no EOF tells it to start
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no translation within 120 s of writing the line"
            answers.append(proc.stdout.readline().decode())
        assert all(a.endswith("\n") for a in answers)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0 and proc.stdout.read() == b""
    finally:
        proc.kill()
    translator = Translator.from_checkpoint(checkpoint, beam_size=1)
    assert [a.rstrip("\n") for a in answers] == translator.translate(["the old man sees a dog .", "she sings"])


def test_a_very_long_line_is_translated_in_segments_with_a_warning_naming_it(checkpoint, tmp_path):
    long = " ".join(["the old man sees a dog in the red car ."] * 200)  # ~2,000 words, max_len 40 pieces
    src = tmp_path / "in.txt"
    src.write_text("\n".join([LINES[0], long, LINES[3]]) + "\n")
    started = time.perf_counter()
    proc = cli([f"ckpt_path={checkpoint}", f"input={src}", f"output={tmp_path / 'out.txt'}", "beam_size=2"])
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / "out.txt").read_text().split("\n")
    assert len(out) == 4 and out[-1] == ""  # three lines, newline-terminated
    assert len(out[1]) > 10 * len(out[0])  # every segment translated, joined on one line
    assert "line(s) 2 (" in proc.stderr and "max_input_len=40" in proc.stderr
    assert time.perf_counter() - started < 200


def test_unreadable_input_and_bad_utf8_are_one_line_errors(checkpoint, tmp_path):
    missing = cli([f"ckpt_path={checkpoint}", f"input={tmp_path / 'nope.txt'}", "output=-"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe oops\n")
    broken = cli([f"ckpt_path={checkpoint}", f"input={bad}", f"output={tmp_path / 'out.txt'}"])
    for proc, fragment in ((missing, "cannot read"), (broken, "invalid UTF-8 in")):
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr
    assert "at line 2" in broken.stderr and not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["nbest=3"], "nbest=3 is more than strategy beam gives (at most 2 = beam_size)"),
    (["beam_size=0"], "beam_size must be at least 1"),
    (["max_input_len=0"], "max_input_len must be at least 1"),
    (["top_k=5"], "top_k is an option of strategy sampling, not of beam (set strategy=sampling)"),
    (["strategy=sampling", "temperature=-1"], "temperature must be positive, got -1.0"),
    (["strategy=sampling", "top_p=1.5"], "top_p must be in (0, 1], got 1.5"),
    (["strategy=greedy", "nbest=2"], "nbest=2 is more than strategy greedy gives (at most 1)"),
    (["strategy=sampling", "epsilon=1"], "epsilon must be in [0, 1), got 1.0"),
])
def test_decoding_values_no_search_can_use_are_one_line_errors(checkpoint, tmp_path, args, message):
    """Before, nbest above the beam and beam_size=0 were tracebacks from inside the search, after the model
    had loaded; max_input_len=0 was accepted."""
    proc = cli([f"ckpt_path={checkpoint}", "input=-", f"output={tmp_path / 'out.txt'}", *args], stdin="a dog .\n")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.txt").exists()
