"""Decoding speed of a Transformer checkpoint (with its key/value cache, and with the decoder recomputed over
the whole prefix at every step, as before the cache) beside an attention RNN checkpoint, on the first 500
sentences of test2016 (see benchmarks/README.md).

    python benchmarks/transformer_decode.py TRANSFORMER_CKPT RNN_CKPT [SOURCE_FILE(.gz)]
"""

import gzip
import sys
import time
import types
from dataclasses import replace

import torch

from lightning_nmt.translate import Translator

tf_ckpt, rnn_ckpt = sys.argv[1], sys.argv[2]
source = sys.argv[3] if len(sys.argv) > 3 else "../shared/data/multi30k/test_2016_flickr.en.gz"
with (gzip.open(source, "rt") if source.endswith(".gz") else open(source)) as f:
    lines = [line.strip() for line in f][:500]
tf = Translator.from_checkpoint(tf_ckpt)
rnn = Translator.from_checkpoint(rnn_ckpt)


def full_prefix(model: torch.nn.Module) -> None:
    """The decode_step before the cache: the decoder over the whole prefix at every step."""

    def init_state(self, enc):
        return enc.mask.new_empty(enc.mask.size(0), 0, dtype=torch.long)

    def decode_step(self, tokens, enc, state):
        prefix = torch.cat([state, tokens.unsqueeze(1)], dim=1)
        features, weights = self.decode(prefix, enc, return_attention=True)
        return self.project(features[:, -1]), prefix, weights[:, -1]

    def reorder(self, state, index):
        return state.index_select(0, index)

    for name, fn in (("init_state", init_state), ("decode_step", decode_step), ("reorder", reorder)):
        setattr(model, name, types.MethodType(fn, model))


tf_old = Translator.from_checkpoint(tf_ckpt)
full_prefix(tf_old.module.model)
out = {}
for _ in range(2):  # best of two passes
    for name, tr in (("transformer, cached", tf), ("transformer, full prefix", tf_old), ("attention RNN", rnn)):
        for beam in (1, 5):
            tr.module.decoding = replace(tr.module.decoding, beam_size=beam)
            start = time.perf_counter()
            hyps = tr.translate(lines)
            out.setdefault((name, beam), []).append((len(lines) / (time.perf_counter() - start), hyps))
for (name, beam), runs in out.items():
    print(f"{name:26s} beam {beam}: {max(r[0] for r in runs):6.1f} sent/s (best of 2)")
same = [a == b for a, b in zip(out[("transformer, cached", 5)][0][1], out[("transformer, full prefix", 5)][0][1])]
print(f"cached vs full prefix, beam 5: {sum(same)}/{len(same)} identical translations")
