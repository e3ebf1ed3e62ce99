"""DDL of the dense-vector store, as plain SQL statements an Alembic migration can run with `op.execute`.

* `rag_embedding_models`  one row per (model name, dimension) whose vectors are or were stored; at most
  one is `active` (a partial unique index), others are `building` beside it or `retired`.
* `rag_vectors`           one vector per (model, chunk); both references cascade, so deleting or
  re-ingesting a source removes its vectors in the same statement.

SQLite stores a vector as a float32 BLOB (this Python's `sqlite3` cannot load extensions) and searches
an in-process matrix (`privategpt.rag.vectors`). Triggers append every insert and delete of a vector to
`rag_vector_log` (also the cascaded ones, which no Python code sees), so each process brings its matrix
up to date by reading the log past its watermark. `rag_vector_log_state` names the database instance
(a copied or recreated file is a different index) and how far the log has been pruned.

PostgreSQL stores a pgvector `vector` without a fixed dimension (models of different dimensions share
the table) and is searched through the same in-process matrix. Its `rag_vector_log` (migration 0008,
`postgres_vector_log_ddl`) is written by statement-level triggers and records each entry's transaction
(`xid`): PostgreSQL's identity values are not in commit order, so a reader keeps, instead of an id
watermark, the oldest transaction its snapshot still saw running and the transactions it applied since.
"""

from __future__ import annotations

from collections.abc import Sequence

TABLES = ("rag_vectors", "rag_embedding_models")
# The vector change log: SQLite has it since 0004, PostgreSQL since 0008.
VECTOR_LOG_TABLES = ("rag_vector_log", "rag_vector_log_state")


def sqlite_vector_ddl() -> list[str]:
    """CREATE statements for SQLite (run after `rag_chunks` exists)."""
    return [
        """
        CREATE TABLE rag_embedding_models (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name VARCHAR(255) NOT NULL,
            dimension INTEGER NOT NULL CHECK (dimension > 0),
            state VARCHAR(16) NOT NULL CHECK (state IN ('building', 'active', 'retired')),
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            UNIQUE (name, dimension)
        )
        """,
        "CREATE UNIQUE INDEX ux_rag_embedding_models_active ON rag_embedding_models (state) WHERE state = 'active'",
        """
        CREATE TABLE rag_vectors (
            model_id INTEGER NOT NULL REFERENCES rag_embedding_models (id) ON DELETE CASCADE,
            chunk_id INTEGER NOT NULL REFERENCES rag_chunks (id) ON DELETE CASCADE,
            vector BLOB NOT NULL,
            PRIMARY KEY (model_id, chunk_id)
        ) WITHOUT ROWID
        """,
        # The cascade from rag_chunks looks vectors up by chunk.
        "CREATE INDEX ix_rag_vectors_chunk_id ON rag_vectors (chunk_id)",
        # AUTOINCREMENT: ids are never reused, so a watermark only ever moves forward. SQLite has one
        # writer at a time, so ids are also in commit order and a reader never skips a later-committed row.
        """
        CREATE TABLE rag_vector_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id INTEGER NOT NULL,
            chunk_id INTEGER NOT NULL,
            added INTEGER NOT NULL
        )
        """,
        "CREATE INDEX ix_rag_vector_log_model ON rag_vector_log (model_id, id)",
        """
        CREATE TABLE rag_vector_log_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            instance VARCHAR(32) NOT NULL,
            pruned_through INTEGER NOT NULL
        )
        """,
        "INSERT INTO rag_vector_log_state (id, instance, pruned_through) VALUES (1, lower(hex(randomblob(16))), 0)",
        """
        CREATE TRIGGER rag_vectors_after_insert AFTER INSERT ON rag_vectors
        BEGIN
            INSERT INTO rag_vector_log (model_id, chunk_id, added) VALUES (NEW.model_id, NEW.chunk_id, 1);
        END
        """,
        """
        CREATE TRIGGER rag_vectors_after_update AFTER UPDATE ON rag_vectors
        BEGIN
            INSERT INTO rag_vector_log (model_id, chunk_id, added) VALUES (NEW.model_id, NEW.chunk_id, 1);
        END
        """,
        """
        CREATE TRIGGER rag_vectors_after_delete AFTER DELETE ON rag_vectors
        BEGIN
            INSERT INTO rag_vector_log (model_id, chunk_id, added) VALUES (OLD.model_id, OLD.chunk_id, 0);
        END
        """,
    ]


def sqlite_vector_drop() -> list[str]:
    """DROP statements for SQLite, in dependency order."""
    return [
        "DROP TRIGGER IF EXISTS rag_vectors_after_delete",
        "DROP TRIGGER IF EXISTS rag_vectors_after_update",
        "DROP TRIGGER IF EXISTS rag_vectors_after_insert",
        *(f"DROP TABLE IF EXISTS {t}" for t in (*TABLES, *VECTOR_LOG_TABLES)),
    ]


