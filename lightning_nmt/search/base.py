"""What every search strategy shares: the one decoding object (`DecodingConfig`), the strategy registry, the length
rules and the GNMT length penalty (used by both backends), and the step that turns a decoder step into the
log-probabilities a strategy chooses from.

Rules every strategy follows:
- at most ceil(src_len * max_len_ratio) + max_len_offset output tokens (EOS included) per sentence;
  at the last allowed step EOS is forced, so every hypothesis ends with EOS;
- at least min(ceil(src_len * min_len_ratio), maximum) tokens: EOS is impossible before;
- PAD and BOS are never produced;
- the penalties change the logits before the log-softmax: `repetition_penalty` r divides the positive logits of
  the tokens the hypothesis already holds by r and multiplies their negative ones by r (CTRL, Keskar et al. 2019);
  `no_repeat_ngram_size` n makes impossible every token that would repeat an n-gram of the hypothesis;
- score = sum of the chosen tokens' log-probabilities (EOS included, penalties included: what the search ranked
  by) / ((5 + len) / 6) ** length_penalty (GNMT length penalty; len counts EOS; length_penalty=0: the plain sum).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from lightning_nmt.models.base import DecoderState, EncoderOutput, Seq2Seq
from lightning_nmt.registry import register_in
from lightning_nmt.tokens import BOS_ID, EOS_ID, PAD_ID

TopK = Callable[[Tensor, int], tuple[Tensor, Tensor]]
"""x (R, V), k -> the k largest values of each row and their columns, (R, k) each, largest first."""


def row_topk(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`torch.topk` over each row of x (R, V): the `TopK` a search uses unless given another."""
    return x.topk(k, dim=1)


@dataclass(frozen=True)
class SearchOptions(ABC):
    """The keys one strategy reads besides the common ones: subclasses declare them as fields with defaults (the
    values live in `conf/decoding/<name>.yaml`), implement `run`, and register with `register_search`."""

    name: ClassVar[str]

    def check(self, decoding: DecodingConfig) -> None:  # noqa: B027 (most strategies have no rule of their own)
        """ValueError naming the key of a value this strategy cannot run with, or of a common key it contradicts."""

    def max_nbest(self, decoding: DecodingConfig) -> int | None:
        """The most hypotheses a sentence can get (None: no bound of the strategy's own)."""
        return decoding.beam_size

    @abstractmethod
    def run(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig,
            topk: TopK) -> SearchResult:
        """The `decoding.nbest` best hypotheses of each sentence of src (B, S), src_lengths (B,), best first; the
        model is in eval mode, gradients are off. `topk`: each row's k largest values (the CPU kernels' or torch's)."""


SEARCHES: dict[str, type[SearchOptions]] = {}
"""Strategy name (`decoding.strategy`, `strategy=` on the command lines) -> its options."""

Strategy = TypeVar("Strategy", bound=type[SearchOptions])


def register_search(name: str) -> Callable[[Strategy], Strategy]:
    """Class decorator: `decoding.strategy=name` searches with these options. A name registered twice is an error."""

    def register(cls: Strategy) -> Strategy:
        cls.name = name
        return register_in(SEARCHES, name, "search strategy")(cls)

    return register


