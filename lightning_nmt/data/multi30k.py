"""Multi30k (task 1) files: ``<root>/<split>.<lang>.gz``, downloaded on first use."""

from __future__ import annotations

import gzip
import http.client
import logging
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from lightning_nmt.atomic import atomic_path
from lightning_nmt.data.corpus import PairSource, TextPair
from lightning_nmt.data.errors import DataError
from lightning_nmt.data.formats import CorpusFormat, register_corpus

BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
LANGS = ("en", "de", "fr", "cs")
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
TIMEOUT_S = 20.0
log = logging.getLogger("lightning_nmt.data")


def check_langs(src_lang: str, tgt_lang: str) -> None:
    for lang in (src_lang, tgt_lang):
        if lang not in LANGS:
            raise DataError(f"Multi30k has no language {lang!r}; valid: {', '.join(LANGS)}")


def download(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """Download a gzip file to ``dest`` atomically: nothing appears at ``dest`` unless it is complete."""
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
                expected = response.headers.get("Content-Length")
                shutil.copyfileobj(response, f)
                received = f.tell()
            if expected is not None and received != int(expected):
                raise DataError(f"download of {url} interrupted: got {received} of {expected} bytes")
            with gzip.open(tmp, "rb") as check:
                while check.read(1 << 20):
                    pass
    except (OSError, EOFError, http.client.HTTPException) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise DataError(
            f"cannot download {url} ({reason}); place the Multi30k files in data.root ({dest.parent})"
        ) from e


def _present(root: Path, name: str, lang: str) -> bool:
    return (root / f"{name}.{lang}").is_file() or (root / f"{name}.{lang}.gz").is_file()


def ensure_files(root: Path, names: Iterable[str], langs: Iterable[str], base_url: str) -> None:
    """Download ``<name>.<lang>.gz`` from ``base_url`` into ``root`` for every file not there yet.

    ``root`` is only written to (lock file included) when something is missing.
    """
    wanted = [(name, lang) for name in names for lang in langs]
    if all(_present(root, name, lang) for name, lang in wanted):
        return
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".download.lock")):
        for name, lang in wanted:
            if not _present(root, name, lang):
                url = f"{base_url.rstrip('/')}/{name}.{lang}.gz"
                log.info("downloading %s", url)
                download(url, root / f"{name}.{lang}.gz")


@register_corpus("multi30k")
@dataclass
class Multi30kCorpus(CorpusFormat):
    """`data=multi30k`: `root/{train,val,test_2016_flickr}.<lang>.gz`, downloaded from `base_url` when absent
    (`root` None: `<cache_dir>/multi30k`); `data.train`/`val`/`test` and extra tests are file names in `root`."""

    root: str | None = None
    base_url: str = BASE_URL
    default_langs = ("en", "de")

    def check_langs(self, src_lang: str, tgt_lang: str) -> None:
        check_langs(src_lang, tgt_lang)

    def sources(self, splits: Mapping[str, str | None], extra_tests: Mapping[str, str], src_lang: str,
                tgt_lang: str, cache_dir: Path) -> dict[str, PairSource]:
        root = Path(self.root) if self.root is not None else cache_dir / "multi30k"
        names = {split: splits.get(split) or default for split, default in SPLITS.items()} | dict(extra_tests)
        ensure_files(root, names.values(), (src_lang, tgt_lang), self.base_url)
        return {split: TextPair.from_prefix(root / name, src_lang, tgt_lang) for split, name in names.items()}
