"""The MCP tools: one user's memories, through the same services as the HTTP API.

Every tool is a thin call of ``MemoryService`` or ``Retrieval`` with the user id the server was
configured with; no tool takes a user id, so a model cannot act for another user. Arguments are
pydantic-typed (their JSON schemas are what ``tools/list`` shows) and bounded like the HTTP
API's; the services apply the one input contract (``app.validation``) on top. Our own errors
become tool errors (``isError: true``) with the same messages the HTTP API gives; anything else
is logged and answered as an internal error, never a crash of the server.
"""

import inspect
import logging
import uuid
from collections.abc import Callable
from importlib import metadata as package_metadata
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import Field

from app.api.schemas import (
    Content,
    Deleted,
    EntitiesResult,
    EntityMemoriesResult,
    Metadata,
    RelatedResult,
    SearchResult,
    entities_result,
    entity_memories_result,
    related_result,
    search_result,
)
from app.domain import MAX_PAGE, MAX_TOP_K, Memory
from app.errors import MemoryPersistenceError
from app.validation import MAX_BIGINT, check_user_id
from app.wiring import Services

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUCTIONS = (
    "Long-term memory of one user. Store what is worth remembering with add_memory; before "
    "answering, look for what is already known with search_memories (by meaning, by words, "
    "or both). Memories mention entities (people, projects, places...): related_memories and "
    "entity_memories follow them. Changes reach the entity graph a moment after a write.")

Query = Annotated[Content, Field(description=(
    "What to look for: a question, a paraphrase or keywords."))]
MemoryId = Annotated[uuid.UUID, Field(description="The memory's id (a UUID).")]
Importance = Annotated[int, Field(ge=1, le=10, description="1 (trivial) to 10 (vital).")]
Version = Annotated[int, Field(ge=1, le=MAX_BIGINT, description=(
    "The version you last read: refuse the change unless it is still the current one."))]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, description="At most this many.")]

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_CHANGE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


def _answer(call: Callable[[], T]) -> T:
    """The service's answer; our errors as a tool error with the API's message."""
    try:
        return call()
    except MemoryPersistenceError as exc:
        raise ToolError(exc.public if exc.public is not None else str(exc)) from exc
    except Exception as exc:
        log.exception("MCP tool failed", extra={"action": "mcp.tool_failed"})
        raise ToolError("internal error") from exc


class _Server(MCPServer[Any]):
    """The SDK's server, refusing unknown arguments (the SDK drops them), with argument errors
    that name the field and the rule only."""

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Any = None) -> CallToolResult | InputRequiredResult:
        known = {t.name: t.input_schema.get("properties", {}) for t in await self.list_tools()}
        unknown = sorted(set(arguments) - set(known.get(name, arguments)))
        if unknown:  # say so, rather than ignore it: above all a user id
            raise ToolError(f"invalid arguments for {name}: unknown {', '.join(unknown)} (this "
                            f"server acts for its configured user only)")
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) \
                    or not isinstance(cause, pydantic.ValidationError):
                raise
            # pydantic's text repeats the rejected value and links its docs: neither helps.
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: "
                                 f"{e['msg']}" for e in cause.errors())
            raise ToolError(f"invalid arguments for {name}: {problems}") from cause


