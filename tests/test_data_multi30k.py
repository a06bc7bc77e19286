"""Multi30k: download from a local HTTP server (complete, interrupted, offline) and the real corpus."""

import gzip
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lightning_nmt.data import DataError, ParallelDataModule
from lightning_nmt.data.multi30k import download
from lightning_nmt.data.tokenizer import Tokenizer

REAL = Path(__file__).parents[2] / "shared/data/multi30k"
EN = ["a man rides a horse .", "two dogs play in the snow .", "a girl reads a book .", "people walk ."]
DE = ["ein mann reitet ein pferd .", "zwei hunde spielen im schnee .", "ein mädchen liest ein buch .",
      "leute gehen ."]


def fixture_files() -> dict[str, bytes]:
    files = {}
    for split, n in (("train", 40), ("val", 8), ("test_2016_flickr", 8)):
        for lang, lines in (("en", EN), ("de", DE)):
            text = "".join(lines[(i + len(split)) % 4] + f" {i}\n" for i in range(n))
            files[f"/{split}.{lang}.gz"] = gzip.compress(text.encode())
    return files


class Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.requests.append(self.path)
        name = self.path.removeprefix("/truncated")
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/truncated"):
            self.wfile.write(body[: len(body) // 2])  # then close: fewer bytes than Content-Length
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    Handler.files = fixture_files()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def datamodule(tmp_path: Path, base_url: str, **kwargs) -> ParallelDataModule:
    return ParallelDataModule(corpus="multi30k", src_lang="en", tgt_lang="de", root=str(tmp_path / "m30k"),
                              base_url=base_url, cache_dir=str(tmp_path / "cache"),
                              tokenizer={"type": "bpe", "vocab_size": 350}, **kwargs)


def test_download_then_reuse(tmp_path, server):
    Handler.requests.clear()
    dm = datamodule(tmp_path, server)
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "m30k").glob("*.gz")) == sorted(
        f"{s}.{lang}.gz" for s in ("train", "val", "test_2016_flickr") for lang in ("en", "de"))
    assert len(Handler.requests) == 6
    dm.setup("fit")
    assert dm.references("test")[1] == DE[(1 + len("test_2016_flickr")) % 4] + " 1"
    assert len(dm.sources("train")) == 40
    datamodule(tmp_path, server).prepare_data()
    assert len(Handler.requests) == 6  # nothing downloaded twice


def test_interrupted_download_leaves_no_file(tmp_path, server):
    dest = tmp_path / "val.en.gz"
    with pytest.raises(DataError, match=r"truncated/val\.en\.gz .*interrupted: got \d+ of \d+ bytes"):
        download(f"{server}/truncated/val.en.gz", dest)
    assert list(tmp_path.iterdir()) == []


def test_missing_remote_file_and_invalid_language(tmp_path, server):
    with pytest.raises(DataError, match=r"cannot download .*/train\.fr\.gz .*place the Multi30k files in "
                                        r"data\.root"):
        ParallelDataModule(corpus="multi30k", src_lang="en", tgt_lang="fr", root=str(tmp_path),
                           base_url=server).prepare_data()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".download.lock", "train.en.gz"]  # no partial fr
    with pytest.raises(DataError, match="Multi30k has no language 'xx'; valid: en, de, fr, cs"):
        ParallelDataModule(corpus="multi30k", src_lang="en", tgt_lang="xx")


def test_offline_error_names_the_url_and_data_root(tmp_path):
    with socket.socket() as s:  # a port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dm = datamodule(tmp_path, f"http://127.0.0.1:{port}/raw")
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/raw/train.en.gz" in msg and "data.root" in msg
    assert "\n" not in msg and not list((tmp_path / "m30k").glob("*.gz"))


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real Multi30k not found at {REAL}")
def test_real_multi30k_counts_and_exact_round_trip(tmp_path):
    dm = ParallelDataModule(corpus="multi30k", src_lang="en", tgt_lang="de", root=str(REAL),
                            cache_dir=str(tmp_path), tokenizer={"type": "bpe", "vocab_size": 8000})
    dm.prepare_data()
    dm.setup("fit")
    assert not (REAL / ".download.lock").exists()  # a complete root is only read
    counts = {name: len(dm.references(name)) for name in ("train", "val", "test")}
    assert counts == {"train": 29000, "val": 1014, "test": 1000} and dm.drop_counts["empty"] == 0
    tokenizer: Tokenizer = dm.tokenizer
    for name in ("val", "test"):
        assert tokenizer.decode_tgt(tokenizer.encode_tgt(dm.references(name))) == dm.references(name)
        src = dm.sources(name)
        dataset = dm.dataset(name)
        assert tokenizer.encode_src(src[:50]) == [dataset[i].src.tolist() for i in range(50)]
