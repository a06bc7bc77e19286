"""The memory-mapped train split: round trip against the encoder, dtype, damage detection, pickling only
paths, DataLoader workers, and the token batcher on it (disjoint DDP shards, exact resume mid-epoch)."""

import pickle

import numpy as np
import pytest
import torch

from lightning_nmt.data import IndexedDataset, ParallelDataModule, TokenBatchSampler
from lightning_nmt.data.batching import make_loader
from lightning_nmt.data.indexed import DamagedIndex, IndexedWriter, token_dtype
from lightning_nmt.data.sample import generate_pairs

PAIRS = generate_pairs(1200, seed=21)


@pytest.fixture(scope="module")
def dm(tmp_path_factory) -> ParallelDataModule:
    root = tmp_path_factory.mktemp("indexed")
    src, tgt = [en for en, _ in PAIRS], [fr for _, fr in PAIRS]
    src[3], tgt[7] = "  ", ""  # dropped: empty
    src[10] = " ".join(["the"] * 160)  # dropped: over max_len
    src[11] = "  leading, double  and trailing spaces "
    for lang, lines in (("en", src), ("fr", tgt)):
        (root / f"train.{lang}").write_text("".join(line + "\n" for line in lines))
    dm = ParallelDataModule(corpus="files", src_lang="en", tgt_lang="fr", train=str(root / "train"),
                            tokenizer={"type": "bpe", "vocab_size": 400}, max_len=150, max_tokens=600,
                            cache_dir=str(root / "cache"))
    dm.setup("fit")
    return dm


def test_round_trip_ids_and_lengths_equal_the_encoders(dm):
    train = dm.dataset("train")
    assert isinstance(train, IndexedDataset) and dm.drop_counts == {"empty": 2, "too_long": 1}
    sources, references = dm.sources("train"), dm.references("train")
    assert len(train) == len(sources) == 1197 and sources[8] == "  leading, double  and trailing spaces "
    src_ids, tgt_ids = dm.tokenizer.encode_src(sources), dm.tokenizer.encode_tgt(references)
    assert train.src_lengths().tolist() == [len(s) for s in src_ids]
    assert train.tgt_lengths().tolist() == [len(t) for t in tgt_ids]
    assert all(train[i].src.tolist() == src_ids[i] and train[i].tgt.tolist() == tgt_ids[i] for i in range(len(train)))
    assert train.arrays()["src_ids"].dtype == np.uint16 and train.rows()[:12].tolist() == [0, 1, 2, 4, 5, 6, 8, 9,
                                                                                              11, 12, 13, 14]


def test_token_dtype_and_an_int32_round_trip(tmp_path):
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.int32
    ids = {"src": np.array([70000, 1, 2], np.int32), "tgt": np.array([5, 65536], np.int32)}
    with IndexedWriter(tmp_path, token_dtype(70001)) as writer:
        writer.append(np.array([0, 3]), ids, {"src": np.array([2, 1]), "tgt": np.array([0, 2])})
        layout = writer.close()
    dataset = IndexedDataset(tmp_path, layout)
    dataset.check(max_len=5)
    assert [dataset[1].src.tolist(), dataset[0].tgt.tolist(), dataset[1].tgt.tolist()] == [[2], [], [5, 65536]]
    assert dataset[0].src.tolist() == [70000, 1] and dataset.rows().tolist() == [0, 3]
    with pytest.raises(DamagedIndex, match=r"lengths outside \[0, 1\]"):
        dataset.check(max_len=1)
    (tmp_path / "tgt.bin").write_bytes((tmp_path / "tgt.bin").read_bytes()[:-4])
    with pytest.raises(DamagedIndex, match="tgt.bin has 4 bytes, expected 8"):
        dataset.check(max_len=5)


def test_pickles_only_its_paths_and_maps_the_files_again(dm):
    train = dm.dataset("train")
    train[0]  # mapped in this process
    data = pickle.dumps(train)
    assert len(data) < 1500  # paths and layout, not the corpus
    copy = pickle.loads(data)
    assert copy._data is None  # nothing mapped until used
    assert copy[42].src.tolist() == train[42].src.tolist() and copy[42].tgt.tolist() == train[42].tgt.tolist()
    assert isinstance(copy.arrays()["src_ids"].base, np.memmap)


def test_two_dataloader_workers_load_every_batch(dm):
    train = dm.dataset("train")
    sampler = TokenBatchSampler(train.src_lengths(), train.tgt_lengths(), 600, seed=3)
    batches = list(make_loader(train, sampler, num_workers=2))
    assert len(batches) == len(sampler)
    ids = [i for batch in batches for i in batch["ids"].tolist()]
    assert sorted(ids) == list(range(len(train)))
    first = batches[0]
    expected = [train[i].src.tolist() for i in first["ids"].tolist()]
    assert [row[: n - 1].tolist() for row, n in zip(first["src"], first["src_lengths"], strict=True)] == expected


def batch_contents(train: IndexedDataset, sampler: TokenBatchSampler) -> list[tuple[list[int], torch.Tensor]]:
    return [(batch["ids"].tolist(), batch["tgt_out"]) for batch in make_loader(train, sampler)]


def test_batcher_on_the_memmap_gives_disjoint_ddp_shards_and_exact_resume(dm):
    train = dm.dataset("train")
    lengths = (train.src_lengths(), train.tgt_lengths())
    shards = []
    for rank in range(2):
        sampler = TokenBatchSampler(*lengths, 600, seed=5, num_replicas=2, rank=rank)
        sampler.set_epoch(1)
        shards.append(batch_contents(train, sampler))
    assert len(shards[0]) == len(shards[1])
    whole = TokenBatchSampler(*lengths, 600, seed=5)
    whole.set_epoch(1)
    n = len(whole)
    firsts = [set(ids) for shard in shards for ids, _ in shard[: n // 2]]  # before the padding repeats any
    assert sum(map(len, firsts)) == len(set().union(*firsts))
    seen = {i for shard in shards for ids, _ in shard for i in ids}
    assert seen == set(range(len(train)))

    sampler = TokenBatchSampler(*lengths, 600, seed=5, num_replicas=2, rank=1)
    sampler.set_epoch(1)
    iterator = iter(make_loader(train, sampler))
    for _ in range(5):
        next(iterator)
    resumed = TokenBatchSampler(*lengths, 600, seed=5, num_replicas=2, rank=1)
    resumed.load_state_dict({"epoch": 1, "batches_done": 5})
    resumed.set_epoch(1)
    rest = batch_contents(train, resumed)
    assert [ids for ids, _ in rest] == [ids for ids, _ in shards[1][5:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, shards[1][5:], strict=True))
