"""The MCP server (``memctl mcp``) driven by the official SDK's own client, as a real subprocess:
over stdio (as a desktop host starts it) and over streamable HTTP (behind the service keys).

The tools act on the configured user only: no tool takes a user id, and another user's memory
answers as a missing one does. Bad input is a tool error, never a crash of the server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from app.db.connector import Database
from app.embeddings import HashingEmbedder
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.settings import Settings
from app.wiring import Services, build_services
from devtools.harness import REPO, ManagedProcess, child_env
from devtools.localservers import free_port
from tests.conftest import bearer, drain, wait_for

pytestmark = pytest.mark.slow

TOOLS = {"add_memory", "search_memories", "get_memory", "update_memory", "delete_memory",
         "related_memories", "list_entities", "entity_memories"}


@pytest.fixture
def mcp_settings(settings: Settings) -> Settings:
    """The test's settings for the MCP process: alice's memories, the hashing embedder."""
    return settings.model_copy(update={"embedding_provider": "hashing", "mcp_user_id": "alice",
                                       "log_level": "WARNING"})


@pytest.fixture
def parts(mcp_settings: Settings, db: Database, graph: Neo4jGraph) -> Iterator[Services]:
    """The same services in the test process: to seed other users and project the graph."""
    with build_services(mcp_settings, db=db, graph=graph, embedder=HashingEmbedder(384),
                        extractor=RuleExtractor()) as services:
        yield services


@asynccontextmanager
async def stdio_server(settings: Settings, log: Path) -> AsyncIterator[Client]:
    """``memctl mcp`` started by the SDK's stdio client, as an MCP host starts it."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "app.cli", "mcp"],
                                   env=child_env(settings), cwd=str(REPO))
    with log.open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


@asynccontextmanager
async def http_server(url: str, key: str | None) -> AsyncIterator[Client]:
    headers = bearer(key) if key is not None else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
            Client(streamable_http_client(url, http_client=http)) as client:
        yield client


def result(answer: CallToolResult) -> dict[str, Any]:
    """A successful tool call's structured result (and its text twin says the same)."""
    assert not answer.is_error, answer.content
    assert answer.structured_content is not None
    text = answer.content[0]
    assert json.loads(text.text) == answer.structured_content  # type: ignore[union-attr]
    return answer.structured_content


def error(answer: CallToolResult) -> str:
    assert answer.is_error, answer.structured_content
    return answer.content[0].text  # type: ignore[union-attr]


async def lifecycle(client: Client, parts: Services) -> None:
    """add -> search -> get -> update -> related -> entities -> delete, through the tools."""
    added = result(await client.call_tool("add_memory", {
        "content": "Meeting with John about the Q4 roadmap", "metadata": {"topic": "work"},
        "importance": 7}))
    assert added["user_id"] == "alice" and added["version"] == 1
    other = result(await client.call_tool("add_memory", {
        "content": "John sent the Q4 review", "importance": 4}))
    result(await client.call_tool("add_memory", {"content": "Buy oat milk"}))

    for mode in ("vector", "text", "hybrid"):
        found = result(await client.call_tool("search_memories", {
            "query": "John Q4 roadmap meeting", "mode": mode, "top_k": 2}))
        assert found["mode"] == mode and len(found["items"]) <= 2
        assert found["items"][0]["id"] == added["id"], (mode, found)
    filtered = result(await client.call_tool("search_memories", {
        "query": "John", "metadata": {"topic": "work"}, "min_importance": 5}))
    assert [h["id"] for h in filtered["items"]] == [added["id"]]

    got = result(await client.call_tool("get_memory", {"memory_id": added["id"]}))
    assert got["content"] == "Meeting with John about the Q4 roadmap"

    changed = result(await client.call_tool("update_memory", {
        "memory_id": added["id"], "importance": 9, "expected_version": 1}))
    assert changed["version"] == 2 and changed["importance"] == 9
    stale = error(await client.call_tool("update_memory", {
        "memory_id": added["id"], "importance": 2, "expected_version": 1}))
    assert "version 2" in stale

    drain(parts.projector, parts.db)  # the worker's part: entities into the graph
    related = result(await client.call_tool("related_memories", {"memory_id": added["id"]}))
    assert [r["memory"]["id"] for r in related["items"]] == [other["id"]]
    assert {e["key"] for e in related["items"][0]["shared_entities"]} >= {"person:john"}
    assert related["source"] == "graph" and not related["degraded"]
    expanded = result(await client.call_tool("search_memories", {
        "query": "John Q4 roadmap meeting", "top_k": 1, "expand_graph": True}))
    assert [(h["id"], h["via"]) for h in expanded["items"]] == [
        (added["id"], "search"), (other["id"], "graph")]
    entities = result(await client.call_tool("list_entities", {"query": "jo"}))
    assert [(e["key"], e["mentions"]) for e in entities["items"]] == [("person:john", 2)]
    mentioning = result(await client.call_tool("entity_memories", {"key": "person:john"}))
    assert [m["id"] for m in mentioning["items"]] == [added["id"], other["id"]]

    deleted = result(await client.call_tool("delete_memory", {
        "memory_id": added["id"], "expected_version": 2}))
    assert deleted == {"id": added["id"], "version": 3, "deleted": True}
    assert "not found" in error(await client.call_tool("get_memory",
                                                       {"memory_id": added["id"]}))


