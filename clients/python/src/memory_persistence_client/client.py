"""``MemoryClient`` (blocking) and ``AsyncMemoryClient`` (asyncio), both on httpx.

Both send the ``Call`` objects of ``_calls`` through one retry loop (``_Retrying``): the same
request, headers and Idempotency-Key on every attempt, ``retry.retry_delay`` deciding whether
and how long to wait. They differ only in how they send and how they sleep.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from memory_persistence_client import _calls
from memory_persistence_client._calls import Call, Expand, MemoryId, SearchMode
from memory_persistence_client.errors import APIError, TransportError
from memory_persistence_client.models import (
    BatchResult,
    Deleted,
    EntitiesResult,
    EntityMemoriesResult,
    HistoryEntry,
    HistoryPage,
    Memory,
    MemoryWithGraph,
    NewMemory,
    Page,
    RelatedResult,
    SearchResult,
    StoredMemory,
)
from memory_persistence_client.retry import RetryEvent, RetryPolicy, parse_retry_after, retry_delay

__version__ = "0.1.0"
T = TypeVar("T")
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class _Retrying:
    """Settings and the retry decisions shared by both clients."""

    def __init__(self, base_url: str, api_key: str, *, retry: RetryPolicy | None,
                 timeout: float | httpx.Timeout, headers: Mapping[str, str] | None,
                 on_retry: Callable[[RetryEvent], None] | None) -> None:
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._options: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            "headers": {"Authorization": f"Bearer {api_key}",
                        "User-Agent": f"memory-persistence-client/{__version__} (python)",
                        **(headers or {})},
        }
        # Replaceable in tests, to see the waits without waiting.
        self._random: Callable[[], float] = random.random

    def _request(self, call: Call[Any]) -> dict[str, Any]:
        request = {"method": call.method, "url": call.path,
                   "params": dict(call.params) or None, "json": call.body,
                   "headers": dict(call.headers)}
        if call.extra_time > 0:
            request["timeout"] = self._timeout(call.extra_time)
        return request

    def _timeout(self, extra: float) -> httpx.Timeout:
        """The configured timeout with ``extra`` seconds more to read the answer (a read
        timeout of None, no limit, stays None)."""
        base: httpx.Timeout = self._options["timeout"]
        return httpx.Timeout(connect=base.connect, write=base.write, pool=base.pool,
                             read=None if base.read is None else base.read + extra)

    def _on_answer(self, call: Call[T], response: httpx.Response, attempt: int) -> float | None:
        """None when the answer is a success; the delay before a retry; else raises."""
        if response.is_success:
            return None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        delay = retry_delay(self.retry, safe=call.safe, attempt=attempt, u=self._random(),
                            status_code=response.status_code, retry_after=retry_after)
        if delay is None:
            raise APIError.from_response(response, attempt, retry_after)
        self._report(call, attempt, delay, response.status_code, None)
        return delay

    def _on_error(self, call: Call[Any], error: httpx.TransportError, attempt: int) -> float:
        """The delay before a retry after ``error``; raises when the call gives up."""
        delay = retry_delay(self.retry, safe=call.safe, attempt=attempt, u=self._random(),
                            error=error)
        if delay is None:
            raise TransportError(f"{call.method} {call.path}: {type(error).__name__}: {error}",
                                 attempt) from error
        self._report(call, attempt, delay, None, error)
        return delay

    def _report(self, call: Call[Any], attempt: int, delay: float, status: int | None,
                error: Exception | None) -> None:
        if self.on_retry is not None:
            self.on_retry(RetryEvent(method=call.method, path=call.path, attempt=attempt,
                                     delay=delay, status_code=status, error=error))


class MemoryClient(_Retrying):
    """A blocking client of the memory API.

    ``base_url`` is the server's root (``http://127.0.0.1:8000``), ``api_key`` a service key
    (an admin key works too). Use it as a context manager, or ``close()`` it.
    """

    def __init__(self, base_url: str, api_key: str, *, retry: RetryPolicy | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 headers: Mapping[str, str] | None = None,
                 on_retry: Callable[[RetryEvent], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, retry=retry, timeout=timeout, headers=headers,
                         on_retry=on_retry)
        self._http = httpx.Client(transport=transport, **self._options)
        self._sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        """Send one call, retrying as ``self.retry`` allows."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(**self._request(call))
            except httpx.TransportError as error:
                delay = self._on_error(call, error, attempt)
            else:
                answer = self._on_answer(call, response, attempt)
                if answer is None:
                    return call.read(response)
                delay = answer
            self._sleep(delay)

    # -- the memory API --------------------------------------------------------------------

    def store(self, user_id: str, content: str, *, metadata: Mapping[str, Any] | None = None,
              importance: int | None = None,
              idempotency_key: str | None = None) -> StoredMemory:
        """Store a memory. Retries resend one Idempotency-Key (generated unless given), so a
        retried store never makes a second memory; ``replayed`` says the key had stored it."""
        return self._send(_calls.store(user_id, content, metadata, importance, idempotency_key))

    def store_batch(self, user_id: str, items: Iterable[NewMemory | str], *,
                    idempotency_key: str | None = None) -> BatchResult:
        """Store several memories of one user in one transaction (all or none)."""
        return self._send(_calls.store_batch(user_id, items, idempotency_key))

    def get(self, user_id: str, memory_id: MemoryId, *,
            wait_for_graph: float | None = None) -> MemoryWithGraph:
        """One memory with its ``graph`` status; ``NotFound`` when missing, deleted, or another
        user's. ``wait_for_graph`` (seconds, at most 30) lets the server answer only once the
        current version is projected, failed or dead (``graph.timed_out`` when time ran out);
        the read timeout grows by that wait."""
        return self._send(_calls.get(user_id, memory_id, wait_for_graph))

    def history_page(self, user_id: str, memory_id: MemoryId, *, limit: int | None = None,
                     before_version: int | None = None) -> HistoryPage:
        """One page of a memory's history, newest version first."""
        return self._send(_calls.history_page(user_id, memory_id, limit, before_version))

    def history_pages(self, user_id: str, memory_id: MemoryId, *, page_size: int = 100,
                      before_version: int | None = None) -> Iterator[HistoryPage]:
        """Every page of a memory's history in turn, following ``next_before_version``."""
        while True:
            page = self.history_page(user_id, memory_id, limit=page_size,
                                     before_version=before_version)
            yield page
            if page.next_before_version is None:
                return
            before_version = page.next_before_version

    def history(self, user_id: str, memory_id: MemoryId, *, page_size: int = 100,
                before_version: int | None = None) -> Iterator[HistoryEntry]:
        """Every kept version of a memory (a deleted one's too), newest first, with who made
        each change (``actor``) and when, fetched a page at a time."""
        for page in self.history_pages(user_id, memory_id, page_size=page_size,
                                       before_version=before_version):
            yield from page.items

    def list_page(self, user_id: str, *, limit: int | None = None, cursor: str | None = None,
                  min_importance: int | None = None,
                  metadata: Mapping[str, Any] | None = None) -> Page:
        """One page of the user's memories, newest first."""
        return self._send(_calls.list_page(user_id, limit, cursor, min_importance, metadata))

    def pages(self, user_id: str, *, page_size: int = 100, min_importance: int | None = None,
              metadata: Mapping[str, Any] | None = None) -> Iterator[Page]:
        """Every page in turn, following ``next_cursor``; each is fetched when reached."""
        cursor: str | None = None
        while True:
            page = self.list_page(user_id, limit=page_size, cursor=cursor,
                                  min_importance=min_importance, metadata=metadata)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def list(self, user_id: str, *, page_size: int = 100, min_importance: int | None = None,
             metadata: Mapping[str, Any] | None = None) -> Iterator[Memory]:
        """Every memory of the user, newest first, fetched a page at a time."""
        for page in self.pages(user_id, page_size=page_size, min_importance=min_importance,
                               metadata=metadata):
            yield from page.items

    def update(self, user_id: str, memory_id: MemoryId, *, content: str | None = None,
               metadata: Mapping[str, Any] | None = None, importance: int | None = None,
               expected_version: int | None = None) -> Memory:
        """Change a memory (``metadata`` replaces the whole object).

        With ``expected_version`` (sent as ``If-Match``) the server refuses a stale write with
        ``VersionConflict``, and the call is retried like any safe one; without it, only when
        the server cannot have applied it (no connection, or 429).
        """
        return self._send(_calls.update(user_id, memory_id, content, metadata, importance,
                                       expected_version))

    def delete(self, user_id: str, memory_id: MemoryId, *,
               expected_version: int | None = None) -> Deleted:
        """Delete a memory (``VersionConflict`` if ``expected_version`` is stale)."""
        return self._send(_calls.delete(user_id, memory_id, expected_version))

    def search(self, user_id: str, query: str, *, top_k: int | None = None,
               metadata: Mapping[str, Any] | None = None,
               min_importance: int | None = None, mode: SearchMode | None = None,
               expand: Expand | None = None) -> SearchResult:
        """The user's memories that best match ``query``, best first: ``mode`` ``"vector"``
        (by meaning), ``"text"`` (full-text) or ``"hybrid"`` (both fused; the server's
        default); ``metadata`` and ``min_importance`` filter; ``expand="graph"`` adds the
        hits' graph neighbours (``via == "graph"``)."""
        return self._send(_calls.search(user_id, query, top_k, metadata, min_importance, mode,
                                        expand))

    def related(self, user_id: str, memory_id: MemoryId, *,
                limit: int | None = None) -> RelatedResult:
        """Memories sharing entities with this one, most shared first (``NotFound`` when the
        memory is missing, deleted, or another user's)."""
        return self._send(_calls.related(user_id, memory_id, limit))

    def entities(self, user_id: str, *, query: str | None = None,
                 entity_type: str | None = None, limit: int | None = None) -> EntitiesResult:
        """The user's entities with their mention counts, most mentioned first; ``query``
        matches part of the name, ``entity_type`` the type (e.g. ``"person"``)."""
        return self._send(_calls.entities(user_id, query, entity_type, limit))

    def entity_memories(self, user_id: str, key: str, *,
                        limit: int | None = None) -> EntityMemoriesResult:
        """The user's memories that mention the entity ``key`` (``type:name``, as
        ``entities`` gives it), most important first."""
        return self._send(_calls.entity_memories(user_id, key, limit))