def build_server(services: Services, user_id: str) -> MCPServer:
    """The MCP server whose tools act on ``user_id``'s memories only."""
    user = check_user_id(user_id)
    memories = services.memories
    retrieval = services.retrieval
    server = _Server("memory-persistence", instructions=INSTRUCTIONS, version=_version(),
                       log_level=services.settings.log_level)

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], None]:
        """Register a tool; its description is its docstring, without the indentation."""
        def register(fn: Callable[..., Any]) -> None:
            server.add_tool(fn, description=inspect.cleandoc(fn.__doc__ or ""),
                            annotations=annotations)
        return register

    @tool(_WRITE)
    def add_memory(content: Content, metadata: Metadata | None = None,
                   importance: Importance = 5) -> Memory:
        """Remember a piece of text (a fact, a preference, an event) for this user.

        Returns the stored memory with its id and version. Its entities are extracted in the
        background: they appear in related_memories and list_entities a moment later.
        """
        return _answer(lambda: memories.store(user, content, metadata, importance)[0])

    @tool(_READ)
    def search_memories(
        query: Query,
        mode: Annotated[Literal["vector", "text", "hybrid"], Field(description=(
            "vector: nearest by meaning; text: full-text search on the words; hybrid (the "
            "default): both rankings fused."))] = "hybrid",
        top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K, description="At most this many hits.")
                         ] = 10,
        metadata: Annotated[Metadata | None, Field(description=(
            "Only memories whose metadata contains this JSON object."))] = None,
        min_importance: Importance = 1,
        expand_graph: Annotated[bool, Field(description=(
            "Also return the hits' neighbours in the entity graph (memories sharing people, "
            "projects, places with them), marked via=graph."))] = False,
    ) -> SearchResult:
        """Find this user's memories that best match a query, best first.

        Each hit says how it ranked (score, similarity, vector_rank, text_rank).
        """
        return _answer(lambda: search_result(retrieval.search(
            user, query, mode=mode, top_k=top_k, metadata=metadata,
            min_importance=min_importance, expand="graph" if expand_graph else None)))

    @tool(_READ)
    def get_memory(memory_id: MemoryId) -> Memory:
        """Read one memory by id, with its current version and extracted entities."""
        return _answer(lambda: memories.get(user, memory_id))

    @tool(_CHANGE)
    def update_memory(memory_id: MemoryId, content: Content | None = None,
                      metadata: Annotated[Metadata | None, Field(description=(
                          "Replaces the whole metadata object."))] = None,
                      importance: Importance | None = None,
                      expected_version: Version | None = None) -> Memory:
        """Change a memory's content, metadata or importance (give at least one).

        Pass expected_version (the version you read) so a change made meanwhile is not
        overwritten; a stale version is refused and the error names the current one.
        """
        return _answer(lambda: memories.update(
            user, memory_id, content=content, metadata=metadata, importance=importance,
            expected_version=expected_version))

    @tool(_CHANGE)
    def delete_memory(memory_id: MemoryId, expected_version: Version | None = None) -> Deleted:
        """Forget a memory. Entities nothing mentions any more leave the graph too."""
        return _answer(lambda: Deleted(id=memory_id, version=memories.delete(
            user, memory_id, expected_version=expected_version)))

    @tool(_READ)
    def related_memories(memory_id: MemoryId, limit: Limit = 10) -> RelatedResult:
        """Memories that share entities (people, projects, places...) with this one, most
        shared first, each with the entities it shares.

        degraded=true: the graph was down or behind, and the answer comes from the
        extractions stored with the memories.
        """
        return _answer(lambda: related_result(retrieval.related(user, memory_id,
                                                                limit=limit)))

    @tool(_READ)
    def list_entities(
        query: Annotated[str | None, Field(min_length=1, max_length=200, description=(
            "Part of the name, any case."))] = None,
        entity_type: Annotated[str | None, Field(pattern=r"^[a-z_]{1,40}$", description=(
            "Only this type, e.g. person, organization, project."))] = None,
        limit: Limit = 50,
    ) -> EntitiesResult:
        """The entities this user's memories mention, most mentioned first, with their keys
        (type:name) for entity_memories."""
        return _answer(lambda: entities_result(retrieval.entities(
            user, query=query, type_=entity_type, limit=limit)))

    @tool(_READ)
    def entity_memories(
        key: Annotated[str, Field(min_length=3, max_length=300, description=(
            "The entity's key as list_entities gives it, type:name (e.g. person:john)."))],
        limit: Limit = 50,
    ) -> EntityMemoriesResult:
        """This user's memories that mention one entity, most important first."""
        return _answer(lambda: entity_memories_result(retrieval.entity_memories(
            user, key, limit=limit)))

    return server


def _version() -> str:
    try:
        return package_metadata.version("memory-persistence")
    except package_metadata.PackageNotFoundError:
        return ""
