"""Embedders behind one small interface. The default works offline with no model download."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from typing import Protocol

import httpx

from app.errors import ConfigError, EmbeddingError
from app.settings import Settings

_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One L2-normalised vector of length ``dim`` per text."""
        ...


class HashingEmbedder:
    """Deterministic feature hashing of words, word pairs and character trigrams.

    Similar texts share features and so get similar vectors; no model, no network. Good enough
    for development, tests and exact reproducibility; use a real model in production.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def _add(self, vec: list[float], feature: str, weight: float) -> None:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % self.dim
        sign = 1.0 if digest[4] & 1 else -1.0
        vec[index] += sign * weight

    def embed_one(self, text: str) -> list[float]:
        vec = [0.0] * self.dim
        words = [w.casefold() for w in _WORD.findall(text)]
        for word in words:
            self._add(vec, "w:" + word, 1.0)
            padded = f"<{word}>"
            for i in range(len(padded) - 2):
                self._add(vec, "c:" + padded[i : i + 3], 0.35)
        for a, b in itertools.pairwise(words):
            self._add(vec, f"b:{a} {b}", 0.5)
        norm = math.sqrt(sum(x * x for x in vec))
        if norm == 0.0:
            vec[0] = 1.0
            return vec
        return [x / norm for x in vec]

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_one(t) for t in texts]


class OpenAIEmbedder:
    """Any OpenAI-compatible ``/embeddings`` endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str, dim: int,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.dim = dim
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                    timeout=timeout, transport=transport)

    def embed(self, texts: list[str]) -> list[list[float]]:
        try:
            response = self._client.post("/embeddings", json={"model": self.model, "input": texts})
            response.raise_for_status()
            data = sorted(response.json()["data"], key=lambda d: d["index"])
            vectors = [list(map(float, d["embedding"])) for d in data]
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"embedding endpoint failed: {type(exc).__name__}") from exc
        for v in vectors:
            if len(v) != self.dim:
                raise ConfigError(f"EMBEDDING_DIM is {self.dim} but the endpoint returned {len(v)}")
        return vectors


class SentenceTransformerEmbedder:  # pragma: no cover - optional heavy dependency
    """A local sentence-transformers model (install the package and its model yourself)."""

    def __init__(self, model: str, dim: int) -> None:
        try:
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ConfigError("EMBEDDING_PROVIDER=sentence-transformers needs the "
                              "sentence-transformers package") from exc
        self._model = SentenceTransformer(model)
        self.dim = dim

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = self._model.encode(texts, normalize_embeddings=True)
        return [list(map(float, v)) for v in vectors]


def make_embedder(settings: Settings) -> Embedder:
    if settings.embedding_provider == "openai":
        return OpenAIEmbedder(settings.embedding_base_url, settings.embedding_model,
                              settings.embedding_api_key.get_secret_value(), settings.embedding_dim)
    if settings.embedding_provider == "sentence-transformers":
        return SentenceTransformerEmbedder(settings.embedding_model, settings.embedding_dim)
    return HashingEmbedder(settings.embedding_dim)


def to_pgvector(vector: list[float]) -> str:
    """The text form pgvector casts from."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"
