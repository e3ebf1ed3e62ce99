"""BM25 postings in memory, per process, kept current from the database's chunk log.

Large scopes (more visible chunks than `Bm25Params.exhaustive_scope`) are scored here instead of walking
postings in SQL: for each query term, its postings (chunk row, tf) are gathered from numpy arrays, every
matching chunk is scored exactly (the same arithmetic, in the same order, as `retrieval._score`, so the
scores are bit-identical to the exhaustive SQL plan's and the same on both databases), and the best are
checked for visibility per distinct source in SQL, widening until `k` are visible. The access rule is
thus still applied by the database on every query, inside the caller's transaction; only the postings
come from memory. A query costs about its terms' postings (~70,000 for a SciFact claim at 100,000
chunks) plus one indexed statement for the visibility of a few hundred sources.

The postings are a sorted base (terms, their posting ranges, chunk rows, tfs) plus a small delta of
chunks added since, merged into the base when it grows; chunks deleted are masked out until the merge.
Every insert and delete of a chunk, also by cascade, appends an entry to `rag_chunk_log` (triggers,
`vector_schema.chunk_log_ddl`). Before each query a process reads the log's newest entry and, if it
moved, the current state of the chunks logged past its watermark (idempotent). The entry at the
watermark must still carry the token read with it: an entry of a rolled-back transaction (whose id
SQLite reuses) or one pruned away makes the process load the chunks whole again, as does another
database instance (`rag_chunk_log_state.instance`). A database without the log (not migrated) is searched
by the SQL plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from privategpt.rag.store import RetrievalScope, _SqlStore, store_for
from privategpt.rag.vector_schema import CHUNK_LOG_PRUNE_EVERY

__all__ = ["SparseIndex", "current_index", "search"]

# A chunk's term vector records (see store.encode_terms).
RECORDS = np.dtype([("term", ">u4"), ("tf", ">u2")])
# The delta is merged into the base once it holds this many postings (or an eighth of the base).
_MERGE_AT = 200_000
# A process whose watermark is this far behind the log reloads rather than reading entries a prune may
# be deleting meanwhile.
_MAX_LAG = CHUNK_LOG_PRUNE_EVERY // 2
# Whether a database has the chunk log, per database: a positive answer is kept, a negative one
# re-checked after this many seconds (a migration may run meanwhile).
_NO_LOG_TTL_S = 10.0
# Scopes up to this share of the sources are listed (one row per source, ~3 ms for 1,000 of them) and
# the matching chunks of those kept; wider ones have their best candidates' sources checked instead.
LIST_SOURCES_SHARE = 0.2
# Candidates whose visibility the first round checks, per result asked for (and at least 2 k).
_FIRST_PER_K = 1.5

Rows = npt.NDArray[np.int32]
# Postings in row order: (term ids, rows, tfs).
Part = tuple[npt.NDArray[np.uint32], Rows, npt.NDArray[np.uint16]]
Postings = tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64], Rows, npt.NDArray[np.uint16]]
# Postings handled at once while a base is built (a few MB of temporaries).
_SLICE = 1 << 20
# Term ids are the vocabulary's dense row ids; counting needs an array entry per id up to the largest
# (8 bytes each, twice). Past this, the postings are sorted instead.
_MAX_COUNTED_TERM_ID = 1 << 22


def _sorted_by_term(parts: list[Part]) -> Postings:
    """Postings sorted by term id, rows ascending within a term (the parts are in row order): a stable sort
    of everything at once, which needs several full-size temporaries; `PostingsBuilder` does without."""
    terms = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.uint32)
    rows = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int32)
    tfs = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, dtype=np.uint16)
    parts.clear()
    order = np.argsort(terms, kind="stable")
    terms, rows, tfs = terms[order], rows[order], tfs[order]
    del order
    if not len(terms):
        return np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64), rows, tfs
    boundaries = np.flatnonzero(terms[1:] != terms[:-1]) + 1
    term_ids = terms[np.concatenate([[0], boundaries])]
    starts = np.concatenate([[0], boundaries, [len(terms)]]).astype(np.int64)
    return term_ids, starts, rows, tfs


class PostingsBuilder:
    """Sorts postings by term with a counting sort, part by part: `count` every part, `allocate`, `place`
    every part again in the same order, `finish`.

    The result is `_sorted_by_term`'s (rows ascending within a term when the parts come in row order),
    but the only full-size arrays are the result's own: each part is scattered straight into place, so
    loading 100,000 chunks (~11 million postings, 66 MB) peaks at the parts plus the result, where a global
    sort held about five times the result. `dense` turns False when a term id is too large to count by
    index; the caller then sorts (`_sorted_by_term`)."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)
        self.dense = True
        self._fill = np.zeros(0, dtype=np.int64)
        self._rows: Rows = np.zeros(0, dtype=np.int32)
        self._tfs: npt.NDArray[np.uint16] = np.zeros(0, dtype=np.uint16)

    def count(self, terms: npt.NDArray[np.uint32]) -> None:
        if not self.dense or not len(terms):
            return
        if int(terms.max()) >= _MAX_COUNTED_TERM_ID:
            self.dense = False
            self.counts = np.zeros(0, dtype=np.int64)
            return
        counts = np.bincount(terms)
        if len(counts) > len(self.counts):
            counts[: len(self.counts)] += self.counts
            self.counts = counts
        else:
            self.counts[: len(counts)] += counts

    def allocate(self) -> None:
        total = int(self.counts.sum())
        self._rows = np.empty(total, dtype=np.int32)
        self._tfs = np.empty(total, dtype=np.uint16)
        self._fill = np.cumsum(self.counts) - self.counts

    def place(self, terms: npt.NDArray[np.uint32], rows: Rows, tfs: npt.NDArray[np.uint16]) -> None:
        if not len(terms):
            return
        order = np.argsort(terms, kind="stable")
        ordered = terms[order]
        first = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        sizes = np.diff(np.append(first, len(ordered)))
        # Each posting's place: where its term's postings continue, plus its rank among them in this part.
        at = self._fill[ordered] + (np.arange(len(ordered)) - np.repeat(first, sizes))
        self._rows[at] = rows[order]
        self._tfs[at] = tfs[order]
        self._fill[ordered[first]] += sizes

    def finish(self) -> Postings:
        present = np.flatnonzero(self.counts)
        starts = np.zeros(len(present) + 1, dtype=np.int64)
        np.cumsum(self.counts[present], out=starts[1:])
        rows, tfs = self._rows, self._tfs
        self._rows, self._tfs, self._fill = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.uint16), self.counts[:0]
        return present.astype(np.uint32), starts, rows, tfs


