"""Translation with CTranslate2: `CTranslate2Model` serves a directory written by `lnmt-export`, with the
checkpoint's tokenizer and decoding settings, and searches as `lightning_nmt.search` does (strategies `beam`, `greedy`
and `sampling`; another strategy, `epsilon` sampling or a per-request seed is a `ConfigError` naming it).

What is the same as the PyTorch path (`TranslationModule.translate` / `lnmt-translate`):

- the model: float32 exports give the same per-token log-probabilities (within ~1e-5) and greedy outputs;
- the search rules: at most ceil(src_len * max_len_ratio) + max_len_offset output tokens (EOS included), EOS forced
  at the last one, at least ceil(src_len * min_len_ratio); PAD and BOS never produced; beam search keeps the 2k best
  extensions of k beams, a sentence is done when k hypotheses have ended (fairseq's rule, CTranslate2's too);
- the score: GNMT's sum of log-probabilities / ((5 + len) / 6) ** length_penalty (len counts EOS). CTranslate2's
  own length penalty is score / len ** a (len also counts EOS), which ranks hypotheses differently: the search runs
  with a penalty too small to change a float32 score (`RAW_LENGTH_PENALTY`, so CTranslate2 returns the plain sums of
  the k finished hypotheses and does not take its early exit of length_penalty=0), and the k finished hypotheses are
  ranked here with ours;
- the length limits: CTranslate2 takes one `max_decoding_length` per call, so sentences are searched together under
  the largest of their limits, and a sentence whose search had not ended before its own limit is searched again
  under its own (see `_run`); a hypothesis CTranslate2 stopped at the limit gets the forced EOS as ours: its
  log-probability from `score_batch` (and its attention row from one more step), as our search adds it;
- empty or whitespace-only lines: an empty translation with score 0, without running the model;
- a source longer than `max_input_len` pieces is translated in segments, with `lightning_nmt.search.segments`
  (the same cuts, joined the same way: scores averaged, attention blocks placed at their source positions);
  nothing is truncated (CTranslate2's `max_input_length` is off);
- attention: the last decoder layer's cross-attention averaged over the heads, one row per output token and one
  for EOS, one column per source piece, EOS included (CTranslate2 4.8's beam search returns the first row of
  another sentence of the batch: it is recomputed, see `_fix_first_rows`);
- the scores: our log-probabilities (log-softmax over the whole vocabulary). CTranslate2 masks tokens before its
  log-softmax, renormalising the others, so PAD and BOS are searched unmasked, and a sentence whose hypotheses
  contain one is searched again with them masked; the hypotheses of a search with masked tokens (that one, or EOS
  before the minimum length) are rescored with `score_batch`.

Where the outputs can differ from ours (beam search only; greedy outputs are ours):
- a PAD or BOS candidate among the 2k best extensions of a step that no returned hypothesis keeps took a place ours
  gives to another candidate (a trained model, never trained to produce them, gives them ~0), and in a search with
  masked tokens the candidates are ranked with renormalised log-probabilities;
- when more than k hypotheses end at the step that completes k, CTranslate2 keeps the k of the highest plain sum,
  ours ranks all of them with the length penalty; a hypothesis stopped at the length limit competes only with the k
  best candidates of the last free step (ours: with the k best that do not end there);
- `beam_stop=best_finished` is approximated by CTranslate2's early exit (stop when the top beam ends), ranked as
  above;
- float32 arithmetic in another order: scores within ~1e-5 of ours, so a near-tie (rare) may go the other way.
int8 models are not exact: their outputs are compared with ours by `benchmarks/ctranslate2_bench.py`.

The penalties and sampling:
- `no_repeat_ngram_size` and `repetition_penalty` are CTranslate2's own, with our rules (on the logits before the
  log-softmax, over the output so far without BOS, a repeated token penalised once): greedy outputs are ours;
  a hypothesis rescored with `score_batch` (stopped at the length limit, or searched with masked tokens) is scored
  without the penalties;
- sampling maps `top_k`, `top_p`, `temperature` onto `sampling_topk`, `sampling_topp`, `sampling_temperature`
  (the same rules: top-k, then temperature, then top-p on the renormalised top-k); `epsilon` has no CTranslate2
  counterpart. The sentences of one call share their length limits exactly, so a sampled sentence is never searched
  again; `nbest` distinct draws are collected over `ROUNDS` rounds, as ours;
- seeds: CTranslate2's random numbers are per worker thread, seeded once per process (`set_random_seed` before the
  translator is made), with no per-call seed. A model loaded with `seed=` has one worker, so the same calls in the
  same order draw the same samples; a draw still depends on what else is in its batch. A different seed in a call is
  a `ConfigError` (`lnmt-serve` answers a request's seed with 400).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_nmt.backend_api import Hypothesis, rounded
from lightning_nmt.cli import decoding_overrides
from lightning_nmt.data.tokenizer import Tokenizer
from lightning_nmt.errors import CheckpointError, ConfigError
from lightning_nmt.kernels import available_cores
from lightning_nmt.search import DecodingConfig, SearchResult, length_penalty, max_lengths, min_lengths, segments
from lightning_nmt.search.beam import BeamStop
from lightning_nmt.search.sampling import ROUNDS
from lightning_nmt.tokens import BOS_ID, EOS_ID, PAD_ID

FORMAT_VERSION = 1
METADATA_FILE = "lightning_nmt.json"

BATCH_TOKENS = {"cpu": 512, "cuda": 8192}
"""Source tokens per CTranslate2 batch, by device. On the CPU, small batches searched by one single-threaded worker
per core are the fastest for the models this package trains (benchmarks/README.md, "CTranslate2 and serving"): a
step's matrix products are too small to gain from splitting them across threads, and batches run side by side do.
A GPU (one worker) takes large ones."""

RAW_LENGTH_PENALTY = 1e-9
"""CTranslate2 divides finished scores by len ** length_penalty: with 1e-9, len ** 1e-9 rounds to 1.0 in float32
(the plain sum comes back), and, unlike 0, it does not turn on CTranslate2's early exit."""


