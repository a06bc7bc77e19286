"""collate and TokenBatchSampler: token budget, coverage, shuffling, DDP shards, resume, padding."""

import numpy as np
import pytest
import torch

from lightning_nmt.data import BOS_ID, EOS_ID, PAD_ID, DataError, Example, TokenBatchSampler, collate
from lightning_nmt.data.sample import generate_pairs

RNG = np.random.default_rng(0)
SRC = RNG.integers(1, 60, size=3000)
TGT = np.clip(SRC + RNG.integers(-5, 6, size=3000), 1, None)


def flatten(batches) -> list[int]:
    return [i for b in batches for i in b]


def test_collate_layout():
    batch = collate([Example(7, np.array([5, 6, 7]), np.array([8, 9])), Example(2, [10], [11, 12, 13])])
    assert batch["src"].tolist() == [[5, 6, 7, EOS_ID], [10, EOS_ID, PAD_ID, PAD_ID]]
    assert batch["src_lengths"].tolist() == [4, 2]
    assert batch["tgt_in"].tolist() == [[BOS_ID, 8, 9, PAD_ID], [BOS_ID, 11, 12, 13]]
    assert batch["tgt_out"].tolist() == [[8, 9, EOS_ID, PAD_ID], [11, 12, 13, EOS_ID]]
    assert batch["ids"].tolist() == [7, 2]
    assert all(t.dtype == torch.long for t in batch.values())
    no_target = collate([Example(0, [5], None), Example(1, [], None)])
    assert set(no_target) == {"src", "src_lengths", "ids"}
    assert no_target["src"].tolist() == [[5, EOS_ID], [EOS_ID, PAD_ID]]


def test_token_budget_and_single_overlong_examples():
    src, tgt = SRC.copy(), TGT.copy()
    src[10], tgt[20] = 500, 700  # longer than max_tokens on their own
    sampler = TokenBatchSampler(src, tgt, max_tokens=400, seed=1)
    for batch in sampler:
        padded = len(batch) * max(int(src[batch].max()) + 1, int(tgt[batch].max()) + 1)
        assert padded <= 400 or len(batch) == 1
    assert [10] in list(sampler) and [20] in list(sampler)


def test_every_example_once_per_epoch_and_order_depends_on_seed_and_epoch():
    sampler = TokenBatchSampler(SRC, TGT, max_tokens=1000, seed=3)
    epoch0 = list(sampler)
    assert sorted(flatten(epoch0)) == list(range(len(SRC)))
    assert len(epoch0) == len(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(flatten(epoch1)) == list(range(len(SRC)))
    assert flatten(epoch1) != flatten(epoch0) and len(epoch1) == len(epoch0)
    same = TokenBatchSampler(SRC, TGT, max_tokens=1000, seed=3)
    same.set_epoch(1)
    assert list(same) == epoch1
    assert list(TokenBatchSampler(SRC, TGT, max_tokens=1000, seed=4)) != epoch0
    assert sampler.sampler is sampler  # Lightning reaches set_epoch through batch_sampler.sampler


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_train_shards_are_disjoint_per_rank_and_equally_long(replicas):
    shards = [TokenBatchSampler(SRC, TGT, max_tokens=1500, seed=0, num_replicas=replicas, rank=r)
              for r in range(replicas)]
    for s in shards:
        s.set_epoch(2)
    batches = [list(s) for s in shards]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(shards[0])
    whole = TokenBatchSampler(SRC, TGT, max_tokens=1500, seed=0)
    whole.set_epoch(2)
    n = len(whole)
    all_batches = [b for rank_batches in batches for b in rank_batches]
    assert len(all_batches) == -(-n // replicas) * replicas
    distinct = {tuple(b) for b in all_batches}
    assert distinct == {tuple(b) for b in whole}  # padding only repeats batches of the epoch
    assert sorted(flatten(distinct)) == list(range(len(SRC)))


def test_eval_shards_cover_every_example_exactly_once():
    shards = [TokenBatchSampler(SRC, TGT, max_tokens=2000, shuffle=False, even=False, num_replicas=3, rank=r)
              for r in range(3)]
    seen = [i for s in shards for b in s for i in b]
    assert sorted(seen) == list(range(len(SRC)))
    one = TokenBatchSampler(SRC, None, max_tokens=2000, shuffle=False, even=False)
    lengths = [int(SRC[b].max()) for b in one]
    assert lengths == sorted(lengths)  # sorted by source length
    assert sorted(flatten(one)) == list(range(len(SRC)))


def test_tiny_dataset_with_more_ranks_than_batches():
    shards = [TokenBatchSampler([3, 4], [3, 4], max_tokens=100, num_replicas=4, rank=r) for r in range(4)]
    assert [len(list(s)) for s in shards] == [1, 1, 1, 1]


def test_skip_and_state_dict_resume_the_remaining_batches():
    sampler = TokenBatchSampler(SRC, TGT, max_tokens=1000, seed=9)
    sampler.set_epoch(4)
    full = list(sampler)
    it = iter(sampler)
    seen = [next(it) for _ in range(7)]
    state = sampler.state_dict()
    assert state == {"epoch": 4, "batches_done": 7} and seen == full[:7]
    resumed = TokenBatchSampler(SRC, TGT, max_tokens=1000, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # Lightning calls set_epoch again for the resumed epoch
    assert list(resumed) == full[7:]
    assert list(resumed) == full  # the skip applies to one iteration only
    sampler.skip(len(full) - 2)
    assert list(sampler) == full[-2:]
    resumed.skip(3)
    resumed.set_epoch(5)  # a new epoch drops a pending skip
    assert len(list(resumed)) == len(full)


def test_padding_fraction_is_low_with_length_bucketing():
    pairs = generate_pairs(4000, seed=2)
    src = [len(en.split()) for en, _ in pairs]
    tgt = [len(fr.split()) for _, fr in pairs]
    sampler = TokenBatchSampler(src, tgt, max_tokens=2048, seed=0)
    assert sampler.padding_fraction < 0.05
    eval_sampler = TokenBatchSampler(src, tgt, max_tokens=2048, shuffle=False, even=False)
    assert eval_sampler.padding_fraction < 0.15


def test_invalid_arguments():
    with pytest.raises(DataError, match="max_tokens"):
        TokenBatchSampler(SRC, TGT, max_tokens=0)
    with pytest.raises(ValueError, match="rank"):
        TokenBatchSampler(SRC, TGT, max_tokens=10, num_replicas=2, rank=2)