async def cannot_reach_bob(client: Client, bob_id: str) -> None:
    """Every tool that names a memory answers for bob's as for a missing one."""
    missing = str(uuid.uuid4())
    for tool, extra in (("get_memory", {}), ("update_memory", {"content": "mine now"}),
                        ("delete_memory", {}), ("related_memories", {})):
        for memory_id in (bob_id, missing):
            assert "not found" in error(await client.call_tool(
                tool, {"memory_id": memory_id, **extra})), tool
    # A model that adds a user id gets no further: the tools have no such argument.
    for tool in ("get_memory", "delete_memory"):
        sneaky = error(await client.call_tool(tool, {"memory_id": bob_id, "user_id": "bob"}))
        assert "unknown user_id" in sneaky, sneaky
    found = result(await client.call_tool("search_memories", {"query": "bob secret plan"}))
    assert bob_id not in {h["id"] for h in found["items"]}
    assert result(await client.call_tool("entity_memories", {"key": "person:bob"}))["items"] \
        == []


async def bad_input_is_a_tool_error(client: Client) -> None:
    deep: dict[str, Any] = {}
    level = deep
    for _ in range(40):  # past MAX_METADATA_DEPTH
        level["a"] = level = {}
    for tool, arguments in (
            ("get_memory", {"memory_id": "not-a-uuid"}),
            ("get_memory", {"memory_id": str(uuid.uuid4()), "as_admin": True}),
            ("search_memories", {"query": "x", "top_k": 1000}),
            ("search_memories", {"query": "x", "top_k": "many"}),
            ("search_memories", {"query": "x", "mode": "psychic"}),
            ("search_memories", {"query": ""}),
            ("add_memory", {"content": "x", "importance": 11}),
            ("add_memory", {"content": "nul \x00 inside"}),
            ("add_memory", {"content": "deep", "metadata": deep}),
            ("update_memory", {"memory_id": str(uuid.uuid4())}),
            ("entity_memories", {"key": "no-colon"}),
            ("list_entities", {"entity_type": "Person!"}),
            ("no_such_tool", {})):
        text = error(await client.call_tool(tool, arguments))
        assert text and "pydantic.dev" not in text and "Traceback" not in text, text


