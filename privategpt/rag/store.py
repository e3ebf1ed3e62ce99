"""Storage of the inverted index, behind one small interface with one implementation per database.

The stores only move rows; all BM25 arithmetic happens in `privategpt.rag.retrieval`, in Python, from
the integers read here, so both databases produce bit-identical scores.

Every read that can return a chunk carries the caller's access scope inside its SQL (joined against
`sources` and `source_groups`), so a chunk the caller may not see is never even a candidate.
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from privategpt.db import driver_connection, on_sqlite_thread

# Bound-variable batches for SQLite: far below its 32,766 limit, large enough to amortise a round trip.
_SQLITE_BATCH = 4000
_PG_BATCH = 50_000
# Impacts are stored as integers: BM25 term weight (at most k1 + 1) times this.
IMPACT_SCALE = 1000
_MAX_TF = 32_767

# A chunk's term vector: records of (term id: uint32, tf: uint16), big-endian, sorted by term id.
_RECORD = struct.Struct(">IH")
RECORD_SIZE = _RECORD.size


def encode_terms(pairs: Sequence[tuple[int, int]]) -> bytes:
    """Pack (term id, tf) pairs into a chunk's term vector."""
    ordered = sorted(pairs)
    return struct.pack(">" + "IH" * len(ordered), *[v for term_id, tf in ordered for v in (term_id, min(tf, _MAX_TF))])


_STATS = "SELECT n_chunks, total_length FROM rag_stats WHERE id = 1"


