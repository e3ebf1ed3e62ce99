"""A disk cache in front of an embedder, for evaluations that embed the same corpus run after run.

Vectors are stored by model (name and dimension), kind (query or passage) and the SHA-256 of the text,
in a small SQLite file; a miss is embedded by the wrapped embedder and written back. The server never
uses it: it stores vectors in its own database.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from privategpt.embeddings.base import Embedder, Vectors


def _key(kind: str, text: str) -> str:
    return kind + ":" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """An `Embedder` that answers from `directory/<model>.sqlite` when it can."""

    def __init__(self, embedder: Embedder, directory: Path) -> None:
        self.inner = embedder
        directory.mkdir(parents=True, exist_ok=True)
        slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in embedder.model_name)
        self.path = directory / f"{slug}-{embedder.dimension}.sqlite"
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def _read(self, keys: Sequence[str]) -> dict[str, Vectors]:
        found: dict[str, Vectors] = {}
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                part = list(keys[start : start + 500])
                marks = ",".join("?" * len(part))
                for key, blob in db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", part):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _write(self, items: Sequence[tuple[str, Vectors]]) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                [(key, np.asarray(vector, dtype=np.float32).tobytes()) for key, vector in items],
            )

    async def _embed(self, kind: str, texts: Sequence[str]) -> Vectors:
        keys = [_key(kind, t) for t in texts]
        found = await asyncio.to_thread(self._read, keys)
        missing = sorted({i for i, key in enumerate(keys) if key not in found}, key=lambda i: keys[i])
        unique = list(dict.fromkeys(keys[i] for i in missing))
        if unique:
            first = {keys[i]: texts[i] for i in missing}
            todo = [first[key] for key in unique]
            if kind == "query":
                fresh = np.stack([await self.inner.embed_query(t) for t in todo])
            else:
                fresh = await self.inner.embed_passages(todo)
            await asyncio.to_thread(self._write, list(zip(unique, fresh, strict=True)))
            found.update(zip(unique, fresh, strict=True))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, key in enumerate(keys):
            out[i] = found[key]
        return out

    async def embed_passages(self, texts: Sequence[str]) -> Vectors:
        return await self._embed("passage", texts)

    async def embed_query(self, text: str) -> Vectors:
        vector: Vectors = (await self._embed("query", [text]))[0]
        return vector

    async def embed_queries(self, texts: Sequence[str]) -> Vectors:
        """Several queries at once: one cache read, and the misses embedded in order."""
        return await self._embed("query", texts)

    async def aclose(self) -> None:
        await self.inner.aclose()