def _libc_trim() -> None:
    """Give the freed memory of a build back to the system (glibc keeps large freed blocks in its heap:
    ~100 MB after loading 100,000 chunks' postings)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


@dataclass(frozen=True)
class QueryTerm:
    """A query term's id and weight (query term frequency x idf)."""

    term_id: int
    weight: float


class SparseIndex:
    """One database's chunks and postings in this process."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.watermark = 0
        self.token: int | None = None
        self.lock = threading.Lock()
        self.size = 0
        self.ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.lengths: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.sources: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.live: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self.rows: dict[int, int] = {}
        self.source_keys: dict[str, int] = {}
        self.source_names: list[str] = []
        # Base postings, sorted by term: term_ids[i]'s postings are rows/tfs[starts[i]:starts[i + 1]].
        self.term_ids: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.starts: npt.NDArray[np.int64] = np.zeros(1, dtype=np.int64)
        self.post_rows: Rows = np.zeros(0, dtype=np.int32)
        self.post_tfs: npt.NDArray[np.uint16] = np.zeros(0, dtype=np.uint16)
        # Postings of chunks added since the last merge, unsorted.
        self.delta_terms: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.delta_rows: Rows = np.zeros(0, dtype=np.int32)
        self.delta_tfs: npt.NDArray[np.uint16] = np.zeros(0, dtype=np.uint16)
        self.dead = 0

    # -- upkeep (callers hold `lock`) -------------------------------------------------------------------

    def _reserve(self, extra: int) -> None:
        needed = self.size + extra
        if needed <= len(self.ids):
            return
        capacity = max(needed, int(len(self.ids) * 1.25) + 1024)
        for name, dtype in (("ids", np.int64), ("lengths", np.int32), ("sources", np.int32), ("live", bool)):
            grown = np.zeros(capacity, dtype=dtype)
            grown[: self.size] = getattr(self, name)[: self.size]
            setattr(self, name, grown)

    def apply(self, changes: Sequence[tuple[int, str | None, int | None, bytes | None]]) -> None:
        """Set each chunk to its current state: (chunk id, source id, length, term vector), the last three
        None when the chunk no longer exists. Idempotent."""
        for chunk_id, *_ in changes:
            row = self.rows.pop(chunk_id, None)
            if row is not None:
                self.live[row] = False
                self.dead += 1
        added = [(c, s, n, v) for c, s, n, v in changes if s is not None and n is not None and v is not None]
        if not added:
            if self.dead > max(1024, self.size // 4):
                self.merge()
            return
        self._reserve(len(added))
        first = self.size
        rows = np.arange(first, first + len(added), dtype=np.int32)
        for row, (chunk_id, source_id, length, _) in enumerate(added, start=first):
            key = self.source_keys.get(source_id)
            if key is None:
                key = self.source_keys[source_id] = len(self.source_names)
                self.source_names.append(source_id)
            self.rows[chunk_id] = row
            self.ids[row] = chunk_id
            self.lengths[row] = length
            self.sources[row] = key
            self.live[row] = True
        self.size += len(added)
        vectors = [v for _, _, _, v in added]
        records = np.frombuffer(b"".join(vectors), dtype=RECORDS)
        owners = np.repeat(rows, [len(v) // RECORDS.itemsize for v in vectors])
        self.delta_terms = np.concatenate([self.delta_terms, records["term"].astype(np.uint32)])
        self.delta_rows = np.concatenate([self.delta_rows, owners])
        self.delta_tfs = np.concatenate([self.delta_tfs, records["tf"].astype(np.uint16)])
        if len(self.delta_rows) > max(_MERGE_AT, len(self.post_rows) // 8) or self.dead > max(1024, self.size // 4):
            self.merge()

    def merge(self) -> None:
        """Fold the delta into the sorted base and drop the deleted chunks' rows and postings.

        The new base is filled by counting (`PostingsBuilder`), slice by slice, so the peak is the old
        base plus the new one, not the several full-size temporaries of a global sort."""
        live = self.live[: self.size]
        new_row: Rows | None = None
        if self.dead:
            # Renumber the live rows densely.
            new_row = np.cumsum(live, dtype=np.int64).astype(np.int32) - 1

        def parts() -> Iterator[Part]:
            for lo in range(0, len(self.post_rows), _SLICE):
                hi = min(lo + _SLICE, len(self.post_rows))
                owner = np.searchsorted(self.starts, np.arange(lo, hi), side="right") - 1
                yield self.term_ids[owner], self.post_rows[lo:hi], self.post_tfs[lo:hi]
            for lo in range(0, len(self.delta_rows), _SLICE):
                hi = lo + _SLICE
                yield self.delta_terms[lo:hi], self.delta_rows[lo:hi], self.delta_tfs[lo:hi]

        def live_parts() -> Iterator[Part]:
            for terms, rows, tfs in parts():
                if new_row is None:
                    yield terms, rows, tfs
                else:
                    keep = live[rows]
                    yield terms[keep], new_row[rows[keep]], tfs[keep]

        builder = PostingsBuilder()
        for terms, _, _ in live_parts():
            builder.count(terms)
        if builder.dense:
            builder.allocate()
            for part in live_parts():
                builder.place(*part)
            postings = builder.finish()
        else:
            postings = _sorted_by_term(list(live_parts()))
        if new_row is not None:
            kept = np.flatnonzero(live)
            self.ids = self.ids[kept].copy()
            self.lengths = self.lengths[kept].copy()
            self.sources = self.sources[kept].copy()
            self.live = np.ones(len(kept), dtype=bool)
            self.size = len(kept)
            self.rows = {int(c): i for i, c in enumerate(self.ids.tolist())}
            self.dead = 0
        self.term_ids, self.starts, self.post_rows, self.post_tfs = postings
        self.delta_terms = np.zeros(0, dtype=np.uint32)
        self.delta_rows = np.zeros(0, dtype=np.int32)
        self.delta_tfs = np.zeros(0, dtype=np.uint16)
        _libc_trim()

    # -- scoring -----------------------------------------------------------------------------------------

    def score(
        self, terms: Sequence[QueryTerm], avg_length: float, k1: float, b: float
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        """Every live chunk matching a query term: chunk ids, source keys and exact BM25 scores.

        The arithmetic and its order are `retrieval._score`'s: per term in term-id order, each chunk's
        contribution added to a zero start, so the scores are bit-identical to the SQL plans'."""
        with self.lock:
            parts_rows: list[Rows] = []
            parts_tfs: list[npt.NDArray[np.uint16]] = []
            parts_weights: list[npt.NDArray[np.float64]] = []
            delta_terms = self.delta_terms
            for term in sorted(terms, key=lambda t: t.term_id):
                i = int(np.searchsorted(self.term_ids, term.term_id))
                if i < len(self.term_ids) and int(self.term_ids[i]) == term.term_id:
                    lo, hi = int(self.starts[i]), int(self.starts[i + 1])
                    parts_rows.append(self.post_rows[lo:hi])
                    parts_tfs.append(self.post_tfs[lo:hi])
                if len(delta_terms):
                    hit = np.flatnonzero(delta_terms == term.term_id)
                    parts_rows.append(self.delta_rows[hit])
                    parts_tfs.append(self.delta_tfs[hit])
                count = sum(len(r) for r in parts_rows) - sum(len(w) for w in parts_weights)
                parts_weights.append(np.full(count, term.weight))
            if not parts_rows:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0)
            rows = np.concatenate(parts_rows)
            tf = np.concatenate(parts_tfs).astype(np.float64)
            weight = np.concatenate(parts_weights)
            if self.dead:
                keep = self.live[rows]
                rows, tf, weight = rows[keep], tf[keep], weight[keep]
            lengths = self.lengths[rows].astype(np.float64)
            norm = k1 * (1.0 - b + b * lengths / (avg_length or 1.0))
            contributions = weight * tf * (k1 + 1.0) / (tf + norm)
            totals = np.bincount(rows, weights=contributions, minlength=self.size).astype(np.float64, copy=False)
            matched = np.flatnonzero(totals)
            return self.ids[matched].copy(), self.sources[matched].copy(), totals[matched]


