"""The embedder interface."""

from __future__ import annotations

from typing import Protocol


class Embedder(Protocol):
    """Turns texts into unit vectors of ``dim`` numbers; deterministic for its ``identity``."""

    @property
    def dim(self) -> int:
        """The vectors' dimension."""
        ...

    @property
    def identity(self) -> str:
        """provider/model/dimension: vectors of two identities are never compared."""
        ...

    def load(self) -> None:
        """Load and verify what the embedder needs (a model's files); ConfigError if wrong.

        Processes call it at start-up, so a broken install fails there, not on a request.
        """
        ...

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One L2-normalised vector per text, in order."""
        ...


def to_pgvector(vector: list[float]) -> str:
    """The text form pgvector casts from."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"
