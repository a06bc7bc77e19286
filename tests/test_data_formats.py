"""Every input format (line files plain/gzip, TSV plain/gzip, a Hugging Face dataset saved to disk) reaches the
same DataModule with the same pairs, tokenizer and encoded train split; format errors are one line; the new data
configs compose."""

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lightning_nmt.data import DataError, ParallelDataModule
from lightning_nmt.data.corpus import TsvFile, read_all
from lightning_nmt.data.hf import HFSplit
from lightning_nmt.data.sample import generate_pairs
from tests.conftest import compose_many

PAIRS = generate_pairs(340, seed=12)
PAIRS[5] = ("   ", "une phrase sans source .")  # dropped from train: empty side
PAIRS[6] = ("  double  spaces and ünïcödé ✓ ", "des  espaces et des accents é ")
SPLITS = {"train": PAIRS[:300], "val": PAIRS[300:320], "test": PAIRS[320:]}
FORMATS = ["text", "text.gz", "tsv", "tsv.gz", "hf"]
COMMON = {"src_lang": "en", "tgt_lang": "fr", "tokenizer": {"type": "bpe", "vocab_size": 400}, "max_len": 200}


def write(root: Path, fmt: str) -> dict:
    """The corpus in ``fmt`` under ``root``; the DataModule arguments that read it."""
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        datasets = pytest.importorskip("datasets")
        features = datasets.Features({"translation": datasets.Translation(languages=["en", "fr"])})
        splits = {{"val": "validation"}.get(name, name): datasets.Dataset.from_dict(
            {"translation": [{"en": en, "fr": fr} for en, fr in pairs]}, features=features)
            for name, pairs in SPLITS.items()}
        datasets.DatasetDict(splits).save_to_disk(str(root / "saved"))
        return {"corpus": "hf", "hf_name": str(root / "saved"), "train": "train", "val": "validation", "test": "test"}
    gz = fmt.endswith(".gz")
    paths = {}
    for name, pairs in SPLITS.items():
        if fmt.startswith("tsv"):
            files = {f"{name}.tsv": "".join(f"{en}\t{fr}\n" for en, fr in pairs)}
            paths[name] = str(root / f"{name}.tsv{'.gz' if gz else ''}")
        else:
            files = {f"{name}.{lang}": "".join(pair[side] + "\n" for pair in pairs)
                     for side, lang in enumerate(("en", "fr"))}
            paths[name] = str(root / name)
        for file, text in files.items():
            data = text.encode()
            (root / (file + ".gz" if gz else file)).write_bytes(gzip.compress(data) if gz else data)
    return {"corpus": "tsv" if fmt.startswith("tsv") else "files", **paths}


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> dict[str, ParallelDataModule]:
    root = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt in FORMATS:
        try:
            kwargs = write(root / fmt, fmt)
        except pytest.skip.Exception:
            continue
        dm = ParallelDataModule(**kwargs, **COMMON, cache_dir=str(root / "cache"))
        dm.prepare_data()
        dm.setup("fit")
        out[fmt] = dm
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_pairs_tokenizer_and_train_split(modules, fmt):
    if fmt not in modules:
        pytest.skip("datasets is not installed (pip install -e '.[hf]')")
    dm, reference = modules[fmt], modules["text"]
    train = [pair for i, pair in enumerate(SPLITS["train"]) if i != 5]
    assert list(zip(dm.sources("train"), dm.references("train"), strict=True)) == train
    for name in ("val", "test"):
        assert list(zip(dm.sources(name), dm.references(name), strict=True)) == SPLITS[name]
    assert dm.drop_counts == {"empty": 1, "too_long": 0} and dm.built_cache
    assert dm.tokenizer.to_state() == reference.tokenizer.to_state()
    for key, array in dm.dataset("train").arrays().items():
        assert np.array_equal(array, reference.dataset("train").arrays()[key]), key
    assert np.array_equal(dm.dataset("test").arrays()["tgt_ids"], reference.dataset("test").arrays()["tgt_ids"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["src"].shape[0] == batch["tgt_in"].shape[0] > 0


def test_tsv_line_with_the_wrong_number_of_columns_names_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a\tb\nc\td\ne\tf\tg\n")
    with pytest.raises(DataError, match=r"bad\.tsv line 3: expected 2 tab-separated columns \(source, target\), "
                                        r"found 3"):
        read_all(TsvFile(path))
    path.write_text("a\tb\nno tab here\n")
    with pytest.raises(DataError, match=r"bad\.tsv line 2: .* found 1"):
        read_all(TsvFile(path))
    path.write_text("")
    with pytest.raises(DataError, match=r"empty split: .*bad\.tsv has no lines"):
        read_all(TsvFile(path))
    with pytest.raises(DataError, match=r"missing corpus file: .*nothing\.tsv"):
        read_all(TsvFile(tmp_path / "nothing.tsv"))


def test_hf_without_the_datasets_package_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError) as err:
        read_all(HFSplit(str(tmp_path), None, "train", "en", "fr"))
    assert "pip install -e '.[hf]'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="data.hf_name is required"):
        ParallelDataModule(corpus="hf", src_lang="en", tgt_lang="fr")


def test_hf_split_and_column_errors(tmp_path):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"translation": [{"en": "a", "de": "b"}]})}
                         ).save_to_disk(str(saved))
    with pytest.raises(DataError, match=r"has no split 'test'; splits: train"):
        read_all(HFSplit(str(saved), None, "test", "en", "de"))
    with pytest.raises(DataError, match=r"no 'translation' column with 'en' and 'fr' entries"):
        read_all(HFSplit(str(saved), None, "train", "en", "fr"))
    assert read_all(HFSplit(str(saved), None, "train", "de", "en")).src == ["b"]


def test_new_data_configs_compose(tmp_path):
    overrides = [["data=tsv", "data.train=c/train.tsv", "data.val=c/dev.tsv", "data.test=c/test.tsv",
                  "data.src_lang=en", "data.tgt_lang=de"],
                 ["data=hf", "data.hf_name=/data/saved", "data.src_lang=en", "data.tgt_lang=fr"],
                 ["data=wmt14_en_de"]]
    tsv, hf, wmt = (OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True, enum_to_str=True)
                    for cfg in compose_many("train", overrides, tmp_path))
    assert tsv["corpus"] == "tsv" and tsv["tokenizer"]["input_sentence_size"] == 1_000_000
    assert (hf["corpus"], hf["train"], hf["val"], hf["test"]) == ("hf", "train", "validation", "test")
    assert (wmt["corpus"], wmt["hf_name"], wmt["hf_config"], wmt["src_lang"], wmt["tgt_lang"]) == (
        "hf", "wmt14", "de-en", "en", "de")
    assert ParallelDataModule(**wmt).format.hf_name == "wmt14"  # every key is a DataModule argument; nothing is loaded
