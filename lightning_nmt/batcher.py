"""The batching of `lnmt-serve`: concurrent requests' sentences wait in one queue, and a single worker task, when the
model can take a call (`Backend.parallel_calls` at once), takes the oldest sentence's group (its request's
`DecodingConfig`: one batch has one), waits up to `max_wait_ms` for more of it (less when the model was busy: the
wait counts from the oldest sentence's arrival) up to `max_batch_tokens` padded source pieces, and runs the model on
them in a thread of its own; each request gets its own results back in its order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lightning_nmt.backend_api import Backend, Hypothesis
from lightning_nmt.search import DecodingConfig

log = logging.getLogger("lightning_nmt.serve")

class TranslationFailed(Exception):
    """The model call of a batch raised: a 500 for the requests in it."""


@dataclass
class _Job:
    """One request: its sentences' results, filled in as their batches finish."""

    future: asyncio.Future
    results: list[list[Hypothesis] | None]
    left: int


@dataclass
class _Item:
    """One sentence of a request, waiting for a batch."""

    line: str
    pieces: int
    key: DecodingConfig  # one batch has one
    job: _Job
    index: int
    arrived: float


class Stats:
    """What `lnmt-serve` counts, once, in a Prometheus registry of its own: `GET /metrics` exposes it as it is and
    `GET /stats` reads the same samples."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.responses = Counter("lnmt_http_responses", "HTTP responses, by route and status", ["route", "status"],
                                 registry=r)
        self.latency = Histogram("lnmt_http_request_seconds", "Time from a request's headers to its answer, by route",
                                 ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_sentences = Histogram("lnmt_batch_sentences", "Sentences per model call", registry=r,
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.sentences = Counter("lnmt_sentences", "Sentences translated", registry=r)
        self.pieces = Counter("lnmt_source_pieces", "Source pieces translated", registry=r)
        self.failed = Counter("lnmt_failed_batches", "Model calls that raised", registry=r)
        self.model_seconds = Counter("lnmt_model_seconds", "Seconds in model calls, summed over the calls", registry=r)
        self.queued = Gauge("lnmt_queue_sentences", "Sentences waiting for a batch", registry=r)
        self.in_model = Gauge("lnmt_in_model_sentences", "Sentences in a model call now", registry=r)
        self.largest_batch = 0
        self.started = time.time()

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def total(self, name: str, keep: Callable[[dict[str, str]], bool]) -> float:
        """The sum of the samples `name` whose labels `keep` accepts."""
        return sum(sample.value for metric in self.registry.collect() for sample in metric.samples
                   if sample.name == name and keep(sample.labels))


class Batcher:
    """The queue of sentences and the one worker that batches them (see the module docstring)."""

    def __init__(self, backend: Backend, max_batch_tokens: int, max_wait_ms: float) -> None:
        self.backend = backend
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.pending: deque[_Item] = deque()
        self.stats = Stats()
        self.closing = False
        self.busy = 0  # sentences in the model now
        self.stats.queued.set_function(lambda: sum(not item.job.future.done() for item in self.pending))
        self.stats.in_model.set_function(lambda: self.busy)
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task | None = None
        self._calls = max(1, backend.parallel_calls)
        self._slots: asyncio.Semaphore | None = None  # model calls that may start now
        self._running: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=self._calls, thread_name_prefix="lnmt-model")

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self._calls)
        self._loop = asyncio.get_running_loop()
        self._worker = self._loop.create_task(self._run(), name="lnmt-batcher")

    def drain_soon(self) -> None:
        """From any thread (a signal handler): stop waiting for fuller batches, translate what is queued now, and
        refuse new requests (the server is shutting down)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self.closing = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def stop(self) -> None:
        """Translate what is queued, then end the worker and the model thread."""
        self.closing = True
        try:
            if self._worker is not None:
                self._wakeup.set()
                await self._worker
        finally:
            if self._running:
                await asyncio.wait(self._running)
            self._executor.shutdown(wait=True)

    async def translate(self, lines: Sequence[str], pieces: Sequence[int],
                        decoding: DecodingConfig) -> list[list[Hypothesis]]:
        """The hypotheses of each line, once the batches holding them have run."""
        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future(), [None] * len(lines), len(lines))
        now = loop.time()
        self.pending.extend(_Item(line, n, decoding, job, i, now) for i, (line, n) in enumerate(zip(lines, pieces)))
        self._wakeup.set()
        return await job.future

    def _cost(self, items: Sequence[_Item]) -> int:
        return len(items) * max((item.pieces for item in items), default=0)

    def _take(self, key: DecodingConfig, dry_run: bool = False) -> tuple[list[_Item], bool]:
        """The oldest items of `key` whose padded size fits --max-batch-tokens (one item at least), taken out of
        the queue unless `dry_run`; and whether the batch is full (an item of `key` is left that does not fit).
        Items of requests that ended (a client that went away, a failed batch) are dropped."""
        batch: list[_Item] = []
        widest, full = 0, False
        for item in self.pending:
            if item.key != key or item.job.future.done():
                continue
            wider = max(widest, item.pieces)
            if batch and (len(batch) + 1) * wider > self.max_batch_tokens:
                full = True
                break
            batch.append(item)
            widest = wider
        if not dry_run:
            taken = {id(item) for item in batch}
            self.pending = deque(item for item in self.pending
                                 if id(item) not in taken and not item.job.future.done())
        return batch, full or self._cost(batch) >= self.max_batch_tokens

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.pending and self.pending[0].job.future.done():
                self.pending.popleft()
            if not self.pending:
                if self.closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._slots.locked():  # every model call taken: wait for one to end (meanwhile more sentences come)
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self.pending[0]
            while not self.closing and not self._take(first.key, dry_run=True)[1]:
                remaining = first.arrived + self.max_wait - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch, _ = self._take(first.key)
            if not batch:  # the requests ended while waiting (a client that went away, a failed batch)
                continue
            await self._slots.acquire()
            task = loop.create_task(self._call(batch))
            self._running.add(task)

    async def _call(self, batch: list[_Item]) -> None:
        try:
            await self._run_batch(batch)
        except Exception as err:  # a bug here must not leave requests waiting for ever, nor stop the worker
            log.exception("the batching worker failed")
            for item in batch:
                if not item.job.future.done():
                    item.job.future.set_exception(TranslationFailed(f"{type(err).__name__}: {err}"))
        finally:
            self._slots.release()
            self._running.discard(asyncio.current_task())
            self._wakeup.set()

    async def _run_batch(self, batch: list[_Item]) -> None:
        if not batch:
            return
        decoding = batch[0].key
        lines = [item.line for item in batch]
        started = time.perf_counter()
        self.busy += len(batch)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.backend.translate_batch, lines, decoding)
            if len(results) != len(lines):
                raise RuntimeError(f"the backend returned {len(results)} results for {len(lines)} lines")
        except Exception as err:  # the server survives a failing batch; its requests get a 500
            log.exception("translating a batch of %d sentences failed", len(batch))
            self.stats.failed.inc()
            for item in batch:
                if not item.job.future.done():
                    item.job.future.set_exception(TranslationFailed(f"{type(err).__name__}: {err}"))
            return
        finally:
            self.busy -= len(batch)
        seconds = time.perf_counter() - started
        self.stats.batch_sentences.observe(len(batch))
        self.stats.sentences.inc(len(batch))
        self.stats.pieces.inc(sum(item.pieces for item in batch))
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.model_seconds.inc(seconds)
        log.debug("batch of %d sentences (%d padded pieces, %s, beam %d) in %.1f ms", len(batch), self._cost(batch),
                  decoding.strategy, decoding.beam_size, seconds * 1000)
        for item, hyps in zip(batch, results):
            job = item.job
            if job.future.done():
                continue
            job.results[item.index] = hyps
            job.left -= 1
            if job.left == 0:
                job.future.set_result(job.results)