def _expanded(sql: str, params: Mapping[str, Any], expanding: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """`IN :name` of a list parameter as `IN (:name__0, :name__1, ...)`, for sqlite3's named parameters
    (what SQLAlchemy's expanding parameters render; an empty list matches nothing, as there)."""
    values = dict(params)
    for name in expanding:
        items = list(values.pop(name))
        names = [f"{name}__{i}" for i in range(len(items))]
        values.update(zip(names, items, strict=True))
        listed = ", ".join(f":{n}" for n in names) if names else "SELECT NULL WHERE 0"
        sql = re.sub(rf":{name}\b", f"({listed})", sql)
    return sql, values


@dataclass(frozen=True)
class RetrievalScope:
    """What a caller may retrieve: sources in any of `group_ids`, plus public ones if `include_public`."""

    group_ids: frozenset[int]
    include_public: bool

    @property
    def is_empty(self) -> bool:
        """True when nothing at all is visible (no groups and no public sources)."""
        return not self.group_ids and not self.include_public


@dataclass(frozen=True)
class PreparedChunk:
    """A chunk with its analysed terms, ready to be written."""

    ordinal: int
    heading_path: tuple[str, ...]
    text: str
    length: int
    terms: dict[str, int]
    # The language the chunk was analysed in; None: the source's.
    language: str | None = None


@dataclass(frozen=True)
class PreparedSource:
    """All chunks of one source, analysed in one language."""

    language: str
    chunks: tuple[PreparedChunk, ...]


@dataclass(frozen=True)
class CorpusStats:
    """Number of chunks and their total length in terms, over the whole index."""

    n_chunks: int
    total_length: int

    @property
    def avg_length(self) -> float:
        """Mean chunk length in terms."""
        return self.total_length / self.n_chunks if self.n_chunks else 0.0


@dataclass(frozen=True)
class TermStat:
    """A term's id and document frequency (number of chunks containing it)."""

    term_id: int
    df: int


@dataclass(frozen=True)
class ChunkRow:
    """What is shown of a retrieved chunk."""

    chunk_id: int
    source_id: str
    source_name: str
    text: str
    heading_path: tuple[str, ...]


# (chunk id, chunk length, term vector)
Candidate = tuple[int, int, bytes]
# (term id, postings to read, integer query weight): one term of an impact walk.
ImpactTerm = tuple[int, int, int]


class IndexStore(Protocol):
    """The operations retrieval needs from a database."""

    async def write(
        self, conn: AsyncConnection, items: Sequence[tuple[str, PreparedSource]], k1: float, b: float
    ) -> None:
        """Replace the chunks of each source with the prepared ones."""
        ...

    async def delete(self, conn: AsyncConnection, source_ids: Sequence[str]) -> None:
        """Remove every chunk of these sources."""
        ...

    async def rows(
        self, conn: AsyncConnection, sql: str, params: Mapping[str, Any] | None = None, *expanding: str
    ) -> list[Sequence[Any]]:
        """The rows of a SELECT of retrieval in the caller's transaction; `expanding`: the list parameters
        of its `IN :name` tests."""
        ...

    async def lookup_terms(
        self, conn: AsyncConnection, terms: Sequence[str]
    ) -> tuple[CorpusStats, dict[str, TermStat]]:
        """Corpus statistics and the id/document frequency of each known term."""
        ...

    async def count_visible(self, conn: AsyncConnection, scope: RetrievalScope, cap: int) -> int:
        """Number of chunks in scope (an over-estimate), counted up to `cap` + 1."""
        ...

    async def chunks_in_scope(self, conn: AsyncConnection, scope: RetrievalScope) -> list[Candidate]:
        """Every chunk in scope (only called for small scopes)."""
        ...

    async def top_candidates(
        self, conn: AsyncConnection, scope: RetrievalScope, plan: Sequence[tuple[int, int]]
    ) -> list[Candidate]:
        """For each (term id, limit): the chunks in scope where the term weighs most, at most `limit`."""
        ...

    async def visible_share(self, conn: AsyncConnection, scope: RetrievalScope) -> float:
        """Share of the sources in scope (an over-estimate: links and public sources counted apart)."""
        ...

    async def impact_candidates(
        self, conn: AsyncConnection, scope: RetrievalScope, plan: Sequence[ImpactTerm], limit: int
    ) -> list[Candidate]:
        """The `limit` chunks with the highest summed weight * impact over each term's best postings,
        those in scope only, with what exact scoring needs."""
        ...

    async def fetch(self, conn: AsyncConnection, scope: RetrievalScope, chunk_ids: Sequence[int]) -> list[ChunkRow]:
        """Chunks with their source names, re-checked against the scope."""
        ...


def _impact(tf: int, length: int, avg_length: float, k1: float, b: float) -> int:
    norm = k1 * (1.0 - b + b * length / avg_length) if avg_length > 0 else k1
    return round(IMPACT_SCALE * tf * (k1 + 1.0) / (tf + norm))


def _batches(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


# (source id, language, chunk) of every chunk to write
ChunkItem = tuple[str, str, PreparedChunk]

_UPDATE_STATS = (
    "UPDATE rag_stats SET n_chunks = n_chunks + :n, total_length = total_length + :len "
    "WHERE id = 1 RETURNING n_chunks, total_length"
)


def _flatten(items: Sequence[tuple[str, PreparedSource]]) -> list[ChunkItem]:
    return [(source_id, c.language or prepared.language, c) for source_id, prepared in items for c in prepared.chunks]


def _avg(stats: Sequence[Any]) -> float:
    """The average chunk length from a (n_chunks, total_length) row."""
    return int(stats[1]) / int(stats[0]) if stats[0] else 0.0


def _df_increments(chunks: Sequence[ChunkItem]) -> list[tuple[str, int]]:
    """(term, number of the chunks containing it), sorted by term: the order all writers take term rows in."""
    df: Counter[str] = Counter()
    for _, _, c in chunks:
        df.update(c.terms.keys())
    return sorted(df.items())


def _postings(
    chunks: Sequence[ChunkItem], chunk_ids: Sequence[int], term_ids: dict[str, int], avg: float, k1: float, b: float
) -> list[tuple[int, int, int, int]]:
    """(chunk id, term id, tf, impact) of every posting of the chunks."""
    return [
        (chunk_id, term_ids[term], min(tf, _MAX_TF), _impact(tf, c.length, avg, k1, b))
        for chunk_id, (_, _, c) in zip(chunk_ids, chunks, strict=True)
        for term, tf in c.terms.items()
    ]


class _SqlStore:
    """SQL shared by both databases; subclasses supply the dialect-specific statements."""

    def _public(self, s: str) -> str:
        raise NotImplementedError

    def _in(self, column: str, name: str) -> str:
        raise NotImplementedError

    def _no_index(self, column: str) -> str:
        """The column in a form the planner will not use an index for."""
        raise NotImplementedError

    def _bind(self, sql: str, *expanding: str) -> Any:
        raise NotImplementedError

    def _visible(self, scope: RetrievalScope, s: str = "s") -> str:
        """SQL predicate: source row `s` is searchable by this scope."""
        ors = []
        if scope.include_public:
            ors.append(self._public(s))
        if scope.group_ids:
            # The group test must be a filter on the source's few links: used as an index condition it
            # costs one index seek per group of the caller, for every candidate chunk.
            ors.append(
                f"EXISTS (SELECT 1 FROM source_groups sg WHERE sg.source_id = {s}.id"
                f" AND {self._in(self._no_index('sg.group_id'), 'scope_groups')})"
            )
        return f"{s}.state = 'vectorized' AND ({' OR '.join(ors) or '1 = 0'})"

    def _visible_sources(self, scope: RetrievalScope) -> str:
        """SQL query of the ids of candidate sources (state still to be checked)."""
        parts = []
        if scope.group_ids:
            parts.append(
                f"SELECT sg.source_id AS id FROM source_groups sg WHERE {self._in('sg.group_id', 'scope_groups')}"
            )
        if scope.include_public:
            parts.append(f"SELECT s.id AS id FROM sources s WHERE {self._public('s')}")
        return " UNION ".join(parts) or "SELECT NULL AS id WHERE 1 = 0"

    @staticmethod
    def _scope_params(scope: RetrievalScope) -> dict[str, Any]:
        return {"scope_groups": sorted(scope.group_ids)} if scope.group_ids else {}

    async def rows(
        self, conn: AsyncConnection, sql: str, params: Mapping[str, Any] | None = None, *expanding: str
    ) -> list[Sequence[Any]]:
        """The rows of a SELECT of retrieval in the caller's transaction; `expanding`: the list parameters
        of its `IN :name` tests."""
        return list(await conn.execute(self._bind(sql, *expanding), dict(params or {})))

    async def delete(self, conn: AsyncConnection, source_ids: Sequence[str]) -> None:
        for batch in _batches(list(source_ids), _SQLITE_BATCH):
            stmt = self._bind(f"DELETE FROM rag_chunks WHERE {self._in('source_id', 'ids')}", "ids")
            await conn.execute(stmt, {"ids": list(batch)})

    async def lookup_terms(
        self, conn: AsyncConnection, terms: Sequence[str]
    ) -> tuple[CorpusStats, dict[str, TermStat]]:
        row, term_rows = await self._stats_and_terms(conn, terms)
        stats = CorpusStats(int(row[0]), int(row[1]))
        found: dict[str, TermStat] = {}
        for term, term_id, df in term_rows:
            if df > 0:
                found[term] = TermStat(int(term_id), int(df))
        return stats, found

    async def _stats_and_terms(
        self, conn: AsyncConnection, terms: Sequence[str]
    ) -> tuple[Sequence[Any], list[Sequence[Any]]]:
        """The row of `rag_stats` and the (term, id, df) rows of these terms."""
        (row,) = await self.rows(conn, _STATS)
        if not terms:
            return row, []
        sql = f"SELECT term, id, df FROM rag_terms WHERE {self._in('term', 'terms')}"
        return row, await self.rows(conn, sql, {"terms": list(terms)}, "terms")

    async def count_visible(self, conn: AsyncConnection, scope: RetrievalScope, cap: int) -> int:
        # An over-estimate is fine (it only picks the query plan), so no DISTINCT and no state check;
        # each branch stops at the cap.
        limit = int(cap) + 1
        branches = []
        if scope.group_ids:
            branches.append(
                "SELECT count(*) FROM (SELECT 1 FROM source_groups sg "
                "JOIN rag_chunks c ON c.source_id = sg.source_id "
                f"WHERE {self._in('sg.group_id', 'scope_groups')} LIMIT {limit}) AS g"
            )
        if scope.include_public:
            branches.append(
                "SELECT count(*) FROM (SELECT 1 FROM sources s JOIN rag_chunks c ON c.source_id = s.id "
                f"WHERE {self._public('s')} LIMIT {limit}) AS p"
            )
        if not branches:
            return 0
        sql = "SELECT " + " + ".join(f"({b})" for b in branches)
        params = self._scope_params(scope)
        ((count,),) = await self.rows(conn, sql, params, *params)
        return int(count)

    async def visible_share(self, conn: AsyncConnection, scope: RetrievalScope) -> float:
        parts = []
        if scope.group_ids:
            parts.append(f"(SELECT count(*) FROM source_groups sg WHERE {self._in('sg.group_id', 'scope_groups')})")
        if scope.include_public:
            parts.append(f"(SELECT count(*) FROM sources s WHERE {self._public('s')})")
        sql = f"SELECT {' + '.join(parts) or '0'}, (SELECT count(*) FROM sources)"
        params = self._scope_params(scope)
        ((visible, total),) = await self.rows(conn, sql, params, *params)
        return min(1.0, int(visible) / int(total)) if total else 0.0

    def _impact_walk(self, plan: Sequence[ImpactTerm], params: dict[str, Any]) -> str:
        """SQL of (chunk_id, v) rows: each term's best postings by impact, v = weight * impact."""
        raise NotImplementedError

    def _walk_arrays(self, walk: str) -> str:
        """SQL of one row: the walk's chunk ids and values, each as one array (or list in a string)."""
        raise NotImplementedError

    @staticmethod
    def _array(value: Any) -> npt.NDArray[np.float64]:
        return np.array(value, dtype=np.float64)

    def _in_array(self, column: str, name: str) -> str:
        """SQL predicate: the column is in the array bound as `name` (`_bind_array` prepares its value)."""
        raise NotImplementedError

    def _bind_array(self, values: list[int]) -> Any:
        raise NotImplementedError

    async def impact_candidates(
        self, conn: AsyncConnection, scope: RetrievalScope, plan: Sequence[ImpactTerm], limit: int
    ) -> list[Candidate]:
        if not plan:
            return []
        # Two statements: index-only walks (no chunk row, no access probe per posting) read back whole,
        # their integer sums and the best `limit` of them computed here, then the rows of that pool under
        # the scope. At a 10 % scope the walk is 40,000 postings, whose GROUP BY and sort in the database
        # cost more than the numpy below (SQLite: 20 ms of CPU; PostgreSQL: a quarter of the statement).
        params: dict[str, Any] = {}
        (row,) = await self.rows(conn, self._walk_arrays(self._impact_walk(plan, params)), params)
        if row[0] is None or len(row[0]) == 0:
            return []
        chunk_ids, owner = np.unique(self._array(row[0]).astype(np.int64), return_inverse=True)
        # Integer sums far below 2**53, exact in float64: both databases pick the very same pool.
        totals = np.bincount(owner, weights=self._array(row[1]))
        pool = chunk_ids[np.lexsort((chunk_ids, -totals))[: int(limit)]].tolist()
        sql = (
            "SELECT c.id, c.length, c.terms FROM rag_chunks c CROSS JOIN sources s "
            f"WHERE {self._in_array('c.id', 'pool')} AND s.id = c.source_id AND {self._visible(scope)}"
        )
        scope_params = self._scope_params(scope)
        rows = await self.rows(conn, sql, {**scope_params, "pool": self._bind_array(pool)}, *scope_params)
        return cast(list[Candidate], rows)

    async def chunks_in_scope(self, conn: AsyncConnection, scope: RetrievalScope) -> list[Candidate]:
        sql = (
            f"WITH vs AS ({self._visible_sources(scope)}) "
            # CROSS JOIN makes SQLite start from the (small) visible set; PostgreSQL plans it freely.
            "SELECT c.id, c.length, c.terms FROM vs CROSS JOIN sources s CROSS JOIN rag_chunks c "
            "WHERE s.id = vs.id AND c.source_id = s.id AND s.state = 'vectorized'"
        )
        params = self._scope_params(scope)
        return cast(list[Candidate], await self.rows(conn, sql, params, *params))

    async def fetch(self, conn: AsyncConnection, scope: RetrievalScope, chunk_ids: Sequence[int]) -> list[ChunkRow]:
        if not chunk_ids:
            return []
        sql = (
            "SELECT c.id, c.source_id, s.name, c.text, c.heading_path FROM rag_chunks c "
            f"JOIN sources s ON s.id = c.source_id WHERE {self._in('c.id', 'chunks')} AND {self._visible(scope)}"
        )
        params = {**self._scope_params(scope), "chunks": list(chunk_ids)}
        rows = await self.rows(conn, sql, params, *params)
        return [ChunkRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), tuple(json.loads(r[4]))) for r in rows]

    # -- writing -------------------------------------------------------------------------------------

    async def write(
        self, conn: AsyncConnection, items: Sequence[tuple[str, PreparedSource]], k1: float, b: float
    ) -> None:
        await self.delete(conn, [source_id for source_id, _ in items])
        chunks = _flatten(items)
        if not chunks:
            return
        # First write of the transaction on rag_stats (unless the delete's trigger already took it): that
        # row lock orders all index writers, so they never deadlock on term rows.
        row = (
            await conn.execute(
                text(_UPDATE_STATS),
                {"n": len(chunks), "len": sum(c.length for _, _, c in chunks)},
            )
        ).one()
        term_ids = await self._upsert_terms(conn, _df_increments(chunks))
        vectors = [encode_terms([(term_ids[t], tf) for t, tf in c.terms.items()]) for _, _, c in chunks]
        chunk_ids = await self._insert_chunks(conn, chunks, vectors)
        await self._insert_postings(conn, _postings(chunks, chunk_ids, term_ids, _avg(row), k1, b))

    async def _upsert_terms(self, conn: AsyncConnection, increments: list[tuple[str, int]]) -> dict[str, int]:
        raise NotImplementedError

    async def _insert_chunks(
        self, conn: AsyncConnection, chunks: list[tuple[str, str, PreparedChunk]], vectors: list[bytes]
    ) -> list[int]:
        raise NotImplementedError

    async def _insert_postings(self, conn: AsyncConnection, rows: list[tuple[int, int, int, int]]) -> None:
        raise NotImplementedError