def postgres_vector_ddl() -> list[str]:
    """CREATE statements for PostgreSQL (run after `rag_chunks` exists and the `vector` extension is created)."""
    return [
        """
        CREATE TABLE rag_embedding_models (
            id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            dimension INTEGER NOT NULL CHECK (dimension > 0 AND dimension <= 16000),
            state VARCHAR(16) NOT NULL CHECK (state IN ('building', 'active', 'retired')),
            created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
            UNIQUE (name, dimension)
        )
        """,
        "CREATE UNIQUE INDEX ux_rag_embedding_models_active ON rag_embedding_models (state) WHERE state = 'active'",
        """
        CREATE TABLE rag_vectors (
            model_id INTEGER NOT NULL REFERENCES rag_embedding_models (id) ON DELETE CASCADE,
            chunk_id INTEGER NOT NULL REFERENCES rag_chunks (id) ON DELETE CASCADE,
            embedding vector NOT NULL,
            PRIMARY KEY (model_id, chunk_id)
        )
        """,
        # A 384-dim vector is ~1.5 kB, a 1024-dim one ~4 kB: keep them inline and uncompressed (pglz
        # gains nothing on floats and an exact scan would pay for the decompression on every row).
        "ALTER TABLE rag_vectors ALTER COLUMN embedding SET STORAGE EXTERNAL",
        "ALTER TABLE rag_vectors SET (toast_tuple_target = 8160)",
        "CREATE INDEX ix_rag_vectors_chunk_id ON rag_vectors (chunk_id)",
    ]


def _statement_log_triggers(table: str, events: Sequence[str]) -> list[str]:
    """PostgreSQL: a statement-level trigger per event on `table` that hands the rows it changed (as the
    transition table `changed_rows`) to the function `{table}_log_changes()`."""
    return [
        f"CREATE OR REPLACE TRIGGER {table}_log_{event} AFTER {event.upper()} ON {table} "
        f"REFERENCING {'OLD' if event == 'delete' else 'NEW'} TABLE AS changed_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_log_changes()"
        for event in events
    ]


def postgres_vector_log_ddl() -> list[str]:
    """The change log of `rag_vectors` on PostgreSQL that keeps each process's in-process matrix current
    (`privategpt.rag.vectors`): one entry per vector inserted, updated or deleted, also by cascade, with
    the writing transaction's id. A reader treats every transaction older than its snapshot's `xmin` as
    applied and remembers the newer ones it applied; `pruned_xid` is the newest transaction whose entries
    a prune deleted (a reader that has not passed it loads the vectors whole). Idempotent."""
    return [
        """
        CREATE TABLE IF NOT EXISTS rag_vector_log (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            model_id INTEGER NOT NULL,
            chunk_id INTEGER NOT NULL,
            xid xid8 NOT NULL DEFAULT pg_current_xact_id()
        )
        """,
        "CREATE INDEX IF NOT EXISTS ix_rag_vector_log_model_xid ON rag_vector_log (model_id, xid)",
        """
        CREATE TABLE IF NOT EXISTS rag_vector_log_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            instance VARCHAR(32) NOT NULL,
            pruned_through BIGINT NOT NULL DEFAULT 0,
            pruned_xid xid8 NOT NULL DEFAULT '0'
        )
        """,
        "INSERT INTO rag_vector_log_state (id, instance) VALUES (1, md5(random()::text || clock_timestamp()::text)) "
        "ON CONFLICT (id) DO NOTHING",
        """
        CREATE OR REPLACE FUNCTION rag_vectors_log_changes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO rag_vector_log (model_id, chunk_id) SELECT model_id, chunk_id FROM changed_rows;
            RETURN NULL;
        END
        $$
        """,
        *_statement_log_triggers("rag_vectors", ("insert", "update", "delete")),
    ]


def postgres_vector_log_drop() -> list[str]:
    """DROP statements of `postgres_vector_log_ddl`."""
    return [
        *(f"DROP TRIGGER IF EXISTS rag_vectors_log_{op} ON rag_vectors" for op in ("insert", "update", "delete")),
        "DROP FUNCTION IF EXISTS rag_vectors_log_changes()",
        *(f"DROP TABLE IF EXISTS {t}" for t in VECTOR_LOG_TABLES),
    ]


def postgres_vector_drop() -> list[str]:
    """DROP statements for PostgreSQL (the extension is left installed: other schemas may use it)."""
    return [f"DROP TABLE IF EXISTS {t} CASCADE" for t in TABLES]


# Entries per prune of the chunk log: when an id crosses a multiple of it, entries older than one
# multiple are deleted (a process whose watermark is older reloads its index; see rag.sparse_index).
CHUNK_LOG_PRUNE_EVERY = 250_000