@dataclass
class _Found:
    """A finished hypothesis of one search: target ids (EOS excluded), the plain sum of its log-probabilities (EOS
    included; None: to be computed with `score_batch`), whether it ended with EOS (else CTranslate2 stopped it at the
    length limit and the EOS is forced), attention rows (one per token and EOS) or None."""

    ids: list[int]
    raw: float | None
    ended: bool
    attention: list[list[float]] | None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """`lightning_nmt.json` of an exported directory; a missing or foreign directory is a one-line CheckpointError."""
    path = Path(path)
    meta_path = path / METADATA_FILE
    if not path.is_dir():
        raise CheckpointError(f"CTranslate2 model directory not found: {path}")
    if not meta_path.is_file() or not (path / "model.bin").is_file():
        raise CheckpointError(f"{path} is not a model directory written by lnmt-export (no {METADATA_FILE} or "
                              "model.bin)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{meta_path} is not readable: {err}") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was exported in format {meta.get('format_version')}, newer than this "
                              f"version reads ({FORMAT_VERSION}): upgrade lightning-nmt")
    return meta


class CTranslate2Model:
    """An `lnmt-export` directory loaded into a `ctranslate2.Translator` with its tokenizer:

        model = CTranslate2Model("exported/", compute_type="int8", threads=2)
        model.translate_batch(["A man is riding a bike."], model.decoding)[0][0].tgt
        model.score(["A man ."], ["Un homme ."])  # per-token log-probabilities, EOS included

    `decoding`: the checkpoint's settings (the defaults); `seed`: CTranslate2's random numbers, seeded once (then
    one worker: see the module docstring).
    `compute_type`: CTranslate2's (`default`: the exported weights' type, e.g. int8 for an int8 export on the CPU).
    `threads` (CPU): threads in all (0: one per core), as `threads // intra_threads` CTranslate2 workers of
    `intra_threads` each; the sentences of a call are split into batches of at most `max_tokens` source tokens, and
    the workers search them at the same time. A `lightning_nmt.backends.Backend`.
    """

    backend = "ctranslate2"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", compute_type: str = "default",
                 threads: int = 0, intra_threads: int = 1, max_tokens: int | None = None,
                 seed: int | None = None) -> None:
        try:
            import ctranslate2
        except ImportError:
            raise ConfigError("the CTranslate2 backend needs ctranslate2: pip install -e '.[serve]'") from None
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        try:
            self.tokenizer = Tokenizer.load(self.path)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{self.path}: the tokenizer cannot be loaded: {err}") from None
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
        max_tokens = BATCH_TOKENS.get(device, BATCH_TOKENS["cpu"]) if max_tokens is None else max_tokens
        if threads < 0 or intra_threads < 1 or max_tokens < 1:
            raise ConfigError(f"need threads >= 0, intra_threads >= 1 and max_tokens >= 1, got threads={threads}, "
                              f"intra_threads={intra_threads}, max_tokens={max_tokens}")
        self.workers = 1 if device != "cpu" else max(1, (threads or available_cores()) // intra_threads)
        self.seed = seed
        if seed is not None:  # per thread, seeded on its first draw: one worker, one stream
            ctranslate2.set_random_seed(seed)
            self.workers, intra_threads = 1, max(intra_threads, threads or available_cores())
        try:
            self.translator = ctranslate2.Translator(str(self.path), device=device, compute_type=compute_type,
                                                     intra_threads=intra_threads, inter_threads=self.workers)
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.path}: CTranslate2 cannot load the model: {first}") from None
        self.decoding = DecodingConfig.from_dict(self.metadata["decoding"])
        self.name, self.model_type = self.path.name, str(self.metadata.get("model_type", "transformer"))
        self.device = device
        self.max_tokens = max_tokens
        self._data_max_len = self.metadata.get("max_input_len")
        tok = self.tokenizer
        self._src_pieces = tok.src_pieces_from_ids(range(tok.src_vocab_size))
        self._tgt_pieces = tok.tgt_pieces_from_ids(range(tok.tgt_vocab_size))
        self._tgt_ids = {piece: i for i, piece in enumerate(self._tgt_pieces)}
        self._boundaries = segments.boundary_ids(self._src_pieces)
        self._src_eos = self._src_pieces[EOS_ID]
        self._suppress = [[self._tgt_pieces[PAD_ID]], [self._tgt_pieces[BOS_ID]]]

    per_request_seed = False  # see the module docstring

    @property
    def parallel_calls(self) -> int:
        """`translate_batch` calls that may run at once: one per worker (CTranslate2 takes calls from several
        threads)."""
        return self.workers

    def count_pieces(self, line: str) -> int:
        """Source pieces of `line`, `</s>` included."""
        return len(self.tokenizer.encode_src([line])[0]) + 1

    @property
    def training_data(self) -> dict:
        """The `data:` config of the exported checkpoint's training."""
        return self.metadata.get("data") or {}

    @property
    def max_input_len(self) -> int | None:
        """Longest source (pieces, EOS included) translated in one piece: `decoding.max_input_len`, else the
        training `data.max_len` (as `TranslationModule.max_input_len`); None: no bound."""
        return self.decoding.max_input_len or self._data_max_len

    # ---- translation -------------------------------------------------------------------------------------------
    def check(self, decoding: DecodingConfig) -> None:
        """`ConfigError` naming the option of `decoding` this backend cannot run (see the module docstring)."""
        try:
            decoding.check()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if decoding.strategy not in ("beam", "greedy", "sampling"):
            raise ConfigError(f"strategy={decoding.strategy} does not run on the ctranslate2 backend (it has beam, "
                              "greedy and sampling); serve a checkpoint (the PyTorch backend) for it")
        if decoding.strategy == "sampling" and decoding.options.epsilon:
            raise ConfigError("epsilon does not run on the ctranslate2 backend (CTranslate2 has top_k, top_p and "
                              "temperature); serve a checkpoint (the PyTorch backend) for epsilon sampling")
        if decoding.seed is not None and decoding.seed != self.seed:
            raise ConfigError(f"seed={decoding.seed} does not run on the ctranslate2 backend, which seeds its "
                              "random numbers once per process, when the model is loaded"
                              + (f" (here with seed={self.seed})" if self.seed is not None else "")
                              + "; a per-request seed needs a checkpoint (the PyTorch backend)")

    def translate_batch(self, lines: Sequence[str], decoding: DecodingConfig | None = None,
                        **overrides: Any) -> list[list[Hypothesis]]:
        """The `decoding.nbest` best translations of each line, best first (`decoding`: None for the checkpoint's; flat
        keys `overrides` over it). Empty or whitespace-only lines: one empty translation with score 0, the model is not
        run."""
        decoding = decoding or self.decoding
        if overrides:
            decoding = decoding_overrides(decoding, **overrides)
        self.check(decoding)
        results: list[list[Hypothesis]] = [[Hypothesis("", 0.0, [], [], None)] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        if not todo:
            return results
        encoded = [[*ids, EOS_ID] for ids in self.tokenizer.encode_src([lines[i] for i in todo])]
        lengths = torch.tensor([len(ids) for ids in encoded])
        src = torch.full((len(encoded), int(lengths.max())), PAD_ID, dtype=torch.long)
        for row, ids in enumerate(encoded):
            src[row, : len(ids)] = torch.tensor(ids)

        def search(rows: torch.Tensor, row_lengths: torch.Tensor) -> SearchResult:
            return self._search([r[:n] for r, n in zip(rows.tolist(), row_lengths.tolist(), strict=True)], decoding)

        limit = decoding.max_input_len or self._data_max_len
        found = segments.bounded(search, src, lengths, limit, self._boundaries)
        texts = self.tokenizer.decode_tgt([ids for hyps in found.tokens for ids in hyps])
        position = 0
        for row, line_index in enumerate(todo):
            src_pieces = self.tokenizer.src_pieces_from_ids(encoded[row])
            hyps = []
            for j, ids in enumerate(found.tokens[row]):
                weights = rounded(found.attention[row][j]) if decoding.attention and found.attention else None
                hyps.append(Hypothesis(texts[position], float(found.scores[row, j]), src_pieces,
                                       self.tokenizer.tgt_pieces_from_ids(ids), weights))
                position += 1
            results[line_index] = hyps
        return results

    def translate(self, lines: Sequence[str], decoding: DecodingConfig | None = None) -> list[str]:
        """The best translation of each line."""
        return [hyps[0].tgt for hyps in self.translate_batch(lines, decoding)]

    def _search(self, sources: list[list[int]], decoding: DecodingConfig) -> SearchResult:
        """Search sources (ids, EOS included) as `lightning_nmt.search.search` does: the nbest best of each, in a
        SearchResult (scores GNMT-normalised, attention (T + 1, S) tensors or None)."""
        k = 1 if decoding.strategy != "beam" else decoding.beam_size
        nbest, attention = decoding.nbest, decoding.attention
        lengths = torch.tensor([len(ids) for ids in sources], dtype=torch.long)
        max_lens = max_lengths(lengths, decoding.max_len_ratio, decoding.max_len_offset)
        limits = list(zip(max_lens.tolist(), min_lengths(lengths, decoding.min_len_ratio, max_lens).tolist(),
                          strict=True))
        pieces = [[*self.tokenizer.src_pieces_from_ids(ids[:-1]), self._src_eos] for ids in sources]
        if decoding.strategy == "sampling":
            return self._sample(sources, pieces, limits, decoding)
        penalties = self._penalties(decoding)
        found = self._run(range(len(sources)), pieces, limits, k, nbest, attention, False, decoding, penalties)
        # PAD and BOS are searched unmasked (CTranslate2 masks before its log-softmax: the log-probabilities would
        # no longer be ours); a sentence whose hypotheses contain one is searched again with them masked
        again = [i for i, hyps in enumerate(found) if any(PAD_ID in h.ids or BOS_ID in h.ids for h in hyps)]
        if again:
            for i, hyps in zip(again, self._run(again, pieces, limits, k, nbest, attention, True, decoding,
                                                penalties), strict=True):
                found[i] = hyps
        self._complete(pieces, found, attention)
        return self._ranked(sources, found, decoding)

    def _ranked(self, sources: list[list[int]], found: list[list[_Found]], decoding: DecodingConfig) -> SearchResult:
        """The nbest best of each source's hypotheses by our score (GNMT-normalised), in a SearchResult; a sampled
        source may have fewer (fewer distinct draws), a searched one has nbest (the best repeated only when nothing
        but EOS fitted: max_len 1)."""
        nbest, alpha = decoding.nbest, decoding.length_penalty
        tokens, scores, weights = [], [], []
        for i, hyps in enumerate(found):
            ranked = sorted(hyps, key=lambda h: h.raw / length_penalty(len(h.ids) + 1, alpha), reverse=True)[:nbest]
            if decoding.strategy != "sampling":
                ranked += [ranked[0]] * (nbest - len(ranked))
            tokens.append([h.ids for h in ranked])
            scores.append([h.raw / length_penalty(len(h.ids) + 1, alpha) for h in ranked]
                          + [float("-inf")] * (nbest - len(ranked)))
            if decoding.attention:
                n_src = len(sources[i])
                weights.append([torch.tensor(h.attention, dtype=torch.float32).reshape(-1, n_src) for h in ranked])
        return SearchResult(tokens, torch.tensor(scores, dtype=torch.float32), weights if decoding.attention else None)

    @staticmethod
    def _penalties(decoding: DecodingConfig) -> dict[str, Any]:
        """The penalties of `decoding` as CTranslate2's options."""
        return {"no_repeat_ngram_size": decoding.no_repeat_ngram_size,
                "repetition_penalty": decoding.repetition_penalty}

    def _sample(self, sources: list[list[int]], pieces: list[list[str]], limits: list[tuple[int, int]],
                decoding: DecodingConfig) -> SearchResult:
        """`decoding.nbest` distinct draws of each source, in one call per (max_len, min_len) per round, best first.
        PAD and BOS are masked from the start (the sampled distribution is ours; the scores are rescored)."""
        options, n, attention = decoding.options, decoding.nbest, decoding.attention
        draws = 1 if options.top_k == 1 else n  # CTranslate2 samples top_k=1 with its argmax, one hypothesis
        sampling = {"sampling_topk": options.top_k, "sampling_topp": options.top_p,
                    "sampling_temperature": options.temperature, **self._penalties(decoding)}
        # only EOS fits: nothing to draw, the forced EOS is added by `_complete`
        found = [[_Found([], None, False, [] if attention else None)] if limits[i][0] - 1 < 1 else []
                 for i in range(len(sources))]
        for _ in range(ROUNDS):
            needy = [i for i, hyps in enumerate(found) if len(hyps) < n and limits[i][0] > 1]
            if not needy:
                break
            groups: dict[tuple[int, int], list[int]] = {}
            for i in needy:
                groups.setdefault(limits[i], []).append(i)
            drawn: dict[int, list[_Found]] = {}
            self._collect([(group, max_len, min_len) for (max_len, min_len), group in groups.items()], pieces, limits,
                          1, draws, attention, True, False, drawn, sampling)
            for i, hyps in drawn.items():
                seen = {tuple(h.ids) for h in found[i]}
                for hyp in hyps:
                    if tuple(hyp.ids) not in seen and len(seen) < n:
                        seen.add(tuple(hyp.ids))
                        found[i].append(hyp)
            if draws == 1 and n > 1:
                break
        self._complete(pieces, found, attention)
        return self._ranked(sources, found, decoding)

    def _run(self, members: Sequence[int], pieces: list[list[str]], limits: list[tuple[int, int]], k: int,
             nbest: int, attention: bool, suppress: bool, decoding: DecodingConfig,
             penalties: dict[str, Any]) -> list[list[_Found]]:
        """Search sources `members` (their pieces, EOS included) under their length limits (max_len, min_len): the
        finished hypotheses of each. Their scores are CTranslate2's, ours unless some token was masked before its
        log-softmax (`suppress`, or EOS before min_len): then raw=None, rescored later.

        CTranslate2 takes one `max_decoding_length` per call. The sources of one min_len are cut into batches of
        similar lengths, longest first, each searched in one call under the largest max_len in it; a source whose
        search ended before its own last free step has what a search under its own max_len gives (the same steps:
        each returned hypothesis ended, so did the search), the others are searched again in one call per limits.
        With `beam_stop=best_finished` a search ends when its best hypothesis does, which under a larger limit can
        be later and return others: the sources share calls only with sources of the same limits."""
        early_exit = decoding.strategy == "beam" and decoding.options.beam_stop == BeamStop.best_finished and k > 1
        found: dict[int, list[_Found]] = {}
        for i in members:
            if limits[i][0] - 1 < 1:  # only EOS fits: nothing to search, the forced EOS is added by `_complete`
                found[i] = [_Found([], None, False, [] if attention else None)]
        todo = [i for i in members if i not in found]
        shared: dict[tuple[int, int] | int, list[int]] = {}
        for i in todo:
            shared.setdefault(limits[i] if early_exit else limits[i][1], []).append(i)
        calls = [(batch, max(limits[i][0] for i in batch), limits[batch[0]][1])
                 for group in shared.values() for batch in self._batches(group, pieces)]
        self._collect(calls, pieces, limits, k, nbest, attention, suppress, early_exit, found, penalties)
        again: dict[tuple[int, int], list[int]] = {}
        for group, max_len, _ in calls:
            for i in group:
                own = limits[i][0]
                if own < max_len and not all(h.ended and len(h.ids) + 1 < own - 1 for h in found[i]):
                    again.setdefault(limits[i], []).append(i)
        self._collect([(group, max_len, min_len) for (max_len, min_len), group in
                       sorted(again.items(), key=lambda item: -item[0][0])],
                      pieces, limits, k, nbest, attention, suppress, early_exit, found, penalties)
        if attention and k > 1 and len(todo) > 1:
            self._fix_first_rows(todo, pieces, found)
        return [found[i] for i in members]

    def _collect(self, calls: list[tuple[list[int], int, int]], pieces: list[list[str]],
                 limits: list[tuple[int, int]], k: int, nbest: int, attention: bool, suppress: bool,
                 early_exit: bool, found: dict[int, list[_Found]], options: dict[str, Any]) -> None:
        """One CTranslate2 call per (sources, max_len, min_len) of `calls`, all submitted before the first result is
        read (the workers search them side by side); the hypotheses of each source go to `found`. `early_exit`:
        CTranslate2's (`beam_stop=best_finished`); `options`: more of CTranslate2's (penalties, sampling)."""
        # at most max_len - 1 free steps: a hypothesis still running after them gets the forced EOS
        pending = [(group, self.translator.translate_batch(
            [pieces[i] for i in group], beam_size=k, num_hypotheses=nbest if early_exit or k == 1 else k,
            length_penalty=0.0 if early_exit else RAW_LENGTH_PENALTY, return_scores=True, return_end_token=True,
            return_attention=attention, max_input_length=0, max_decoding_length=max_len - 1,
            min_decoding_length=max(min_len - 1, 0), suppress_sequences=self._suppress if suppress else None,
            max_batch_size=self.max_tokens, batch_type="tokens", asynchronous=True, **options))
            for group, max_len, min_len in calls]
        for group, futures in pending:
            for i, future in zip(group, futures, strict=True):
                masked = suppress or limits[i][1] > 1  # renormalised log-probabilities: rescored
                result = future.result()
                hyps = found[i] = []
                for n, (tokens, score) in enumerate(zip(result.hypotheses, result.scores, strict=True)):
                    ids = [self._tgt_ids[t] for t in tokens]
                    weights = [list(row) for row in result.attention[n]] if attention else None
                    ended = bool(ids) and ids[-1] == EOS_ID
                    # stopped at the limit without EOS: completed by `_complete`
                    hyps.append(_Found(ids[:-1] if ended else ids, None if masked or not ended else float(score),
                                       ended, weights))

    def _batches(self, group: list[int], pieces: list[list[str]]) -> list[list[int]]:
        """`group` by source length, longest first (the workers finish together), in batches of at most
        `max_tokens` source tokens (padded), small enough to give every worker one."""
        order = sorted(group, key=lambda i: -len(pieces[i]))
        size = max(1, min(self.max_tokens, -(-sum(len(pieces[i]) for i in order) // self.workers)))
        batches: list[list[int]] = []
        for i in order:
            if batches and (len(batches[-1]) + 1) * len(pieces[batches[-1][0]]) <= size:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def _fix_first_rows(self, members: Sequence[int], pieces: list[list[str]], found: dict[int, list[_Found]]) -> None:
        """CTranslate2 4.8's beam search on the CPU returns, with several sentences per batch, the first step's
        attention row of another sentence (its first step runs unexpanded, and the row is gathered as if expanded).
        That row (BOS read) is the same for every hypothesis of a sentence: it is recomputed by one greedy step."""
        first = self.translator.translate_batch([pieces[i] for i in members], beam_size=1, max_decoding_length=1,
                                                min_decoding_length=0, return_attention=True, return_end_token=True,
                                                max_input_length=0, max_batch_size=self.max_tokens, batch_type="tokens")
        for i, result in zip(members, first, strict=True):
            for hyp in found[i]:
                if hyp.attention:
                    hyp.attention[0] = list(result.attention[0][0])

    def _complete(self, pieces: list[list[str]], found: list[list[_Found]], attention: bool) -> None:
        """Score with `score_batch` the hypotheses without a score of ours (raw=None): those stopped at the length
        limit, which get the forced EOS as in our search (its log-probability added, its attention row computed), and
        those searched with masked tokens."""
        todo = [(i, h) for i, hyps in enumerate(found) for h in hyps if h.raw is None]
        if not todo:
            return
        scored = self.translator.score_batch([pieces[i] for i, _ in todo],
                                             [self._tgt_strings(h.ids) for _, h in todo], max_input_length=0,
                                             max_batch_size=self.max_tokens, batch_type="tokens")
        for (_, hyp), result in zip(todo, scored, strict=True):
            hyp.raw = float(sum(result.log_probs))  # every piece and EOS, over the whole vocabulary: ours
        todo = [(i, h) for i, h in todo if not h.ended]
        if not attention or not todo:
            return
        # one step after the hypothesis, given as a forced prefix: its attention row is the EOS row (the translator
        # counts the prefix in max_decoding_length)
        steps = self.translator.translate_batch(
            [pieces[i] for i, _ in todo], target_prefix=[self._tgt_strings(h.ids) for _, h in todo], beam_size=1,
            max_decoding_length=max(len(h.ids) for _, h in todo) + 1, min_decoding_length=0, return_attention=True,
            return_end_token=True, max_input_length=0)
        for (_, hyp), result in zip(todo, steps, strict=True):
            hyp.attention = [*(hyp.attention or []), list(result.attention[0][len(hyp.ids)])]

    def _tgt_strings(self, ids: Sequence[int]) -> list[str]:
        return [self._tgt_pieces[i] for i in ids]

    # ---- scoring -----------------------------------------------------------------------------------------------
    def score(self, src_lines: Sequence[str], tgt_lines: Sequence[str]) -> list[list[float]]:
        """Teacher-forced log-probability of each target piece and of the final EOS, per pair (the model reads the
        whole source: no segments, nothing truncated)."""
        if len(src_lines) != len(tgt_lines):
            raise ConfigError(f"score needs as many targets as sources, got {len(src_lines)} and {len(tgt_lines)}")
        if not src_lines:
            return []
        tok = self.tokenizer
        sources = [[*tok.src_pieces_from_ids(ids), self._src_eos] for ids in tok.encode_src(list(src_lines))]
        targets = [self._tgt_strings(ids) for ids in tok.encode_tgt(list(tgt_lines))]
        results = self.translator.score_batch(sources, targets, max_input_length=0, max_batch_size=self.max_tokens,
                                              batch_type="tokens")
        return [list(result.log_probs) for result in results]
