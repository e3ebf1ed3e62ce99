"""The embedding interface every dense backend implements.

Vectors are float32 and L2-normalised, so a dot product is the cosine similarity on every backend and
in every store. Asymmetric models (E5 and its kin) embed queries and passages differently, hence two
methods. Implementations run their CPU or network work off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """A dense text embedder; `model_name` and `dimension` are recorded with every stored vector."""

    @property
    def model_name(self) -> str:
        """Identifies the model (and variant) so that vectors of different models are never mixed."""
        ...

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        ...

    async def embed_passages(self, texts: Sequence[str]) -> Vectors:
        """One normalised row per text, in order: shape (len(texts), dimension)."""
        ...

    async def embed_query(self, text: str) -> Vectors:
        """The normalised vector of a search query: shape (dimension,)."""
        ...

    async def aclose(self) -> None:
        """Release threads, connections or model memory."""
        ...


class EmbeddingFailed(Exception):
    """The backend could not embed (server error, bad answer, wrong dimension); the message says why."""
