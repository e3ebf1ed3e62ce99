"""Dense vectors next to the permissions: embedding models, vector writes and scoped nearest-neighbour search.

Vectors are float32 and L2-normalised (`privategpt.embeddings.base`), so the inner product is the cosine
similarity. Every search carries the caller's access scope (the same SQL as BM25, from
`privategpt.rag.store`), and a caller who may see few chunks among many still gets their `k` best.

Both databases are searched through one in-process numpy matrix per searched model, which each process
brings up to date before every query from `rag_vector_log` (triggers record every insert, update and
delete of a vector, also those cascaded from a deleted or re-ingested source). Small scopes score only the
visible chunks (their sources come from SQL, their vectors from the matrix); large scopes score the whole
matrix and check the best candidates' visibility in SQL, widening the candidate set until `k` are found.
Every search is exact, and the access rule is applied by the database in the caller's transaction.

What differs is how a process knows what changed. SQLite (vectors as BLOBs) has one writer at a time, so
log ids are in commit order and a process keeps an id watermark. PostgreSQL (pgvector `vector` columns)
assigns ids before commit, so its log records each entry's transaction and a process keeps the `xmin` of
the last snapshot it read the log in (every older transaction is applied) plus the newer transactions it
has applied. A PostgreSQL transaction that has itself written vectors of the model and not committed them
searches by an exact pgvector scan instead (the shared matrix holds committed state only).

See docs/retrieval.md ("Dense vectors") for the measurements behind the thresholds.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from privategpt.rag.sparse_index import visible_source_ids, visible_sources_among
from privategpt.rag.store import PostgresStore, RetrievalScope, SqliteStore, _SqlStore

__all__ = [
    "ChunkToEmbed",
    "EmbeddingModel",
    "PendingDense",
    "activate_model",
    "chunks_missing_vectors",
    "count_missing_vectors",
    "list_models",
    "register_model",
    "search_dense",
    "start_dense",
    "write_vectors",
]

ModelState = Literal["building", "active", "retired"]
Matrix = npt.NDArray[np.float32]

MAX_NAME_LENGTH = 255
MAX_DIMENSION = 16_000
# Up to this many visible chunks, a search scores only the visible ones' rows.
SMALL_SCOPE = 4000
# Also up to this share of the model's vectors. Gathering the visible rows of the matrix and scoring them
# costs about 2.5 times as much per row as scoring the whole matrix in place, and saves the large plan's
# visibility checks, so scopes up to ~40 % are cheaper scored row by row.
GATHER_SHARE = 0.4
# The change log is pruned when it holds this many entries past the last prune point, down to the most
# recent LOG_KEEP; a process that has not applied what a prune deleted reloads its matrix from the table.
LOG_PRUNE_AT = 1_000_000
LOG_KEEP = 250_000
# Candidates whose visibility the first round of a large-scope SQLite search checks, per result asked
# for, and at most (one SQL batch).
FIRST_CANDIDATES_PER_K = 2
MAX_FIRST_CANDIDATES = 4000
_SQLITE_ROWS_PER_INSERT = 400
# Rows per matrix-vector product: 1,024 x 384 float32 is 1.5 MB, and below OpenBLAS's threading.
_SCORE_BLOCK = 1024
_PG_ROWS_PER_INSERT = 2000


@dataclass(frozen=True)
class EmbeddingModel:
    """A (name, dimension) whose vectors are stored; at most one is `active` (searched)."""

    id: int
    name: str
    dimension: int
    state: ModelState


@dataclass(frozen=True)
class ChunkToEmbed:
    """A chunk that has no vector yet for some model, with what its passage text is built from."""

    chunk_id: int
    source_id: str
    source_name: str
    heading_path: tuple[str, ...]
    text: str


# -- models -------------------------------------------------------------------------------------------


def _model(row: Any) -> EmbeddingModel:
    return EmbeddingModel(int(row[0]), str(row[1]), int(row[2]), cast(ModelState, str(row[3])))


async def list_models(conn: AsyncConnection) -> list[EmbeddingModel]:
    """Every registered model, oldest first."""
    rows = await conn.execute(text("SELECT id, name, dimension, state FROM rag_embedding_models ORDER BY id"))
    return [_model(r) for r in rows]


async def find_model(conn: AsyncConnection, model_id: int) -> EmbeddingModel | None:
    """The model with this id, if there is one."""
    row = (
        await conn.execute(
            text("SELECT id, name, dimension, state FROM rag_embedding_models WHERE id = :id"), {"id": model_id}
        )
    ).first()
    return None if row is None else _model(row)


async def get_model(conn: AsyncConnection, model_id: int) -> EmbeddingModel:
    """The model with this id; ValueError when there is none."""
    model = await find_model(conn, model_id)
    if model is None:
        raise ValueError(f"unknown embedding model id {model_id}")
    return model


async def register_model(conn: AsyncConnection, name: str, dimension: int) -> EmbeddingModel:
    """Record a model; an existing (name, dimension) is returned as is, except that a retired one builds again.

    A new model is `active` when no model is active yet, otherwise `building`: its vectors are written
    beside the active model's until `activate_model` switches over.
    """
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"an embedding model name must have 1 to {MAX_NAME_LENGTH} characters")
    if isinstance(dimension, bool) or not isinstance(dimension, int) or not 0 < dimension <= MAX_DIMENSION:
        raise ValueError(f"an embedding dimension must be an integer from 1 to {MAX_DIMENSION}, not {dimension!r}")
    await conn.execute(
        text(
            "INSERT INTO rag_embedding_models (name, dimension, state) "
            "SELECT CAST(:name AS VARCHAR(255)), CAST(:dim AS INTEGER), "
            "CASE WHEN EXISTS (SELECT 1 FROM rag_embedding_models WHERE state = 'active') "
            "THEN 'building' ELSE 'active' END "
            "WHERE NOT EXISTS (SELECT 1 FROM rag_embedding_models "
            "WHERE name = CAST(:name AS VARCHAR(255)) AND dimension = CAST(:dim AS INTEGER)) "
            "ON CONFLICT (name, dimension) DO NOTHING"
        ),
        {"name": name, "dim": dimension},
    )
    row = (
        await conn.execute(
            text("SELECT id, name, dimension, state FROM rag_embedding_models WHERE name = :name AND dimension = :dim"),
            {"name": name, "dim": dimension},
        )
    ).one()
    model = _model(row)
    if model.state == "retired":
        await conn.execute(text("UPDATE rag_embedding_models SET state = 'building' WHERE id = :id"), {"id": model.id})
        model = EmbeddingModel(model.id, model.name, model.dimension, "building")
    return model


async def activate_model(conn: AsyncConnection, model_id: int) -> None:
    """Make this model the searched one, in the caller's transaction: the previous one is retired and its
    vectors deleted. Activating the active model does nothing."""
    model = await get_model(conn, model_id)
    if model.state == "active":
        return
    previous = [
        int(r[0])
        for r in await conn.execute(
            text("UPDATE rag_embedding_models SET state = 'retired' WHERE state = 'active' RETURNING id")
        )
    ]
    for old_id in previous:
        await conn.execute(text("DELETE FROM rag_vectors WHERE model_id = :id"), {"id": old_id})
    await conn.execute(text("UPDATE rag_embedding_models SET state = 'active' WHERE id = :id"), {"id": model_id})


# -- chunks to embed ----------------------------------------------------------------------------------


def _missing_sql(columns: str, source_ids: Sequence[str] | None, dialect: str) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    where = "NOT EXISTS (SELECT 1 FROM rag_vectors v WHERE v.model_id = :model AND v.chunk_id = c.id)"
    if source_ids is not None:
        params["sources"] = list(source_ids)
        where += " AND " + ("c.source_id IN :sources" if dialect == "sqlite" else "c.source_id = ANY(:sources)")
    return f"SELECT {columns} FROM rag_chunks c JOIN sources s ON s.id = c.source_id WHERE {where}", params


def _bind(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> Any:
    store = _sql_store(conn)
    return store._bind(sql, *(name for name, value in params.items() if isinstance(value, list)))


async def chunks_missing_vectors(
    conn: AsyncConnection, model_id: int, *, source_ids: Sequence[str] | None = None, limit: int = 256
) -> list[ChunkToEmbed]:
    """Up to `limit` chunks (of these sources, or of all) that have no vector for the model, in chunk order."""
    if source_ids is not None and not source_ids:
        return []
    sql, params = _missing_sql("c.id, c.source_id, s.name, c.heading_path, c.text", source_ids, conn.dialect.name)
    params.update(model=model_id, limit=max(0, int(limit)))
    rows = await conn.execute(_bind(conn, sql + " ORDER BY c.id LIMIT :limit", params), params)
    return [ChunkToEmbed(int(r[0]), str(r[1]), str(r[2]), tuple(json.loads(r[3])), str(r[4])) for r in rows]


async def count_missing_vectors(conn: AsyncConnection, model_id: int, source_ids: Sequence[str] | None = None) -> int:
    """Number of chunks (of these sources, or of all) that have no vector for the model."""
    if source_ids is not None and not source_ids:
        return 0
    sql, params = _missing_sql("count(*)", source_ids, conn.dialect.name)
    params["model"] = model_id
    return int((await conn.execute(_bind(conn, sql, params), params)).scalar_one())


# -- writing ------------------------------------------------------------------------------------------


def _normalised(vector: Any, dimension: int) -> Matrix:
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.shape[0] != dimension:
        raise ValueError(f"a vector of this model must have shape ({dimension},), not {array.shape}")
    norm = float(np.linalg.norm(array))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("a vector must be finite and non-zero")
    return cast(Matrix, array / np.float32(norm))


def _pg_literal(vector: Matrix) -> str:
    # Python's shortest repr of each float32 value reads back as the same float32.
    return "[" + ",".join(map(repr, vector.tolist())) + "]"


async def write_vectors(conn: AsyncConnection, model_id: int, rows: Sequence[tuple[int, npt.ArrayLike]]) -> int:
    """Store (chunk id, vector) rows for a model (replacing earlier vectors of the same chunks).

    Chunks that no longer exist (their source was re-ingested or deleted while embedding ran) are
    skipped; a vector of the wrong dimension is a ValueError. Returns the number of rows written.
    """
    model = await get_model(conn, model_id)
    if model.state == "retired":
        raise ValueError(f"embedding model {model.name!r} is retired; register it again to build its vectors")
    latest: dict[int, Matrix] = {}
    for chunk_id, vector in rows:
        latest[int(chunk_id)] = _normalised(vector, model.dimension)
    if not latest:
        return 0
    items = sorted(latest.items())
    if conn.dialect.name == "sqlite":
        return await _write_sqlite(conn, model_id, items)
    return await _write_postgres(conn, model_id, items)


async def _write_sqlite(conn: AsyncConnection, model_id: int, items: list[tuple[int, Matrix]]) -> int:
    written = 0
    for start in range(0, len(items), _SQLITE_ROWS_PER_INSERT):
        batch = items[start : start + _SQLITE_ROWS_PER_INSERT]
        values = ", ".join(["(?, ?)"] * len(batch))
        params: list[Any] = []
        for chunk_id, vector in batch:
            params += [chunk_id, vector.tobytes()]
        # One statement checks existence and inserts, so a chunk deleted by another process meanwhile
        # is skipped rather than failing the foreign key. `WHERE true` keeps the ON CONFLICT clause
        # from being parsed as the join's constraint.
        result = await conn.exec_driver_sql(
            "INSERT INTO rag_vectors (model_id, chunk_id, vector) "
            f"SELECT {int(model_id)}, x.column1, x.column2 FROM (VALUES {values}) AS x "
            "JOIN rag_chunks c ON c.id = x.column1 WHERE true "
            "ON CONFLICT (model_id, chunk_id) DO UPDATE SET vector = excluded.vector RETURNING chunk_id",
            tuple(params),
        )
        written += len(result.all())
    await _prune_log(conn)
    return written


async def _prune_log(conn: AsyncConnection) -> None:
    row = (
        await conn.execute(
            text("SELECT (SELECT max(id) FROM rag_vector_log), pruned_through FROM rag_vector_log_state WHERE id = 1")
        )
    ).one()
    newest, pruned = int(row[0] or 0), int(row[1])
    if newest - pruned < LOG_PRUNE_AT:
        return
    through = newest - LOG_KEEP
    if conn.dialect.name == "sqlite":
        await conn.execute(text("DELETE FROM rag_vector_log WHERE id <= :t"), {"t": through})
        await conn.execute(text("UPDATE rag_vector_log_state SET pruned_through = :t WHERE id = 1"), {"t": through})
        return
    # PostgreSQL: readers that have not applied every transaction up to the newest one pruned reload.
    await conn.execute(
        text(
            "WITH d AS (DELETE FROM rag_vector_log WHERE id <= :t RETURNING xid) "
            "UPDATE rag_vector_log_state SET pruned_through = :t, pruned_xid = greatest(pruned_xid, "
            "coalesce((SELECT xid FROM d ORDER BY xid DESC LIMIT 1), '0')) WHERE id = 1"
        ),
        {"t": through},
    )


async def _write_postgres(conn: AsyncConnection, model_id: int, items: list[tuple[int, Matrix]]) -> int:
    written = 0
    for start in range(0, len(items), _PG_ROWS_PER_INSERT):
        batch = items[start : start + _PG_ROWS_PER_INSERT]
        # KEY SHARE locks keep the chunks from being deleted until this transaction ends; a chunk whose
        # delete committed while we waited for its lock is no longer returned, and is skipped.
        existing = {
            int(r[0])
            for r in await conn.execute(
                text("SELECT id FROM rag_chunks WHERE id = ANY(:ids) ORDER BY id FOR KEY SHARE"),
                {"ids": [c for c, _ in batch]},
            )
        }
        kept = [(c, v) for c, v in batch if c in existing]
        if not kept:
            continue
        await conn.execute(
            text(
                "INSERT INTO rag_vectors (model_id, chunk_id, embedding) "
                "SELECT :model, u.c, CAST(u.v AS vector) FROM unnest(CAST(:c AS integer[]), CAST(:v AS text[])) "
                "AS u(c, v) ON CONFLICT (model_id, chunk_id) DO UPDATE SET embedding = EXCLUDED.embedding"
            ),
            {"model": model_id, "c": [c for c, _ in kept], "v": [_pg_literal(v) for _, v in kept]},
        )
        written += len(kept)
    await _prune_log(conn)
    return written


# -- searching ----------------------------------------------------------------------------------------


# The access rule's SQL is the BM25 store's, so dense and sparse search can never disagree on what a
# caller may see.
_SQL: dict[str, _SqlStore] = {"sqlite": SqliteStore(), "postgresql": PostgresStore()}


def _sql_store(conn: AsyncConnection) -> _SqlStore:
    try:
        return _SQL[conn.dialect.name]
    except KeyError:
        raise ValueError(f"unsupported database dialect: {conn.dialect.name}") from None


# Scopes' sizes in visible chunks (capped), per process, for a few seconds: the verdict only picks the
# plan and every plan returns `k` results, so a stale one costs time, never results. Counting the
# visible chunks of a large scope costs about as much as the dense scoring itself; a scope known small
# is listed without the share-of-sources count first (one round trip fewer).
SCOPE_SIZE_TTL_S = 10.0
_SCOPE_SIZES: dict[tuple[str, frozenset[int], bool, int], tuple[float, int]] = {}
# Per scope, the share of the best-scoring candidates that its last large-scope search found visible.
_SHARES: dict[tuple[str, frozenset[int], bool, int], float] = {}


def _scope_key(conn: AsyncConnection, scope: RetrievalScope, cap: int) -> tuple[str, frozenset[int], bool, int]:
    return (_database_key(conn), scope.group_ids, scope.include_public, cap)


def _known_size(conn: AsyncConnection, scope: RetrievalScope, cap: int) -> int | None:
    """The size recorded for a scope within the last SCOPE_SIZE_TTL_S, else None."""
    entry = _SCOPE_SIZES.get(_scope_key(conn, scope, cap))
    return entry[1] if entry is not None and entry[0] > time.monotonic() else None


def _remember_size(conn: AsyncConnection, scope: RetrievalScope, cap: int, size: int) -> None:
    now = time.monotonic()
    if len(_SCOPE_SIZES) > 1000:
        for key, (expires, _) in list(_SCOPE_SIZES.items()):
            if expires <= now:
                _SCOPE_SIZES.pop(key, None)
    _SCOPE_SIZES[_scope_key(conn, scope, cap)] = (now + SCOPE_SIZE_TTL_S, size)


async def _visible_sources_among(conn: AsyncConnection, scope: RetrievalScope, source_ids: Sequence[str]) -> set[str]:
    """Those of these sources that are searchable in the scope (the check BM25's in-memory postings use)."""
    return await visible_sources_among(conn, scope, source_ids)


def _check_query(query: npt.ArrayLike, dimension: int) -> Matrix:
    try:
        return _normalised(query, dimension)
    except ValueError as exc:
        raise ValueError(f"invalid query vector: {exc}") from None


def _best(ids: npt.NDArray[np.int64], scores: Matrix, k: int) -> list[tuple[int, float]]:
    n = len(scores)
    if n > 4 * k:
        # Only the k best and everything tied with the k-th are sorted.
        keep = np.flatnonzero(scores >= np.partition(scores, n - k)[n - k])
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return [(int(ids[i]), float(scores[i])) for i in order]


class PendingDense:
    """A dense search under way: its first database reads are done and its arithmetic may still be
    running in a worker thread, so the caller can use the connection meanwhile (hybrid retrieval runs
    BM25 then). `result` finishes it on the same connection."""

    def __init__(self, finish: Callable[[AsyncConnection], Awaitable[list[tuple[int, float]]]]) -> None:
        self._finish = finish

    async def result(self, conn: AsyncConnection) -> list[tuple[int, float]]:
        """The search's hits: (chunk id, cosine similarity), best first, ties by chunk id."""
        return await self._finish(conn)


def _done(hits: list[tuple[int, float]]) -> PendingDense:
    async def finish(conn: AsyncConnection) -> list[tuple[int, float]]:
        return hits

    return PendingDense(finish)


async def start_dense(
    conn: AsyncConnection,
    model: int | EmbeddingModel,
    query: npt.ArrayLike,
    scope: RetrievalScope,
    k: int,
    *,
    small_scope: int | None = None,
) -> PendingDense:
    """Start `search_dense`; the connection is free again when this returns (see PendingDense). `model` is
    the model's id or its row as just read in this transaction (which saves reading it again)."""
    if not isinstance(model, EmbeddingModel):
        model = await get_model(conn, model)
    q = _check_query(query, model.dimension)
    if model.state == "retired":
        with _INDEXES_LOCK:
            _INDEXES.pop((_database_key(conn), model.id), None)
        return _done([])
    if k <= 0 or scope.is_empty:
        return _done([])
    index = await _current_index(conn, model)
    if index is None:
        return _done(await _search_postgres_exact(conn, model, q, scope, k))
    return await _start_matrix(conn, index, q, scope, k, small_scope)


async def search_dense(
    conn: AsyncConnection,
    model_id: int,
    query: npt.ArrayLike,
    scope: RetrievalScope,
    k: int,
    *,
    small_scope: int | None = None,
) -> list[tuple[int, float]]:
    """The `k` chunks in scope most similar to the query: (chunk id, cosine similarity), best first, ties
    by chunk id. Fewer than `k` only when fewer chunks in scope have a vector of this model.

    Scopes of up to `small_scope` visible chunks have only their rows scored; by default the larger of
    SMALL_SCOPE and GATHER_SHARE of the model's vectors (tests lower it to reach the large-scope path on
    small corpora)."""
    pending = await start_dense(conn, model_id, query, scope, k, small_scope=small_scope)
    return await pending.result(conn)


# -- the in-process index -----------------------------------------------------------------------------


class _DenseIndex:
    """One model's vectors in this process: a matrix with a row per chunk, kept current from the log."""

    def __init__(self, instance: str, dimension: int) -> None:
        self.instance = instance
        self.dimension = dimension
        # SQLite: the log id applied through (-1: not loaded yet).
        self.watermark = -1
        # PostgreSQL: every transaction below `xmin` is applied, and those in `seen` (>= xmin), and every
        # prune up to `pruned_xid` is accounted for; `version` counts the changes applied, so that a
        # refresh read before another one applied is not applied.
        self.xmin = 0
        self.seen: set[int] = set()
        self.pruned_xid = 0
        self.version = 0
        self.lock = threading.Lock()
        self.matrix: Matrix = np.zeros((0, dimension), dtype=np.float32)
        self.ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        # Each row's source, as a key into `source_names`: large scopes check visibility per source,
        # in the narrow access index, instead of reading each candidate's (wide) chunk row.
        self.sources: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.source_keys: dict[str, int] = {}
        self.source_names: list[str] = []
        self.size = 0
        self.rows: dict[int, int] = {}
        self.free: list[int] = []

    def reserve(self, extra: int) -> None:
        needed = self.size + extra
        if needed <= self.matrix.shape[0]:
            return
        capacity = max(needed, int(self.matrix.shape[0] * 1.25) + 1024)
        matrix = np.zeros((capacity, self.dimension), dtype=np.float32)
        matrix[: self.size] = self.matrix[: self.size]
        ids = np.full(capacity, -1, dtype=np.int64)
        ids[: self.size] = self.ids[: self.size]
        sources = np.zeros(capacity, dtype=np.int32)
        sources[: self.size] = self.sources[: self.size]
        self.matrix, self.ids, self.sources = matrix, ids, sources

    def apply(self, changes: Sequence[tuple[int, Matrix | None, str | None]]) -> None:
        """Set each chunk's vector and source (None: the chunk has no vector any more)."""
        self.version += 1
        new = [c for c, vector, _ in changes if vector is not None and c not in self.rows]
        self.reserve(max(0, len(new) - len(self.free)))
        for chunk_id, vector, source_id in changes:
            row = self.rows.get(chunk_id)
            if vector is None or source_id is None:
                if row is not None:
                    del self.rows[chunk_id]
                    self.ids[row] = -1
                    self.matrix[row] = 0.0
                    self.free.append(row)
                continue
            if vector.shape != (self.dimension,):
                continue
            if row is None:
                if self.free:
                    row = self.free.pop()
                else:
                    row = self.size
                    self.size += 1
                self.rows[chunk_id] = row
                self.ids[row] = chunk_id
            self.matrix[row] = vector
            key = self.source_keys.get(source_id)
            if key is None:
                key = self.source_keys[source_id] = len(self.source_names)
                self.source_names.append(source_id)
            self.sources[row] = key
        if len(self.free) > 1024 and len(self.free) > self.size // 4:
            self._compact()

    def _compact(self) -> None:
        live = np.flatnonzero(self.ids[: self.size] >= 0)
        self.matrix = np.ascontiguousarray(self.matrix[live])
        self.ids = self.ids[live].copy()
        self.sources = self.sources[live].copy()
        self.size = len(live)
        self.rows = {int(c): i for i, c in enumerate(self.ids)}
        self.free = []


_INDEXES: dict[tuple[str, int], _DenseIndex] = {}
# The threads that score the matrix: few, so that their malloc arenas (one per thread, each keeping what
# numpy's temporaries left) do not add to the memory the matrix itself takes.
_SCORING = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="dense-scoring")
# Scans of the whole matrix (large scopes) split across two threads when there are two CPUs (see _scores).
_SCAN_HELPER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dense-scan") if (os.cpu_count() or 1) > 1 else None
_SPLIT_MIN_ROWS = 16 * _SCORE_BLOCK
_INDEXES_LOCK = threading.Lock()
_LOAD_LOCKS: dict[tuple[int, tuple[str, int]], asyncio.Lock] = {}


