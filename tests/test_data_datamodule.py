"""ParallelDataModule on the embedded sample corpus: setup, caching, loaders, DDP shards, Lightning."""

import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from lightning_nmt.data import EOS_ID, PAD_ID, DataError, ParallelDataModule
from lightning_nmt.data.formats import corpus_formats

SIZES = {"train": 3000, "val": 120, "test": 150}


def make(cache_dir, **kwargs) -> ParallelDataModule:
    kwargs = {"corpus": "sample", "sample_sizes": SIZES, "max_tokens": 1024, "eval_max_tokens": 2048,
              "tokenizer": {"type": "unigram", "vocab_size": 1000}, "cache_dir": str(cache_dir), **kwargs}
    return ParallelDataModule(**kwargs)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def dm(cache_dir) -> ParallelDataModule:
    dm = make(cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_setup_builds_once_then_hits_the_cache_quickly(dm, cache_dir):
    assert dm.built_cache and dm.src_lang == "en" and dm.tgt_lang == "fr"
    start = time.perf_counter()
    again = make(cache_dir)
    again.setup("fit")
    assert not again.built_cache and time.perf_counter() - start < 1.0
    assert again.tokenizer.to_state() == dm.tokenizer.to_state()
    assert len(list(cache_dir.glob("sample-*/train.en"))) == 1


def test_sample_round_trip_and_aligned_raw_text(dm):
    for name in ("train", "val", "test"):
        dataset = dm.dataset(name)
        decoded = dm.tokenizer.decode_tgt(dataset[i].tgt for i in range(len(dataset)))
        assert decoded == dm.references(name)
    assert len(dm.references("test")) == SIZES["test"] and dm.sources("val")[0].endswith(" .")


def test_batches_follow_the_interface(dm):
    batch = next(iter(dm.train_dataloader()))
    src, tgt_in, tgt_out = batch["src"], batch["tgt_in"], batch["tgt_out"]
    assert src.shape[0] == tgt_in.shape[0] == batch["ids"].shape[0] and tgt_in.shape == tgt_out.shape
    assert src.numel() <= 1024 and tgt_in.numel() <= 1024
    rows = torch.arange(src.shape[0])
    assert (src[rows, batch["src_lengths"] - 1] == EOS_ID).all()
    assert (tgt_in[:, 1:] == torch.where(tgt_out[:, :-1] == EOS_ID, PAD_ID, tgt_out[:, :-1])).all()
    assert dm.padding_fraction < 0.15


def test_eval_loader_order_is_restored_with_ids(dm):
    ids, hyps = [], []
    for batch in dm.val_dataloader():
        ids += batch["ids"].tolist()
        hyps += dm.tokenizer.decode_tgt(batch["tgt_out"].tolist())
    assert sorted(ids) == list(range(SIZES["val"]))
    restored = [hyp for _, hyp in sorted(zip(ids, hyps, strict=True))]
    assert restored == dm.references("val")


def test_raw_text_translation_loader(dm):
    lines = ["the cat sleeps .", "my old friends who hold a beautiful chair play .", ""]
    loader = dm.make_eval_loader(dm.encode_source_lines(lines))
    batches = list(loader)
    assert all(set(b) == {"src", "src_lengths", "ids"} for b in batches)
    by_id = {int(i): (row, int(n)) for b in batches
             for i, row, n in zip(b["ids"], b["src"], b["src_lengths"], strict=True)}
    assert by_id[2][1] == 1 and by_id[2][0][0] == EOS_ID
    assert dm.tokenizer.src_pieces(lines[0]) == dm.tokenizer.src_pieces_from_ids(by_id[0][0][: by_id[0][1]])


def test_extra_tests_and_test_names(dm, cache_dir, tmp_path):
    extra = tmp_path / "extra"
    extra.with_suffix(".en").write_text("the dog runs .\na cat .\n")
    extra.with_suffix(".fr").write_text("le chien court .\nun chat .\n")
    with_extra = make(cache_dir, extra_tests={"mine": str(extra)})
    with_extra.setup("test")
    assert not with_extra.built_cache  # a new test set is encoded with the cached tokenizer, nothing rebuilt
    assert with_extra.test_names == ["test", "mine"]
    loaders = with_extra.test_dataloader()
    assert isinstance(loaders, list) and len(loaders[1].dataset) == 2
    assert with_extra.references("mine") == ["le chien court .", "un chat ."]
    assert not isinstance(dm.test_dataloader(), list) and dm.test_names == ["test"]


def test_setup_eval_on_val_reads_no_test_set(dm, cache_dir, tmp_path):
    """`lnmt-eval split=val` (choosing beam size / length penalty) decodes the validation set, never test."""
    extra = tmp_path / "extra"
    extra.with_suffix(".en").write_text("the dog runs .\n")
    extra.with_suffix(".fr").write_text("le chien court .\n")
    on_val = make(cache_dir, extra_tests={"mine": str(extra)})
    on_val.setup_eval(dm.tokenizer, "val")
    assert on_val.test_names == ["val"] and "test" not in on_val._texts and "mine" not in on_val._texts
    assert on_val.references("val") == dm.references("val")
    assert len(on_val.test_dataloader().dataset) == len(dm.dataset("val"))
    on_test = make(cache_dir, extra_tests={"mine": str(extra)})
    on_test.setup_eval(dm.tokenizer)
    assert on_test.test_names == ["test", "mine"]
    with pytest.raises(DataError, match="unknown evaluation split 'train'"):
        make(cache_dir).setup_eval(dm.tokenizer, "train")


def test_ranks_from_the_trainer_get_disjoint_equal_shards(dm, cache_dir):
    shards = []
    for rank in range(2):
        ranked = make(cache_dir)
        ranked.setup("fit")  # as the app does before building the Trainer
        single = ranked.train_sampler
        ranked.setup("fit")
        assert ranked.train_sampler is single  # same rank/world: the sampler (and its state) is kept
        ranked.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        ranked.setup("fit")
        assert (ranked.train_sampler.rank, ranked.train_sampler.num_replicas) == (rank, 2)
        train = [tuple(b) for b in ranked.train_sampler]
        val = [i for b in ranked.val_dataloader() for i in b["ids"].tolist()]
        shards.append((train, val))
    assert len(shards[0][0]) == len(shards[1][0]) == -(-len(dm.train_sampler) // 2)
    assert not set(shards[0][1]) & set(shards[1][1])
    assert sorted(shards[0][1] + shards[1][1]) == list(range(SIZES["val"]))


def test_configuration_errors(tmp_path):
    with pytest.raises(DataError, match=f"unknown corpus 'wmt'; valid: {', '.join(corpus_formats())}$"):
        ParallelDataModule(corpus="wmt")
    with pytest.raises(DataError, match="src_lang and data.tgt_lang are required"):
        ParallelDataModule(corpus="files", train="x")
    with pytest.raises(DataError, match="English<->French"):
        ParallelDataModule(corpus="sample", src_lang="en", tgt_lang="de")
    with pytest.raises(DataError, match="invalid extra test name"):
        ParallelDataModule(corpus="sample", extra_tests={"val": "x"})
    with pytest.raises(DataError, match="unknown tokenizer type 'char'; valid: unigram, bpe"):
        ParallelDataModule(corpus="sample", tokenizer={"type": "char"})
    with pytest.raises(DataError, match="data.train is required"):
        ParallelDataModule(corpus="files", src_lang="en", tgt_lang="fr", cache_dir=str(tmp_path)).setup("fit")


def test_reverse_direction_of_the_sample_corpus(dm, cache_dir):
    reverse = make(cache_dir, src_lang="fr", tgt_lang="en")
    reverse.setup("fit")
    assert reverse.sources("test") == dm.references("test") and reverse.built_cache


def test_worker_processes(cache_dir):
    workers = make(cache_dir, num_workers=1)
    workers.setup("fit")
    loader = workers.train_dataloader()
    assert loader.persistent_workers
    epochs = []
    for epoch in range(2):
        workers.train_sampler.set_epoch(epoch)
        epochs.append([i for batch in loader for i in batch["ids"].tolist()])
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(len(workers.sources("train"))))
    assert epochs[0] != epochs[1]


class Recorder(L.LightningModule):
    """Records the example ids of each training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.epochs: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.epochs.setdefault(self.current_epoch, []).extend(batch["ids"].tolist())
        return (self.weight * batch["src"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_reshuffles_each_epoch_through_set_epoch(dm):
    module = Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    first, second = module.epochs[0], module.epochs[1]
    assert sorted(first) == sorted(second) == list(range(len(dm.sources("train"))))
    assert first != second