class SqliteStore(_SqlStore):
    """SQLite: the inverted index in WITHOUT ROWID tables, queried per term with early termination."""

    def _public(self, s: str) -> str:
        # Booleans are stored as 0/1; comparing to 1 lets SQLite use ix_sources_is_public.
        return f"{s}.is_public = 1"

    def _in(self, column: str, name: str) -> str:
        return f"{column} IN :{name}"

    def _no_index(self, column: str) -> str:
        return f"+{column}"

    def _walk_arrays(self, walk: str) -> str:
        return f"WITH walk AS ({walk}) SELECT group_concat(chunk_id), group_concat(v) FROM walk"

    @staticmethod
    def _array(value: Any) -> npt.NDArray[np.float64]:
        return np.array(str(value).split(","), dtype=np.float64)

    def _in_array(self, column: str, name: str) -> str:
        # One JSON parameter: an expanded IN list of thousands of values costs SQLAlchemy milliseconds.
        return f"{column} IN (SELECT value FROM json_each(:{name}))"

    def _bind_array(self, values: list[int]) -> Any:
        return json.dumps(values)

    def _bind(self, sql: str, *expanding: str) -> Any:
        return text(sql).bindparams(*(bindparam(n, expanding=True) for n in expanding))

    async def rows(
        self, conn: AsyncConnection, sql: str, params: Mapping[str, Any] | None = None, *expanding: str
    ) -> list[Sequence[Any]]:
        # Straight to aiosqlite: one hop to its thread, where SQLAlchemy's cursor takes four (cursor,
        # execute, fetch, close) and its execution path costs more CPU than most of these statements.
        sql, values = _expanded(sql, params or {}, expanding)
        return list(await (await driver_connection(conn)).execute_fetchall(sql, values))

    async def _stats_and_terms(
        self, conn: AsyncConnection, terms: Sequence[str]
    ) -> tuple[Sequence[Any], list[Sequence[Any]]]:
        # Both statements in one hop.
        def read(sqlite: sqlite3.Connection) -> tuple[Sequence[Any], list[Sequence[Any]]]:
            row = sqlite.execute(_STATS).fetchone()
            return row, sqlite.execute(_SQLITE_TERM_STATS, (json.dumps(list(terms)),)).fetchall() if terms else []

        return await on_sqlite_thread(conn, read)

    async def top_candidates(
        self, conn: AsyncConnection, scope: RetrievalScope, plan: Sequence[tuple[int, int]]
    ) -> list[Candidate]:
        if not plan:
            return []
        # CROSS JOIN fixes SQLite's join order: walk the term's postings by impact, then check access,
        # so that the LIMIT stops the walk after enough visible postings.
        parts = [
            "SELECT * FROM (SELECT p.chunk_id, c.length, c.terms FROM rag_postings p "
            "CROSS JOIN rag_chunks c CROSS JOIN sources s "
            f"WHERE p.term_id = :t{i} AND c.id = p.chunk_id AND s.id = c.source_id AND {self._visible(scope)} "
            f"ORDER BY p.impact DESC, p.chunk_id LIMIT :l{i})"
            for i in range(len(plan))
        ]
        params: dict[str, Any] = self._scope_params(scope)
        for i, (term_id, limit) in enumerate(plan):
            params[f"t{i}"] = term_id
            params[f"l{i}"] = limit
        rows = await self.rows(conn, " UNION ALL ".join(parts), params, *self._scope_params(scope))
        return cast(list[Candidate], rows)

    def _impact_walk(self, plan: Sequence[ImpactTerm], params: dict[str, Any]) -> str:
        parts = []
        for i, (term_id, limit, weight) in enumerate(plan):
            params.update({f"t{i}": term_id, f"l{i}": limit, f"w{i}": weight})
            parts.append(
                f"SELECT chunk_id, impact * :w{i} AS v FROM (SELECT chunk_id, impact FROM rag_postings "
                f"WHERE term_id = :t{i} ORDER BY impact DESC, chunk_id LIMIT :l{i})"
            )
        return " UNION ALL ".join(parts)

    async def write(
        self, conn: AsyncConnection, items: Sequence[tuple[str, PreparedSource]], k1: float, b: float
    ) -> None:
        await on_sqlite_thread(conn, lambda sqlite: write_sqlite(sqlite, items, k1, b))