def test_stdio_tools_list_lifecycle_isolation_and_bad_input(
        mcp_settings: Settings, parts: Services, tmp_path: Path) -> None:
    bob, _ = parts.memories.store("bob", "bob secret plan with Bob", importance=10)

    async def session() -> None:
        async with stdio_server(mcp_settings, tmp_path / "mcp.log") as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert set(listed) == TOOLS
            for tool in listed.values():
                assert tool.description and tool.input_schema["type"] == "object"
                assert "user_id" not in tool.input_schema.get("properties", {}), tool.name
            search = listed["search_memories"].input_schema["properties"]
            assert search["mode"]["enum"] == ["vector", "text", "hybrid"]
            assert search["top_k"]["maximum"] == 100
            assert listed["search_memories"].annotations.read_only_hint  # type: ignore[union-attr]
            assert listed["delete_memory"].annotations.destructive_hint  # type: ignore[union-attr]

            await lifecycle(client, parts)
            await cannot_reach_bob(client, str(bob.id))
            await bad_input_is_a_tool_error(client)
            # still serving after all of that
            assert result(await client.call_tool("list_entities", {}))["items"] is not None

    asyncio.run(session())
    assert parts.memories.get("bob", bob.id).version == 1  # untouched


@pytest.fixture
def http_mcp(mcp_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """``memctl mcp --transport http`` on a free port; yields its /mcp URL."""
    port = free_port()
    proc = ManagedProcess("mcp", [sys.executable, "-m", "app.cli", "mcp", "--transport", "http",
                                  "--port", str(port)],
                          child_env(mcp_settings), tmp_path / "mcp-http.log")
    url = f"http://127.0.0.1:{port}/mcp"

    def listening() -> bool:
        if proc.proc.poll() is not None:
            pytest.fail(f"memctl mcp exited:\n{proc.log()}")
        try:
            httpx.get(url, timeout=1)
        except httpx.TransportError:
            return False
        return True

    try:
        wait_for(listening, 60, "the MCP server to listen")
        yield url
    finally:
        proc.stop(grace=10)


def test_http_needs_a_service_key_and_serves_the_configured_user(
        http_mcp: str, parts: Services, service_key: str, admin_key: str) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in ({}, bearer("svc-wrong"), {"Authorization": "Basic c3ZjOmtleQ=="}):
        refused = httpx.post(http_mcp, json=initialize, headers={**headers, **auth}, timeout=10)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
    acme = parts.keys.create("acme integration", "service", "acme", actor="test").secret
    bound = httpx.post(http_mcp, json=initialize, headers={**headers, **bearer(acme)},
                       timeout=10)
    assert bound.status_code == 403  # alice is not in the key's namespace
    assert httpx.post(http_mcp, json=initialize, headers={**headers, **bearer(service_key)},
                      timeout=10).status_code == 200

    bob, _ = parts.memories.store("bob", "bob secret plan with Bob", importance=10)

    async def sessions() -> None:
        with pytest.raises(Exception):  # noqa: B017 - the SDK's own error for a 401
            async with http_server(http_mcp, None) as client:
                await client.list_tools()
        async with http_server(http_mcp, service_key) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            await lifecycle(client, parts)
            await cannot_reach_bob(client, str(bob.id))
            await bad_input_is_a_tool_error(client)
        async with http_server(http_mcp, admin_key) as client:  # an admin key may too
            found = result(await client.call_tool("search_memories", {"query": "oat milk"}))
            assert [h["content"] for h in found["items"]][:1] == ["Buy oat milk"]

    asyncio.run(sessions())


@pytest.mark.parametrize(("args", "message"), [
    ([], "set MCP_USER_ID or pass --user-id"),
    (["--user-id", "bad\x01user"], "MCP_USER_ID"),
    (["--user-id", "alice", "--transport", "carrier-pigeon"], "--transport must be stdio or http"),
])
def test_memctl_mcp_refuses_to_start_without_a_valid_user_or_transport(
        args: list[str], message: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    done = subprocess.run([sys.executable, "-m", "app.cli", "mcp", *args], cwd=REPO,
                          env={**env, "LOCAL_DIR": str(tmp_path)}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stdout == ""