class AsyncMemoryClient(_Retrying):
    """The asyncio twin of ``MemoryClient``: the same methods, awaited (``list`` and ``pages``
    are async iterators). Use it with ``async with``, or ``await aclose()``."""

    def __init__(self, base_url: str, api_key: str, *, retry: RetryPolicy | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 headers: Mapping[str, str] | None = None,
                 on_retry: Callable[[RetryEvent], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, retry=retry, timeout=timeout, headers=headers,
                         on_retry=on_retry)
        self._http = httpx.AsyncClient(transport=transport, **self._options)
        self._sleep: Callable[[float], Any] = asyncio.sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        """Send one call, retrying as ``self.retry`` allows."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(**self._request(call))
            except httpx.TransportError as error:
                delay = self._on_error(call, error, attempt)
            else:
                answer = self._on_answer(call, response, attempt)
                if answer is None:
                    return call.read(response)
                delay = answer
            await self._sleep(delay)

    # -- the memory API (see MemoryClient for each method) ---------------------------------

    async def store(self, user_id: str, content: str, *,
                    metadata: Mapping[str, Any] | None = None, importance: int | None = None,
                    idempotency_key: str | None = None) -> StoredMemory:
        return await self._send(_calls.store(user_id, content, metadata, importance,
                                            idempotency_key))

    async def store_batch(self, user_id: str, items: Iterable[NewMemory | str], *,
                          idempotency_key: str | None = None) -> BatchResult:
        return await self._send(_calls.store_batch(user_id, items, idempotency_key))

    async def get(self, user_id: str, memory_id: MemoryId, *,
                  wait_for_graph: float | None = None) -> MemoryWithGraph:
        return await self._send(_calls.get(user_id, memory_id, wait_for_graph))

    async def history_page(self, user_id: str, memory_id: MemoryId, *,
                           limit: int | None = None,
                           before_version: int | None = None) -> HistoryPage:
        return await self._send(_calls.history_page(user_id, memory_id, limit, before_version))

    async def history_pages(self, user_id: str, memory_id: MemoryId, *, page_size: int = 100,
                            before_version: int | None = None) -> AsyncIterator[HistoryPage]:
        while True:
            page = await self.history_page(user_id, memory_id, limit=page_size,
                                           before_version=before_version)
            yield page
            if page.next_before_version is None:
                return
            before_version = page.next_before_version

    async def history(self, user_id: str, memory_id: MemoryId, *, page_size: int = 100,
                      before_version: int | None = None) -> AsyncIterator[HistoryEntry]:
        async for page in self.history_pages(user_id, memory_id, page_size=page_size,
                                             before_version=before_version):
            for entry in page.items:
                yield entry

    async def list_page(self, user_id: str, *, limit: int | None = None,
                        cursor: str | None = None, min_importance: int | None = None,
                        metadata: Mapping[str, Any] | None = None) -> Page:
        return await self._send(_calls.list_page(user_id, limit, cursor, min_importance,
                                                metadata))

    async def pages(self, user_id: str, *, page_size: int = 100,
                    min_importance: int | None = None,
                    metadata: Mapping[str, Any] | None = None) -> AsyncIterator[Page]:
        cursor: str | None = None
        while True:
            page = await self.list_page(user_id, limit=page_size, cursor=cursor,
                                        min_importance=min_importance, metadata=metadata)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def list(self, user_id: str, *, page_size: int = 100,
                   min_importance: int | None = None,
                   metadata: Mapping[str, Any] | None = None) -> AsyncIterator[Memory]:
        async for page in self.pages(user_id, page_size=page_size,
                                     min_importance=min_importance, metadata=metadata):
            for memory in page.items:
                yield memory

    async def update(self, user_id: str, memory_id: MemoryId, *, content: str | None = None,
                     metadata: Mapping[str, Any] | None = None, importance: int | None = None,
                     expected_version: int | None = None) -> Memory:
        return await self._send(_calls.update(user_id, memory_id, content, metadata, importance,
                                             expected_version))

    async def delete(self, user_id: str, memory_id: MemoryId, *,
                     expected_version: int | None = None) -> Deleted:
        return await self._send(_calls.delete(user_id, memory_id, expected_version))

    async def search(self, user_id: str, query: str, *, top_k: int | None = None,
                     metadata: Mapping[str, Any] | None = None,
                     min_importance: int | None = None, mode: SearchMode | None = None,
                     expand: Expand | None = None) -> SearchResult:
        return await self._send(_calls.search(user_id, query, top_k, metadata, min_importance,
                                              mode, expand))

    async def related(self, user_id: str, memory_id: MemoryId, *,
                      limit: int | None = None) -> RelatedResult:
        return await self._send(_calls.related(user_id, memory_id, limit))

    async def entities(self, user_id: str, *, query: str | None = None,
                       entity_type: str | None = None,
                       limit: int | None = None) -> EntitiesResult:
        return await self._send(_calls.entities(user_id, query, entity_type, limit))

    async def entity_memories(self, user_id: str, key: str, *,
                              limit: int | None = None) -> EntityMemoriesResult:
        return await self._send(_calls.entity_memories(user_id, key, limit))