# -- keeping current ----------------------------------------------------------------------------------

_INDEXES: dict[str, SparseIndex] = {}
_HAS_LOG: dict[str, float] = {}  # database -> time until which "no log" holds (inf: it has one)
_INDEXES_LOCK = threading.Lock()
_LOAD_LOCKS: dict[tuple[int, str], asyncio.Lock] = {}


def _database_key(conn: AsyncConnection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


async def _has_log(conn: AsyncConnection, database: str) -> bool:
    known = _HAS_LOG.get(database)
    if known is not None and (known == math.inf or known > time.monotonic()):
        return known == math.inf
    if conn.dialect.name == "sqlite":
        sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'rag_chunk_log_state'"
    else:
        sql = "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = 'rag_chunk_log_state'"
    ((count,),) = await store_for(conn).rows(conn, sql)
    present = bool(count)
    _HAS_LOG[database] = math.inf if present else time.monotonic() + _NO_LOG_TTL_S
    return present


async def current_index(conn: AsyncConnection) -> SparseIndex | None:
    """This process's postings of the connection's database, brought up to its latest state as this
    connection sees it; None when the database has no chunk log."""
    database = _database_key(conn)
    if not await _has_log(conn, database):
        return None
    index = _INDEXES.get(database)
    watermark = index.watermark if index is not None else 0
    (row,) = await store_for(conn).rows(
        conn,
        "SELECT instance, (SELECT token FROM rag_chunk_log WHERE id = :w), "
        "(SELECT id FROM rag_chunk_log ORDER BY id DESC LIMIT 1), "
        "(SELECT token FROM rag_chunk_log ORDER BY id DESC LIMIT 1) FROM rag_chunk_log_state WHERE id = 1",
        {"w": watermark},
    )
    instance, token_at_watermark = str(row[0]), row[1]
    newest, newest_token = int(row[2] or 0), None if row[3] is None else int(row[3])
    if (
        index is None
        or index.instance != instance
        or newest < watermark
        or (watermark > 0 and (token_at_watermark is None or int(token_at_watermark) != index.token))
        or newest - watermark > _MAX_LAG
    ):
        return await _load_whole(conn, database, instance, newest, newest_token)
    if newest == watermark:
        return index
    rows = await store_for(conn).rows(
        conn,
        "SELECT l.chunk_id, c.source_id, c.length, c.terms FROM (SELECT DISTINCT chunk_id FROM rag_chunk_log "
        "WHERE id > :lo AND id <= :hi) AS l LEFT JOIN rag_chunks c ON c.id = l.chunk_id",
        {"lo": watermark, "hi": newest},
    )
    changes = [
        (int(c), None if s is None else str(s), None if n is None else int(n), None if v is None else bytes(v))
        for c, s, n, v in rows
    ]

    def apply() -> None:
        with index.lock:
            if index.watermark == watermark:
                index.apply(changes)
                index.watermark, index.token = newest, newest_token

    if len(changes) > 1000:
        await asyncio.to_thread(apply)
    else:
        apply()
    return index


async def _load_whole(
    conn: AsyncConnection, database: str, instance: str, newest: int, newest_token: int | None
) -> SparseIndex:
    """Load every chunk's postings, as of log entry `newest` (read before the chunks: what commits in
    between is also in the log past it, and applied again, idempotently, by the next query)."""
    with _INDEXES_LOCK:
        lock = _LOAD_LOCKS.setdefault((id(asyncio.get_running_loop()), database), asyncio.Lock())
    async with lock:
        current = _INDEXES.get(database)
        if (
            current is not None
            and current.instance == instance
            and (current.watermark, current.token) == (newest, newest_token)
            and newest
        ):
            return current  # loaded by a concurrent query meanwhile
        fresh = SparseIndex(instance)
        # Each slice's postings as compact arrays (6 bytes a posting, and a count per chunk) until placed.
        loaded: list[tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint16], int, npt.NDArray[np.int32]]] = []
        builder = PostingsBuilder()
        stream = await conn.stream(text("SELECT id, source_id, length, terms FROM rag_chunks"))
        # In slices, so that the term vectors are never all held as bytes at once.
        async for part in stream.partitions(8192):
            fresh._reserve(len(part))
            vectors = []
            first = fresh.size
            for row, (chunk_id, source_id, length, vector) in enumerate(part, start=first):
                key = fresh.source_keys.get(source_id)
                if key is None:
                    key = fresh.source_keys[source_id] = len(fresh.source_names)
                    fresh.source_names.append(str(source_id))
                fresh.rows[int(chunk_id)] = row
                fresh.ids[row], fresh.lengths[row], fresh.sources[row] = chunk_id, length, key
                vectors.append(bytes(vector))
            fresh.live[first : first + len(part)] = True
            fresh.size += len(part)
            records = np.frombuffer(b"".join(vectors), dtype=RECORDS)
            counts = np.array([len(v) // RECORDS.itemsize for v in vectors], dtype=np.int32)
            del part, vectors
            terms = records["term"].astype(np.uint32)
            builder.count(terms)
            loaded.append((terms, records["tf"].astype(np.uint16), first, counts))
            del records

        def parts() -> Iterator[Part]:
            while loaded:  # each slice freed once used
                terms, tfs, first, counts = loaded.pop(0)
                yield terms, np.repeat(np.arange(first, first + len(counts), dtype=np.int32), counts), tfs

        def build() -> None:
            if builder.dense:
                builder.allocate()
                for part in parts():
                    builder.place(*part)
                postings = builder.finish()
            else:
                postings = _sorted_by_term(list(parts()))
            fresh.term_ids, fresh.starts, fresh.post_rows, fresh.post_tfs = postings
            del postings
            _libc_trim()

        await asyncio.to_thread(build)
        fresh.watermark, fresh.token = newest, newest_token
        with _INDEXES_LOCK:
            _INDEXES[database] = fresh
        return fresh


# -- searching ----------------------------------------------------------------------------------------


async def visible_source_ids(conn: AsyncConnection, scope: RetrievalScope, limit: int) -> list[str]:
    """Ids of up to `limit` searchable sources in scope, in the caller's transaction."""
    store = store_for(conn)
    assert isinstance(store, _SqlStore)
    sql = (
        f"WITH vs AS ({store._visible_sources(scope)}) "
        "SELECT s.id FROM vs CROSS JOIN sources s WHERE s.id = vs.id AND s.state = 'vectorized' LIMIT :limit"
    )
    params = store._scope_params(scope)
    rows = await store.rows(conn, sql, {**params, "limit": limit}, *params)
    return [str(r[0]) for r in rows]


async def visible_sources_among(conn: AsyncConnection, scope: RetrievalScope, source_ids: Sequence[str]) -> set[str]:
    """Those of these sources that are searchable in the scope, in the caller's transaction."""
    store = store_for(conn)
    assert isinstance(store, _SqlStore)
    if conn.dialect.name == "sqlite":
        # One JSON parameter: an expanded IN list of a thousand values costs SQLAlchemy milliseconds.
        among, value = "s.id IN (SELECT value FROM json_each(:sources))", json.dumps(list(source_ids))
    else:
        among, value = "s.id = ANY(CAST(:sources AS varchar[]))", list(source_ids)  # type: ignore[assignment]
    sql = f"SELECT s.id FROM sources s WHERE {among} AND {store._visible(scope)}"
    params = store._scope_params(scope)
    rows = await store.rows(conn, sql, {**params, "sources": value}, *params)
    return {str(r[0]) for r in rows}


async def search(
    conn: AsyncConnection,
    scope: RetrievalScope,
    terms: Sequence[QueryTerm],
    avg_length: float,
    k: int,
    k1: float,
    b: float,
    share: float,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]] | None:
    """The `k` best visible chunks by exact BM25 (ids and scores, unordered; ties with the k-th included
    or not, the caller orders them by score then id), or None when the database has no chunk log.

    `share` (the share of sources in scope, an estimate) sizes the first round of visibility checks; the
    candidates are checked best first, all ties included, widening until `k` are visible, so the result
    does not depend on it."""
    index = await current_index(conn)
    if index is None:
        return None
    ids, sources, scores = index.score(terms, avg_length, k1, b)
    n = len(ids)
    if n and share <= LIST_SOURCES_SHARE:
        # A narrow scope: its sources listed (one row each), the matching chunks of those kept. One
        # statement, where checking candidates would take 1 / share of them per result.
        listed = await visible_source_ids(conn, scope, 2**62)
        with index.lock:
            mask = np.zeros(len(index.source_names), dtype=bool)
            mask[[key for key in map(index.source_keys.get, listed) if key is not None]] = True
        keep = mask[sources]
        return ids[keep], scores[keep]
    found_ids: list[npt.NDArray[np.int64]] = []
    found_scores: list[npt.NDArray[np.float64]] = []
    found = 0
    want = min(n, max(2 * k, math.ceil(_FIRST_PER_K * k / max(share, 1e-3))))
    checked_above = math.inf
    checked = 0
    while n:
        threshold = float(np.partition(scores, n - want)[n - want]) if want < n else -math.inf
        band = np.flatnonzero((scores >= threshold) & (scores < checked_above))
        band_sources = sources[band]
        keys = np.unique(band_sources)
        with index.lock:
            names = [index.source_names[s] for s in keys.tolist()]
        visible = await visible_sources_among(conn, scope, names)
        keep = np.isin(band_sources, keys[[name in visible for name in names]])
        found_ids.append(ids[band][keep])
        found_scores.append(scores[band][keep])
        found += int(np.count_nonzero(keep))
        checked += len(band)
        if found >= k or want >= n:
            break
        seen = max(found, 1) / max(checked, 1)
        checked_above = threshold
        want = min(n, max(2 * want, checked + k, math.ceil(_FIRST_PER_K * k / seen)))
    if not found_ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(found_ids), np.concatenate(found_scores)