def chunk_log_ddl(dialect: str) -> list[str]:
    """The change log of `rag_chunks` that keeps each process's in-memory BM25 postings current
    (`privategpt.rag.sparse_index`): one entry per chunk inserted or deleted, also by cascade, written by
    triggers. Index writers hold the `rag_stats` row lock when the entries are written (the statistics are
    updated first), so entry ids are in commit order on both databases. `token` is random per entry: a
    reader checks that the entry at its watermark is still the one it applied (a rolled-back entry's id is
    reused on SQLite). Idempotent (IF NOT EXISTS), so it can run on a database that has it already."""
    every = CHUNK_LOG_PRUNE_EVERY
    if dialect == "sqlite":
        return [
            """
            CREATE TABLE IF NOT EXISTS rag_chunk_log (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                chunk_id INTEGER NOT NULL,
                token INTEGER NOT NULL DEFAULT (random())
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS rag_chunk_log_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                instance VARCHAR(32) NOT NULL
            )
            """,
            "INSERT OR IGNORE INTO rag_chunk_log_state (id, instance) VALUES (1, lower(hex(randomblob(16))))",
            """
            CREATE TRIGGER IF NOT EXISTS rag_chunks_log_insert AFTER INSERT ON rag_chunks
            BEGIN
                INSERT INTO rag_chunk_log (chunk_id) VALUES (NEW.id);
            END
            """,
            """
            CREATE TRIGGER IF NOT EXISTS rag_chunks_log_delete AFTER DELETE ON rag_chunks
            BEGIN
                INSERT INTO rag_chunk_log (chunk_id) VALUES (OLD.id);
            END
            """,
            f"""
            CREATE TRIGGER IF NOT EXISTS rag_chunk_log_prune AFTER INSERT ON rag_chunk_log
            WHEN NEW.id % {every} = 0
            BEGIN
                DELETE FROM rag_chunk_log WHERE id <= NEW.id - {every};
            END
            """,
        ]
    if dialect == "postgresql":
        return [
            """
            CREATE TABLE IF NOT EXISTS rag_chunk_log (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                chunk_id INTEGER NOT NULL,
                token BIGINT NOT NULL DEFAULT floor((random() - 0.5) * 9.2e18)::bigint
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS rag_chunk_log_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                instance VARCHAR(32) NOT NULL
            )
            """,
            "INSERT INTO rag_chunk_log_state (id, instance) VALUES (1, md5(random()::text || clock_timestamp()::text)) "
            "ON CONFLICT (id) DO NOTHING",
            # Statement-level triggers with transition tables: one INSERT per statement, also for the
            # deletes cascaded from `sources`.
            f"""
            CREATE OR REPLACE FUNCTION rag_chunks_log_changes() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                added BIGINT;
                top BIGINT;
            BEGIN
                INSERT INTO rag_chunk_log (chunk_id) SELECT id FROM changed_rows ORDER BY id;
                GET DIAGNOSTICS added = ROW_COUNT;
                IF added > 0 THEN
                    top := currval(pg_get_serial_sequence('rag_chunk_log', 'id'));
                    IF top / {every} <> (top - added) / {every} THEN
                        DELETE FROM rag_chunk_log WHERE id <= top - {every};
                    END IF;
                END IF;
                RETURN NULL;
            END
            $$
            """,
            *_statement_log_triggers("rag_chunks", ("insert", "delete")),
        ]
    raise ValueError(f"unsupported database dialect: {dialect}")


def chunk_log_drop(dialect: str) -> list[str]:
    """DROP statements of `chunk_log_ddl`."""
    statements = [
        "DROP TRIGGER IF EXISTS rag_chunks_log_insert" + (" ON rag_chunks" if dialect == "postgresql" else ""),
        "DROP TRIGGER IF EXISTS rag_chunks_log_delete" + (" ON rag_chunks" if dialect == "postgresql" else ""),
        "DROP TABLE IF EXISTS rag_chunk_log_state",
        "DROP TABLE IF EXISTS rag_chunk_log",
    ]
    if dialect == "postgresql":
        statements.append("DROP FUNCTION IF EXISTS rag_chunks_log_changes()")
    return statements


def vector_ddl_for(dialect: str) -> list[str]:
    """The CREATE statements for a SQLAlchemy dialect name ('sqlite' or 'postgresql'), with the chunk log
    (`chunk_log_ddl`) that in-memory BM25 postings follow."""
    if dialect == "sqlite":
        return [*sqlite_vector_ddl(), *chunk_log_ddl(dialect)]
    if dialect == "postgresql":
        return [
            "CREATE EXTENSION IF NOT EXISTS vector",
            *postgres_vector_ddl(),
            *postgres_vector_log_ddl(),
            *chunk_log_ddl(dialect),
        ]
    raise ValueError(f"unsupported database dialect: {dialect}")


def vector_drop_for(dialect: str) -> list[str]:
    """The DROP statements for a SQLAlchemy dialect name."""
    if dialect == "sqlite":
        return [*chunk_log_drop(dialect), *sqlite_vector_drop()]
    if dialect == "postgresql":
        return [*chunk_log_drop(dialect), *postgres_vector_log_drop(), *postgres_vector_drop()]
    raise ValueError(f"unsupported database dialect: {dialect}")
