"""Dense embeddings behind one small interface: the bundled local model, or an OpenAI-compatible server.

`build_embedder(settings)` is the entry point: it reads only the `PGPT_EMBEDDING_*` settings (never the
LLM's) and returns None when dense embeddings are off. `open_embedder(settings)` does the same and also
makes sure `dimension` can be read, asking a remote server for it when it is not configured.
"""

from __future__ import annotations

from privategpt.config import Settings
from privategpt.embeddings.base import Embedder, EmbeddingFailed, Vectors
from privategpt.embeddings.local import LocalEmbedder
from privategpt.embeddings.openai_compatible import OpenAICompatibleEmbedder

__all__ = [
    "Embedder",
    "EmbeddingFailed",
    "LocalEmbedder",
    "OpenAICompatibleEmbedder",
    "Vectors",
    "build_embedder",
    "open_embedder",
]


def build_embedder(settings: Settings) -> Embedder | None:
    """The configured embedder, or None with `PGPT_EMBEDDING_BACKEND=none`.

    Nothing is loaded or contacted here: the local model loads on its first use, and a remote model's
    dimension, unless configured, is learned from its first answer (`OpenAICompatibleEmbedder.discover_dimension`).
    """
    if settings.embedding_backend == "none":
        return None
    if settings.embedding_backend == "local":
        return LocalEmbedder(threads=settings.embedding_threads, batch_size=settings.embedding_batch_size)
    return OpenAICompatibleEmbedder(
        settings.embedding_base_url or "",
        settings.embedding_model or "",
        api_key=settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else None,
        timeout=settings.embedding_timeout,
        batch_size=settings.embedding_batch_size,
        dimension=settings.embedding_dimension,
        query_prefix=settings.embedding_query_prefix,
        passage_prefix=settings.embedding_passage_prefix,
        send_input_type=settings.embedding_input_type,
    )


async def open_embedder(settings: Settings) -> Embedder | None:
    """`build_embedder`, with the dimension known: a remote model without PGPT_EMBEDDING_DIMENSION is asked.

    Raises EmbeddingFailed when that server cannot answer (and closes the client first).
    """
    embedder = build_embedder(settings)
    if isinstance(embedder, OpenAICompatibleEmbedder) and not embedder.dimension_known:
        try:
            await embedder.discover_dimension()
        except BaseException:
            await embedder.aclose()
            raise
    return embedder
