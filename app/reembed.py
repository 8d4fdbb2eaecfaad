"""Re-embedding: moving a corpus to the configured embedder while reads and writes go on.

Progress lives in the rows themselves: a row is done when its ``embedder`` is the configured
one, so a run killed at any point resumes where it stopped, and a write made meanwhile (which
embeds with the configured embedder) is simply not pending. A row whose content changed after
it was read is skipped (the write that changed it embedded it). One run at a time (an advisory
lock); ``memctl reembed``, the admin API and the scheduler's background task all call ``run``.

A new embedder with another dimension needs the column changed first: ``change_dimension``
drops the vector index and every vector (searches find memories by text until the run ends),
then the run embeds every row and the index is built again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.db.connector import Database
from app.embeddings import Embedder, to_pgvector
from app.errors import Busy, ConfigError
from app.settings import Settings

log = logging.getLogger(__name__)
LOCK = "memctl-reembed"
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
# (memories done in this step, the total pending when the run began)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReembedStatus:
    embedder: str
    live: int
    pending: int  # live memories whose vector is not the configured embedder's
    column_dimension: int
    dimension: int  # the configured embedder's

    @property
    def dimension_ok(self) -> bool:
        return self.column_dimension == self.dimension


@dataclass
class ReembedReport:
    embedded: int = 0
    skipped: int = 0  # content changed while the run embedded it (already re-embedded)
    text_refreshed: int = 0
    remaining: int = 0
    complete: bool = True
    seconds: float = 0.0


class Reembedder:
    """Moves every live memory to the configured embedder, in batches."""

    def __init__(self, settings: Settings, db: Database, embedder: Embedder,
                 ts_config: Callable[[], str]) -> None:
        self.settings = settings
        self.db = db
        self.embedder = embedder
        self.ts_config = ts_config

    def status(self) -> ReembedStatus:
        counts = self.db.one("reembed_counts", {"embedder": self.embedder.identity})
        assert counts is not None
        return ReembedStatus(self.embedder.identity, int(counts["live"]),
                             int(counts["pending"]),
                             int(self.db.scalar("embedding_dimension") or 0), self.embedder.dim)

    def change_dimension(self) -> None:
        """Make the vector column the configured embedder's dimension (every vector is dropped
        and the rows are pending; the HNSW index is rebuilt when a run completes)."""
        dim = int(self.embedder.dim)
        with self.db.advisory_lock(LOCK, shared=False) as got:
            if not got:
                raise Busy("a re-embedding is running; try again when it ends")
            with self.db.transaction() as tx:
                tx.execute("drop_vector_index")
                tx.execute_formatted("alter_embedding_dimension", dim=dim)
                tx.execute("forget_embedders")
        log.warning("vector column changed; every memory awaits re-embedding", extra={
            "action": "reembed.dimension", "dimension": dim})

    def run(self, *, limit: int | None = None, progress: Progress | None = None,
            stop: threading.Event | None = None) -> ReembedReport:
        """Embed pending memories (at most ``limit``) and refresh stale full-text columns.

        Raises Busy while another run holds the lock, and ConfigError when the column's
        dimension is not the embedder's (``change_dimension`` first).
        """
        status = self.status()
        if not status.dimension_ok:
            raise ConfigError(
                f"the configured embedder makes {status.dimension}-dimensional vectors but "
                f"memories.embedding is vector({status.column_dimension}): run 'memctl reembed "
                "--change-dimension' (searches find memories by text until it ends)")
        with self.db.advisory_lock(LOCK, shared=False) as got:
            if not got:
                raise Busy("a re-embedding is running; try again when it ends")
            return self._run(status, limit, progress, stop)

    def _run(self, status: ReembedStatus, limit: int | None, progress: Progress | None,
             stop: threading.Event | None) -> ReembedReport:
        began = time.monotonic()
        report = ReembedReport()
        total = status.pending if limit is None else min(status.pending, limit)
        identity, size = self.embedder.identity, self.settings.reembed_batch_size
        after = ZERO_UUID
        while True:
            if stop is not None and stop.is_set():
                report.complete = False
                break
            want = size if limit is None else min(size, limit - report.embedded
                                                  - report.skipped)
            if want <= 0:
                report.complete = False
                break
            rows = self.db.all("reembed_batch", {"embedder": identity, "after": after,
                                                 "limit": want})
            if not rows:
                break
            vectors = self.embedder.embed([r["content"] for r in rows])  # outside any transaction
            with self.db.transaction() as tx:
                for row, vector in zip(rows, vectors, strict=True):
                    changed = tx.execute("save_embedding", {
                        "id": row["id"], "embedding": to_pgvector(vector), "embedder": identity,
                        "content_hash": row["content_hash"]})
                    if changed:
                        report.embedded += 1
                    else:
                        report.skipped += 1
            after = str(rows[-1]["id"])
            if progress:
                progress(len(rows), total)
        while not (stop is not None and stop.is_set()):
            n = self.db.execute("refresh_search_text", {"ts_config": self.ts_config(),
                                                        "limit": 1000})
            report.text_refreshed += n
            if n < 1000:
                break
        report.remaining = self.status().pending
        if report.remaining == 0 and not self.db.scalar("vector_index_exists"):
            self.db.execute("create_vector_index")  # after a dimension change
        report.seconds = round(time.monotonic() - began, 3)
        log.info("reembed done", extra={"action": "reembed.run", "embedded": report.embedded,
                                        "skipped": report.skipped,
                                        "remaining": report.remaining})
        return report