def _load_lock(key: tuple[str, int]) -> asyncio.Lock:
    """The lock serialising whole loads of one index within this event loop."""
    with _INDEXES_LOCK:
        return _LOAD_LOCKS.setdefault((id(asyncio.get_running_loop()), key), asyncio.Lock())


def _database_key(conn: AsyncConnection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


# How each database hands a vector over: SQLite's BLOB is the float32 array itself; pgvector's binary
# form (`vector_send`) is a 4-byte header (dimension, unused) and big-endian float32 values.
_VECTOR_SQL = {"sqlite": "v.vector", "postgresql": "vector_send(v.embedding)"}


def _decode(dialect: str, blob: Any) -> Matrix:
    if dialect == "sqlite":
        return np.frombuffer(blob, dtype=np.float32)
    return cast(Matrix, np.frombuffer(blob, dtype=">f4", offset=4))


def _changes(dialect: str, rows: Any) -> list[tuple[int, Matrix | None, str | None]]:
    return [
        (int(c), None if v is None else _decode(dialect, v), None if sid is None else str(sid)) for c, v, sid in rows
    ]


async def _current_index(conn: AsyncConnection, model: EmbeddingModel) -> _DenseIndex | None:
    """This process's index of the model, brought up to the database's latest committed state; None on
    PostgreSQL when this transaction has written vectors of the model that it has not committed (or, in
    a rare race, when other queries kept updating the index faster than this one could): the caller
    then scans exactly with pgvector."""
    if conn.dialect.name == "sqlite":
        return await _current_index_sqlite(conn, model)
    return await _current_index_postgres(conn, model)


def _index_for(key: tuple[str, int], instance: str, dimension: int) -> _DenseIndex:
    with _INDEXES_LOCK:
        index = _INDEXES.get(key)
        if index is None or index.instance != instance or index.dimension != dimension:
            index = _INDEXES[key] = _DenseIndex(instance, dimension)
        return index


async def _current_index_sqlite(conn: AsyncConnection, model: EmbeddingModel) -> _DenseIndex | None:
    store = _sql_store(conn)
    (state,) = await store.rows(
        conn,
        "SELECT (SELECT max(id) FROM rag_vector_log), instance, pruned_through FROM rag_vector_log_state WHERE id = 1",
    )
    newest, instance, pruned = int(state[0] or 0), str(state[1]), int(state[2])
    key = (_database_key(conn), model.id)
    index = _index_for(key, instance, model.dimension)
    if index.watermark >= newest and index.watermark >= 0:
        return index
    if index.watermark < pruned or index.watermark < 0 or index.watermark > newest:
        # First use, or the log no longer reaches back to our watermark (or the database was replaced).
        return await _load_once(conn, index, model, {"watermark": newest})
    start = index.watermark
    # The current state of every chunk the log mentions past the watermark, not a replay of the log:
    # applying it is idempotent, whatever another connection of this process applied meanwhile.
    rows = await store.rows(
        conn,
        "SELECT l.chunk_id, v.vector, c.source_id FROM (SELECT DISTINCT chunk_id FROM rag_vector_log "
        "WHERE model_id = :m AND id > :lo AND id <= :hi) AS l "
        "LEFT JOIN rag_vectors v ON v.model_id = :m AND v.chunk_id = l.chunk_id "
        "LEFT JOIN rag_chunks c ON c.id = v.chunk_id",
        {"m": model.id, "lo": start, "hi": newest},
    )
    changes = _changes("sqlite", rows)
    ((pruned,),) = await store.rows(conn, "SELECT pruned_through FROM rag_vector_log_state")
    if pruned > start:
        # A writer pruned the log while we read it: what we read may lack entries.
        return await _load_whole(conn, key, instance, model, {"watermark": newest})
    with index.lock:
        if index.watermark < newest:
            index.apply(changes)
            index.watermark = newest
    return index


# A transaction id above any real one: asks the log for no transactions (the index is not loaded yet).
_NO_XID = 2**62


async def _current_index_postgres(conn: AsyncConnection, model: EmbeddingModel) -> _DenseIndex | None:
    key = (_database_key(conn), model.id)
    for _ in range(8):
        known = _INDEXES.get(key)
        loaded = known is not None and known.watermark >= 0
        # One statement, one snapshot: its xmin, and the committed transactions at or above our `xmin`
        # that have logged changes of this model (those in `seen` are applied already).
        state = (
            await conn.execute(
                text(
                    "SELECT s.instance, s.pruned_xid::text, pg_snapshot_xmin(pg_current_snapshot())::text, "
                    "EXISTS (SELECT 1 FROM rag_vector_log WHERE model_id = :m "
                    "AND xid = pg_current_xact_id_if_assigned()), "
                    "ARRAY(SELECT DISTINCT xid::text FROM rag_vector_log WHERE model_id = :m "
                    "AND xid >= CAST(:lo AS xid8) AND xid IS DISTINCT FROM pg_current_xact_id_if_assigned()) "
                    "FROM rag_vector_log_state s WHERE s.id = 1"
                ),
                {"m": model.id, "lo": known.xmin if known is not None and loaded else _NO_XID},
            )
        ).one()
        instance, pruned_xid, xmin, own = str(state[0]), int(state[1]), int(state[2]), bool(state[3])
        if own:
            return None
        index = _index_for(key, instance, model.dimension)
        if index is not known or not loaded or _missed_prune(index, pruned_xid):
            # First use, another database, or a prune deleted entries we may not have applied. Every
            # transaction below `xmin`, and every one a prune so far deleted entries of, is visible to
            # the load's later statements.
            return await _load_once(conn, index, model, {"xmin": xmin, "pruned_xid": pruned_xid})
        version = index.version
        new = {int(x) for x in state[4]} - index.seen
        changes: list[tuple[int, Matrix | None, str | None]] = []
        if new:
            rows = await conn.execute(
                text(
                    "SELECT l.chunk_id, vector_send(v.embedding), c.source_id FROM (SELECT DISTINCT chunk_id "
                    "FROM rag_vector_log WHERE model_id = :m AND xid = ANY(CAST(:x AS xid8[]))) AS l "
                    "LEFT JOIN rag_vectors v ON v.model_id = :m AND v.chunk_id = l.chunk_id "
                    "LEFT JOIN rag_chunks c ON c.id = v.chunk_id"
                ),
                {"m": model.id, "x": sorted(new)},
            )
            changes = _changes("postgresql", rows)
            pruned = (await conn.execute(text("SELECT pruned_xid::text FROM rag_vector_log_state"))).scalar_one()
            if _missed_prune(index, int(pruned)):
                continue  # pruned while we read: load whole on the next round
        with index.lock:
            if new and index.version != version:
                continue  # another query of this process applied a later state meanwhile: read again
            if changes:
                index.apply(changes)
            index.seen |= new
            index.pruned_xid = max(index.pruned_xid, pruned_xid)
            if xmin > index.xmin:
                index.xmin = xmin
                index.seen = {x for x in index.seen if x >= xmin}
        return index
    # Other queries of this process kept applying newer states under this one: rather than wait longer,
    # this query scans exactly (rare; correct either way).
    return None


def _missed_prune(index: _DenseIndex, pruned_xid: int) -> bool:
    """Whether a prune since the index's last look deleted entries of transactions it may not have applied
    (at or above its `xmin`). Compared with what it knew, not with `xmin` alone: a transaction left open
    holds `xmin` back, and each query would otherwise reload after a prune until it ends."""
    return pruned_xid > index.pruned_xid and pruned_xid >= index.xmin


async def _load_once(
    conn: AsyncConnection, index: _DenseIndex, model: EmbeddingModel, position: dict[str, int]
) -> _DenseIndex | None:
    """`_load_whole` in place of the unloaded `index`, one load at a time: concurrent first queries would
    each hold a copy of every vector."""
    key = (_database_key(conn), model.id)
    async with _load_lock(key):
        current = _INDEXES.get(key)
        if current is None or current is index or current.watermark < 0:
            return await _load_whole(conn, key, index.instance, model, position)
    return await _current_index(conn, model)  # loaded meanwhile: only bring it up to date


async def _load_whole(
    conn: AsyncConnection,
    key: tuple[str, int],
    instance: str,
    model: EmbeddingModel,
    position: dict[str, int],
) -> _DenseIndex:
    """Load the model's vectors whole; `position` is the log position read before, as the index's
    attributes (anything that commits in between is also in the log past it, and applied again,
    idempotently, next time)."""
    dialect = conn.dialect.name
    fresh = _DenseIndex(instance, model.dimension)
    total = (
        await conn.execute(text("SELECT count(*) FROM rag_vectors WHERE model_id = :m"), {"m": model.id})
    ).scalar_one()
    fresh.reserve(int(total))
    # Streamed in slices: the whole table's blobs at once would double the process's peak memory.
    stream = await conn.stream(
        text(
            f"SELECT v.chunk_id, {_VECTOR_SQL[dialect]}, c.source_id FROM rag_vectors v "
            "JOIN rag_chunks c ON c.id = v.chunk_id WHERE v.model_id = :m"
        ),
        {"m": model.id},
    )
    async for part in stream.partitions(4096):
        fresh.apply(_changes(dialect, part))
    fresh.watermark = 0
    for name, value in position.items():
        setattr(fresh, name, value)
    live = await _live_models(conn)
    with _INDEXES_LOCK:
        _INDEXES[key] = fresh
        _evict_others(key[0], instance, live)
    return fresh


async def _live_models(conn: AsyncConnection) -> set[int]:
    rows = await conn.execute(text("SELECT id FROM rag_embedding_models WHERE state <> 'retired'"))
    return {int(r[0]) for r in rows}


def _evict_others(database: str, instance: str, live: set[int]) -> None:
    """Drop this database's indexes of retired or deleted models (their memory is the bulk of the process's)."""
    for key, index in list(_INDEXES.items()):
        if key[0] == database and (key[1] not in live or index.instance != instance):
            del _INDEXES[key]


def _remember_share(hint: tuple[str, frozenset[int], bool, int], share: float) -> None:
    if len(_SHARES) > 1000:
        _SHARES.clear()
    _SHARES[hint] = share


async def _start_matrix(
    conn: AsyncConnection, index: _DenseIndex, q: Matrix, scope: RetrievalScope, k: int, small_scope: int | None
) -> PendingDense:
    limit = small_scope if small_scope is not None else max(SMALL_SCOPE, int(GATHER_SHARE * index.size))
    count = _known_size(conn, scope, limit)
    if count is None or count <= limit:
        if count is None:
            # The share of sources in scope (two counts, an over-estimate) rules out most large scopes
            # before their sources are listed: listing 10,000 of them costs more than a large-scope search.
            count = math.ceil(await _sql_store(conn).visible_share(conn, scope) * index.size)
        if count <= 1.5 * limit:
            sources = await visible_source_ids(conn, scope, limit + 1)
            with index.lock:
                visible = np.zeros(len(index.source_names), dtype=bool)
                visible[[key for key in map(index.source_keys.get, sources) if key is not None]] = True
                count = int(np.count_nonzero(visible[index.sources[: index.size]]))
            if len(sources) <= limit and count <= limit:
                _remember_size(conn, scope, limit, count)
                work = asyncio.get_running_loop().run_in_executor(_SCORING, _score_rows, index, q, visible, k)
                return PendingDense(lambda conn: _awaited(work))
            count = max(count, limit + 1)
        _remember_size(conn, scope, limit, count)
    scored = asyncio.get_running_loop().run_in_executor(_SCORING, _score_all, index, q)

    async def finish(conn: AsyncConnection) -> list[tuple[int, float]]:
        return await _search_large(conn, index, await scored, scope, k)

    return PendingDense(finish)


async def _awaited(work: asyncio.Future[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    return await work


def _score_rows(index: _DenseIndex, q: Matrix, visible: npt.NDArray[np.bool_], k: int) -> list[tuple[int, float]]:
    """Small scopes: the rows of the visible sources (by source key) alone, scored exactly (in a worker
    thread). The rows are found here, under the lock: the layout may have changed since the listing."""
    with index.lock:
        if len(visible) < len(index.source_names):  # sources first seen since: not in the listing
            visible = np.concatenate([visible, np.zeros(len(index.source_names) - len(visible), dtype=bool)])
        ids = index.ids[: index.size]
        rows = np.flatnonzero(visible[index.sources[: index.size]] & (ids >= 0))
        ids = ids[rows]
        scores = _scores(index.matrix, q, rows, len(rows))
    return _best(ids, scores, k)


def _score_all(index: _DenseIndex, q: Matrix) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], Matrix]:
    """Large scopes: every row's id, source key and score (in a worker thread)."""
    with index.lock:
        # Free rows (id -1, zero vectors) stay in: filtering them out of 100,000 scores costs more
        # than skipping the few that reach a candidate band.
        ids = index.ids[: index.size].copy()
        sources = index.sources[: index.size].copy()
        scores = _scores(index.matrix, q, None, index.size)
    return ids, sources, scores


def _scores(matrix: Matrix, q: Matrix, rows: npt.NDArray[np.intp] | None, count: int) -> Matrix:
    """`matrix[rows] @ q` (or of its first `count` rows), a block of rows at a time: single-threaded
    products of cache-sized blocks cost the same CPU as one product over 100,000 rows, whose second
    BLAS thread only spins on a busy machine (up to twice the CPU and wall time measured here), and a
    gathered scope is never copied whole. A whole-matrix scan gives its second half to `_SCAN_HELPER`:
    a thread of ours waits without spinning, so on a free core the scan takes half the time for the same
    CPU. The caller holds the index's lock until both halves are done."""
    out = np.empty(count, dtype=np.float32)
    if rows is None and _SCAN_HELPER is not None and count >= _SPLIT_MIN_ROWS:
        middle = count // 2 // _SCORE_BLOCK * _SCORE_BLOCK
        second = _SCAN_HELPER.submit(_fill_scores, matrix, q, None, out, middle, count)
        try:
            _fill_scores(matrix, q, None, out, 0, middle)
        finally:
            second.result()  # never leave the helper reading the matrix after the lock is released
        return out
    _fill_scores(matrix, q, rows, out, 0, count)
    return out


def _fill_scores(
    matrix: Matrix, q: Matrix, rows: npt.NDArray[np.intp] | None, out: Matrix, begin: int, end: int
) -> None:
    for start in range(begin, end, _SCORE_BLOCK):
        stop = min(end, start + _SCORE_BLOCK)
        block = matrix[start:stop] if rows is None else matrix[rows[start:stop]]
        np.matmul(block, q, out=out[start:stop])


async def _search_large(
    conn: AsyncConnection,
    index: _DenseIndex,
    scored: tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], Matrix],
    scope: RetrievalScope,
    k: int,
) -> list[tuple[int, float]]:
    ids, sources, scores = scored
    n = len(ids)
    if n == 0:
        return []
    # Start from the share of candidates this scope's last search found visible (a hint: wide scopes
    # need few candidates, a 10 % scope ten times more) and widen by what this search observes. All ties
    # with the last candidate are included, so every chunk not yet checked scores strictly below every
    # checked one: the result is exact whatever the hint.
    hint = _scope_key(conn, scope, 0)
    share = _SHARES.get(hint, 1.0)
    want = min(n, MAX_FIRST_CANDIDATES, max(FIRST_CANDIDATES_PER_K * k, math.ceil(1.5 * k / share)))
    checked_above = math.inf
    checked = 0
    found_ids: list[int] = []
    found_scores: list[float] = []
    while True:
        threshold = float(np.partition(scores, n - want)[n - want]) if want < n else -math.inf
        band = np.flatnonzero((scores >= threshold) & (scores < checked_above) & (ids >= 0))
        band_ids = ids[band]
        band_sources = sources[band]
        names = [index.source_names[s] for s in np.unique(band_sources)]
        visible = await _visible_sources_among(conn, scope, names)
        keep = np.isin(band_sources, [index.source_keys[v] for v in visible])
        found_ids += band_ids[keep].tolist()
        found_scores += scores[band][keep].tolist()
        checked += len(band_ids)
        share = max(len(found_ids), 1) / max(checked, 1)
        if len(found_ids) >= k or want >= n:
            break
        checked_above = threshold
        want = min(n, max(2 * want, math.ceil(1.5 * k / share)))
    _remember_share(hint, share)
    return _best(np.array(found_ids, dtype=np.int64), np.array(found_scores, dtype=np.float32), k)


# -- PostgreSQL: this transaction's own vectors ------------------------------------------------------


async def _search_postgres_exact(
    conn: AsyncConnection, model: EmbeddingModel, q: Matrix, scope: RetrievalScope, k: int
) -> list[tuple[int, float]]:
    """An exact pgvector scan inside the access join, for a transaction that has written vectors of the
    model and not committed them (the shared matrix holds committed state only)."""
    store = _sql_store(conn)
    sql = (
        f"WITH vs AS ({store._visible_sources(scope)}), "
        "d AS (SELECT v.chunk_id, v.embedding <#> CAST(:q AS vector) AS distance "
        "FROM vs JOIN sources s ON s.id = vs.id JOIN rag_chunks c ON c.source_id = s.id "
        "JOIN rag_vectors v ON v.model_id = :m AND v.chunk_id = c.id WHERE s.state = 'vectorized') "
        "SELECT chunk_id, distance FROM d ORDER BY distance, chunk_id LIMIT :k"
    )
    params = {**store._scope_params(scope), "q": _pg_literal(q), "m": model.id, "k": k}
    rows = await conn.execute(text(sql), params)
    return [(int(c), -float(d)) for c, d in rows]
