"""Embedders that are not built in: an OpenAI-compatible endpoint, sentence-transformers."""

from __future__ import annotations

from typing import Any

import httpx

from app.errors import ConfigError, EmbeddingError


class OpenAIEmbedder:
    """Any OpenAI-compatible ``/embeddings`` endpoint (EMBEDDING_PROVIDER=openai)."""

    def __init__(self, base_url: str, model: str, api_key: str, dim: int,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.dim = dim
        self.model = model
        self.identity = f"openai/{model}/{dim}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                    timeout=timeout, transport=transport)

    def load(self) -> None:
        """Nothing to load: the endpoint is asked on each call."""

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

    def close(self) -> None:
        self._client.close()


class SentenceTransformerEmbedder:  # pragma: no cover - optional heavy dependency
    """A local sentence-transformers model (install the package and its model yourself)."""

    def __init__(self, model: str, dim: int) -> None:
        self.model_name = model
        self.dim = dim
        self.identity = f"sentence-transformers/{model}/{dim}"
        self._model: Any = None

    def load(self) -> None:
        if self._model is not None:
            return
        try:
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ConfigError("EMBEDDING_PROVIDER=sentence-transformers needs the "
                              "sentence-transformers package") from exc
        self._model = SentenceTransformer(self.model_name)

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.load()
        vectors = self._model.encode(texts, normalize_embeddings=True)
        return [list(map(float, v)) for v in vectors]
