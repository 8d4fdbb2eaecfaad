"""The built-in hashing embedder: no model, no download; for tests and tiny installs."""

from __future__ import annotations

import hashlib
import itertools
import math
import re

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic feature hashing of words, word pairs and character trigrams.

    Similar texts share features and so get similar vectors, but only texts that share words:
    it finds "roadmap with John" for "Meeting with John about Q4 roadmap", not "quarterly
    planning discussion". EMBEDDING_PROVIDER=hashing.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.identity = f"hashing/v1/{dim}"

    def load(self) -> None:
        """Nothing to load."""

    def _add(self, vec: list[float], feature: str, weight: float) -> None:
        digest = hashlib.blake2b(feature.encode("utf-8", "surrogatepass"),
                                 digest_size=8).digest()
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