@dataclass(frozen=True)
class DecodingConfig:
    """How to decode, one object from the config, the command line or a request down to the search (frozen: a
    per-call change is a new object, `replace(decoding, beam_size=1)`; hashable: the server batches by it).

    `options` holds the strategy's own keys (`SearchOptions`); `strategy` is its registered name. `nbest` and
    `attention` say what comes back; `seed` fixes sampling (None: drawn from torch's global generator)."""

    beam_size: int = 5  # test / eval / translate; 1 is greedy
    nbest: int = 1
    attention: bool = False  # return attention weights
    length_penalty: float = 1.0  # GNMT alpha; 0: the plain sum of log-probabilities
    max_len_ratio: float = 1.5  # at most ceil(src_len * ratio) + offset output tokens, EOS included
    max_len_offset: int = 5
    min_len_ratio: float = 0.0  # EOS not before ceil(src_len * min_len_ratio) output tokens (capped at the maximum)
    no_repeat_ngram_size: int = 0  # n > 0: no n-gram twice in a hypothesis
    repetition_penalty: float = 1.0  # > 1 discourages tokens the hypothesis holds (CTRL); 1: off
    seed: int | None = None
    max_input_len: int | None = None  # longer sources are translated in segments; None: the training data.max_len
    val_beam_size: int = 1  # validation during training (greedy is fast)
    options: SearchOptions = field(default_factory=lambda: SEARCHES["beam"]())

    @property
    def strategy(self) -> str:
        return self.options.name

    def check(self) -> None:
        """ValueError naming the `decoding.*` key of a value no search can use, or of options that contradict each
        other. The one check of a decoding object, wherever it comes from."""
        for key in ("beam_size", "val_beam_size", "nbest"):
            if getattr(self, key) < 1:
                raise ValueError(f"decoding.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("max_len_ratio", "max_len_offset", "min_len_ratio", "no_repeat_ngram_size"):
            if getattr(self, key) < 0:
                raise ValueError(f"decoding.{key} must not be negative, got {getattr(self, key)}")
        if self.max_len_ratio == 0 and self.max_len_offset == 0:
            raise ValueError("decoding.max_len_ratio and decoding.max_len_offset are both 0: no output token fits")
        if not self.repetition_penalty > 0:
            raise ValueError(f"decoding.repetition_penalty must be positive (1: off), got {self.repetition_penalty}")
        if self.max_input_len is not None and self.max_input_len < 1:
            raise ValueError(f"decoding.max_input_len must be at least 1 (or null), got {self.max_input_len}")
        limit = self.options.max_nbest(self)
        if limit is not None and self.nbest > limit:
            raise ValueError(f"decoding.nbest={self.nbest} is more than strategy {self.strategy} gives "
                             f"(at most {limit}{' = beam_size' if limit == self.beam_size else ''})")
        self.options.check(self)

    # ---- flat dicts: the config group, the command lines, a request, a checkpoint -------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat form: the common keys, `strategy` and the strategy's own keys."""
        common = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        return {**common, "strategy": self.strategy, **asdict(self.options)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: DecodingConfig | None = None) -> DecodingConfig:
        """From a flat mapping (a config, a checkpoint's `decoding`, a request), over `base` (default: the
        defaults). None values keep the base's; keys of older versions are ignored. A key of another strategy than
        the one chosen (`top_k` with beam search) is a ValueError naming both."""
        base = base or cls()
        values = {key: value for key, value in values.items() if value is not None}
        strategy = str(values.pop("strategy", base.strategy))
        if strategy not in SEARCHES:
            raise ValueError(f"unknown decoding.strategy {strategy!r}; registered: {', '.join(SEARCHES)}")
        options_cls = SEARCHES[strategy]
        own = {f.name for f in fields(options_cls)}
        for key in values:
            owners = [name for name, other in SEARCHES.items() if key in {f.name for f in fields(other)}]
            if owners and key not in own:
                raise ValueError(f"decoding.{key} is an option of strategy {' or '.join(owners)}, not of "
                                 f"{strategy} (set strategy={owners[0]})")
        kept = asdict(base.options) if strategy == base.strategy else {}
        options = options_cls(**{**kept, **{key: values[key] for key in own if key in values}})
        common = {f.name for f in fields(cls)} - {"options"}
        return replace(base, options=options, **{key: values[key] for key in common if key in values})

    def with_overrides(self, **given: Any) -> DecodingConfig:
        """This object with the flat keys `given` (None: keep), checked."""
        decoding = DecodingConfig.from_dict(given, self)
        decoding.check()
        return decoding


@dataclass
class SearchResult:
    """tokens: [batch][n] ids without BOS/EOS/PAD, best first (n = nbest, or fewer for a sampled sentence that has
    fewer distinct draws).
    scores: (B, nbest) length-normalised log-probabilities, best first (on the model's device; -inf where a sentence
    has fewer than nbest hypotheses).
    attention: [batch][n] weights (T_out, S_real) on the CPU, one row per output token and one
    for EOS (T_out = len(tokens) + 1), one column per real source token; None if the model has none.
    """

    tokens: list[list[list[int]]]
    scores: Tensor
    attention: list[list[Tensor]] | None


# ---- the length rules and the length penalty: both backends ----------------------------------------------------

def max_lengths(src_lengths: Tensor, ratio: float, offset: int) -> Tensor:
    """Maximum output length (EOS included) of each sentence: ceil(src_len * ratio) + offset, (B,) (float32
    products, rounded up)."""
    return torch.ceil(src_lengths.float() * ratio).long() + offset


def min_lengths(src_lengths: Tensor, ratio: float, max_len: Tensor) -> Tensor:
    """Minimum output length (EOS included) of each sentence: ceil(src_len * ratio), at most max_len, (B,)."""
    return torch.minimum(max_lengths(src_lengths, ratio, 0), max_len)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha; a hypothesis's score is its log-probability divided by it."""
    return ((5 + length) / 6) ** alpha


# ---- one decoder step ------------------------------------------------------------------------------------------

def penalize(logits: Tensor, prefix: Tensor, decoding: DecodingConfig) -> Tensor:
    """logits (R, V) of the next token after prefix (R, t) (the output so far, BOS excluded) with the repetition
    penalty and n-gram blocking of `decoding` applied (the same tensor when both are off)."""
    if prefix.size(1) == 0:
        return logits
    if decoding.repetition_penalty != 1.0:
        held = logits.gather(1, prefix)
        logits = logits.scatter(1, prefix, torch.where(held > 0, held / decoding.repetition_penalty,
                                                       held * decoding.repetition_penalty))
    n = decoding.no_repeat_ngram_size
    if n and prefix.size(1) >= n:  # an n-gram to repeat needs n tokens
        if n == 1:
            return logits.scatter(1, prefix, float("-inf"))
        windows = prefix.unfold(1, n, 1)  # (R, t - n + 1, n): every n-gram of the prefix
        ongoing = prefix[:, prefix.size(1) - (n - 1):].unsqueeze(1)  # (R, 1, n - 1): the last n - 1 tokens
        repeats = (windows[:, :, :-1] == ongoing).all(dim=2)  # (R, W): n-grams the next token would repeat
        if bool(repeats.any()):
            rows, starts = repeats.nonzero(as_tuple=True)
            logits = logits.index_put((rows, windows[rows, starts, -1]), torch.tensor(float("-inf"),
                                                                                      dtype=logits.dtype))
    return logits


def step_log_probs(model: Seq2Seq, tokens: Tensor, enc: EncoderOutput, state: DecoderState, prefix: Tensor,
                   last: Tensor, short: Tensor, decoding: DecodingConfig) -> tuple[Tensor, DecoderState, Tensor | None]:
    """One decoder step: tokens (R,) -> log-probabilities (R, V) (penalties applied, see `penalize`; PAD and BOS
    impossible, only EOS where `last` (R,) is True, no EOS where `short` (R,) is True), new state, attention weights
    (R, S) or None."""
    logits, state, weights = model.decode_step(tokens, enc, state)
    log_probs = penalize(logits.float(), prefix, decoding).log_softmax(dim=-1)
    log_probs[:, [PAD_ID, BOS_ID]] = float("-inf")
    if bool(short.any()):
        log_probs[short, EOS_ID] = float("-inf")
    if bool(last.any()):  # rows at their length limit may only end (most steps have none: (R, V) untouched)
        eos = log_probs[last, EOS_ID]
        log_probs[last] = float("-inf")
        log_probs[last, EOS_ID] = eos
    return log_probs, state, weights


# ---- hypotheses ------------------------------------------------------------------------------------------------

@dataclass
class Prefixes:
    """The output so far of each row: tokens (R, t) (BOS excluded), attention (R, t, S) or None."""

    tokens: Tensor
    attention: Tensor | None = None

    def grow(self, rows: Tensor, words: Tensor, weights: Tensor | None) -> Prefixes:
        """Prefixes `rows` (N,) extended by words (N,) and the rows' weights of this step (R, S)."""
        tokens = torch.cat([self.tokens[rows], words.unsqueeze(1)], dim=1)
        if weights is None:
            return Prefixes(tokens)
        attention = weights[rows].float().unsqueeze(1)  # fp32 whatever the model computes in
        if self.attention is not None:
            attention = torch.cat([self.attention[rows], attention], dim=1)
        return Prefixes(tokens, attention)


class Finished:
    """Finished hypotheses of every sentence, `slots` per sentence, up to `max_len` tokens."""

    def __init__(self, batch: int, slots: int, max_len: int, device: torch.device) -> None:
        self.tokens = torch.full((batch, slots, max_len), PAD_ID, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch, slots, dtype=torch.long, device=device)
        self.scores = torch.full((batch, slots), float("-inf"), dtype=torch.float32, device=device)
        self.attention: Tensor | None = None
        self.count = torch.zeros(batch, dtype=torch.long, device=device)

    def add(self, sentences: Tensor, hyps: Prefixes, scores: Tensor) -> None:
        """Store hypotheses hyps (N, t) with scores (N,) of sentences (N,), sorted ascending."""
        rank = torch.arange(len(sentences), device=sentences.device) - torch.searchsorted(sentences, sentences)
        slot = self.count[sentences] + rank
        length = hyps.tokens.size(1)
        self.tokens[sentences, slot, :length] = hyps.tokens
        self.lengths[sentences, slot] = length
        self.scores[sentences, slot] = scores
        if hyps.attention is not None:
            if self.attention is None:
                self.attention = hyps.attention.new_zeros(*self.tokens.shape, hyps.attention.size(2))
            self.attention[sentences, slot, :length] = hyps.attention
        self.count.index_add_(0, sentences, torch.ones_like(sentences))

    def result(self, nbest: int, src_lengths: Tensor) -> SearchResult:
        """The nbest best hypotheses of every sentence."""
        scores, best = self.scores.topk(nbest, dim=1)
        rows = torch.arange(len(best), device=best.device).unsqueeze(1)
        lengths = self.lengths[rows, best].tolist()
        tokens = [
            [hyp[: n - 1] for hyp, n in zip(hyps, lens, strict=True)]
            for hyps, lens in zip(self.tokens[rows, best].tolist(), lengths, strict=True)
        ]
        if self.attention is None:
            return SearchResult(tokens, scores, None)
        attention = self.attention[rows, best].cpu()
        return SearchResult(
            tokens,
            scores,
            [
                [att[:n, :src_len] for att, n in zip(atts, lens, strict=True)]
                for atts, lens, src_len in zip(attention, lengths, src_lengths.tolist(), strict=True)
            ],
        )