# The statements of `write_sqlite`; sets of ids travel as one JSON parameter.
_SQLITE_DELETE = "DELETE FROM rag_chunks WHERE source_id IN (SELECT value FROM json_each(?))"
_SQLITE_UPSERT_TERM = (
    "INSERT INTO rag_terms (term, df) VALUES (?, ?) ON CONFLICT (term) DO UPDATE SET df = df + excluded.df"
)
_SQLITE_TERM_IDS = "SELECT term, id FROM rag_terms WHERE term IN (SELECT value FROM json_each(?))"
_SQLITE_TERM_STATS = "SELECT term, id, df FROM rag_terms WHERE term IN (SELECT value FROM json_each(?))"
_SQLITE_INSERT_CHUNK = (
    "INSERT INTO rag_chunks (source_id, length, terms, ordinal, language, heading_path, text) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SQLITE_INSERT_POSTING = "INSERT INTO rag_postings (chunk_id, term_id, tf, impact) VALUES (?, ?, ?, ?)"


def delete_sqlite(sqlite: sqlite3.Connection, source_ids: Sequence[str]) -> None:
    """`IndexStore.delete` on SQLite's own connection (see `on_sqlite_thread`)."""
    if source_ids:
        sqlite.execute(_SQLITE_DELETE, (json.dumps(list(source_ids)),))


def write_sqlite(sqlite: sqlite3.Connection, items: Sequence[tuple[str, PreparedSource]], k1: float, b: float) -> None:
    """`IndexStore.write` on SQLite's own connection, in its thread: the ingestion worker writes a batch's
    index rows, states and jobs in one call there (`on_sqlite_thread`)."""
    delete_sqlite(sqlite, [source_id for source_id, _ in items])
    chunks = _flatten(items)
    if not chunks:
        return
    stats = sqlite.execute(_UPDATE_STATS, {"n": len(chunks), "len": sum(c.length for _, _, c in chunks)}).fetchall()[0]
    increments = _df_increments(chunks)
    sqlite.executemany(_SQLITE_UPSERT_TERM, increments)
    term_ids: dict[str, int] = dict(
        sqlite.execute(_SQLITE_TERM_IDS, (json.dumps([term for term, _ in increments]),)).fetchall()
    )
    chunk_ids: list[int] = []
    for source_id, language, c in chunks:
        vector = encode_terms([(term_ids[t], tf) for t, tf in c.terms.items()])
        row = (source_id, c.length, vector, c.ordinal, language, json.dumps(list(c.heading_path)), c.text)
        chunk_ids.append(cast(int, sqlite.execute(_SQLITE_INSERT_CHUNK, row).lastrowid))
    sqlite.executemany(_SQLITE_INSERT_POSTING, _postings(chunks, chunk_ids, term_ids, _avg(stats), k1, b))


class PostgresStore(_SqlStore):
    """PostgreSQL: the same index; arrays instead of expanded IN lists, LATERAL for per-term limits."""

    def _public(self, s: str) -> str:
        return f"{s}.is_public"

    def _in(self, column: str, name: str) -> str:
        return f"{column} = ANY(:{name})"

    def _no_index(self, column: str) -> str:
        return f"({column} + 0)"

    def _walk_arrays(self, walk: str) -> str:
        return f"WITH walk AS ({walk}) SELECT array_agg(chunk_id), array_agg(v) FROM walk"

    def _in_array(self, column: str, name: str) -> str:
        return f"{column} = ANY(CAST(:{name} AS integer[]))"

    def _bind_array(self, values: list[int]) -> Any:
        return values

    def _bind(self, sql: str, *expanding: str) -> Any:
        return text(sql)

    async def top_candidates(
        self, conn: AsyncConnection, scope: RetrievalScope, plan: Sequence[tuple[int, int]]
    ) -> list[Candidate]:
        if not plan:
            return []
        sql = (
            "SELECT x.chunk_id, x.length, x.terms "
            "FROM unnest(CAST(:terms AS integer[]), CAST(:limits AS integer[])) AS q(term_id, lim) "
            "CROSS JOIN LATERAL (SELECT p.chunk_id, c.length, c.terms FROM rag_postings p "
            "JOIN rag_chunks c ON c.id = p.chunk_id JOIN sources s ON s.id = c.source_id "
            f"WHERE p.term_id = q.term_id AND {self._visible(scope)} "
            "ORDER BY p.impact DESC, p.chunk_id LIMIT q.lim) AS x"
        )
        params = {
            **self._scope_params(scope),
            "terms": [t for t, _ in plan],
            "limits": [limit for _, limit in plan],
        }
        return cast(list[Candidate], await self.rows(conn, sql, params))

    def _impact_walk(self, plan: Sequence[ImpactTerm], params: dict[str, Any]) -> str:
        params.update(
            {
                "walk_terms": [t for t, _, _ in plan],
                "walk_limits": [limit for _, limit, _ in plan],
                "walk_weights": [w for _, _, w in plan],
            }
        )
        return (
            "SELECT x.chunk_id, CAST(x.impact AS bigint) * q.w AS v "
            "FROM unnest(CAST(:walk_terms AS integer[]), CAST(:walk_limits AS integer[]), "
            "CAST(:walk_weights AS bigint[])) AS q(term_id, lim, w) "
            "CROSS JOIN LATERAL (SELECT p.chunk_id, p.impact FROM rag_postings p WHERE p.term_id = q.term_id "
            "ORDER BY p.impact DESC, p.chunk_id LIMIT q.lim) AS x"
        )

    async def _upsert_terms(self, conn: AsyncConnection, increments: list[tuple[str, int]]) -> dict[str, int]:
        ids: dict[str, int] = {}
        for batch in _batches(increments, _PG_BATCH):
            rows = await conn.execute(
                text(
                    "INSERT INTO rag_terms (term, df) "
                    "SELECT t, d FROM unnest(CAST(:terms AS text[]), CAST(:dfs AS integer[])) AS u(t, d) "
                    "ORDER BY t "
                    "ON CONFLICT (term) DO UPDATE SET df = rag_terms.df + EXCLUDED.df RETURNING term, id"
                ),
                {"terms": [t for t, _ in batch], "dfs": [d for _, d in batch]},
            )
            ids.update((str(t), int(i)) for t, i in rows)
        return ids

    async def _insert_chunks(
        self, conn: AsyncConnection, chunks: list[tuple[str, str, PreparedChunk]], vectors: list[bytes]
    ) -> list[int]:
        ids: list[int] = []
        rows = list(zip(chunks, vectors, strict=True))
        for batch in _batches(rows, 5000):
            result = await conn.execute(
                text(
                    "INSERT INTO rag_chunks (source_id, length, terms, ordinal, language, heading_path, text) "
                    "SELECT * FROM unnest(CAST(:sources AS varchar[]), CAST(:lengths AS integer[]), "
                    "CAST(:vectors AS bytea[]), CAST(:ordinals AS integer[]), CAST(:languages AS varchar[]), "
                    "CAST(:paths AS text[]), CAST(:texts AS text[])) RETURNING id, source_id, ordinal"
                ),
                {
                    "sources": [s for (s, _, _), _ in batch],
                    "lengths": [c.length for (_, _, c), _ in batch],
                    "vectors": [v for _, v in batch],
                    "ordinals": [c.ordinal for (_, _, c), _ in batch],
                    "languages": [lang for (_, lang, _), _ in batch],
                    "paths": [json.dumps(list(c.heading_path)) for (_, _, c), _ in batch],
                    "texts": [c.text for (_, _, c), _ in batch],
                },
            )
            by_key = {(str(r[1]), int(r[2])): int(r[0]) for r in result}
            ids.extend(by_key[(source_id, c.ordinal)] for (source_id, _, c), _ in batch)
        return ids

    async def _insert_postings(self, conn: AsyncConnection, rows: list[tuple[int, int, int, int]]) -> None:
        for batch in _batches(rows, _PG_BATCH):
            await conn.execute(
                text(
                    "INSERT INTO rag_postings (chunk_id, term_id, tf, impact) "
                    "SELECT * FROM unnest(CAST(:c AS integer[]), CAST(:t AS integer[]), "
                    "CAST(:f AS smallint[]), CAST(:i AS smallint[]))"
                ),
                {
                    "c": [r[0] for r in batch],
                    "t": [r[1] for r in batch],
                    "f": [r[2] for r in batch],
                    "i": [r[3] for r in batch],
                },
            )


_STORES: dict[str, IndexStore] = {"sqlite": SqliteStore(), "postgresql": PostgresStore()}


def store_for(conn: AsyncConnection) -> IndexStore:
    """The store implementation for the connection's database."""
    try:
        return _STORES[conn.dialect.name]
    except KeyError:
        raise ValueError(f"unsupported database dialect: {conn.dialect.name}") from None
