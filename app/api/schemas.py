"""Request and response bodies of the HTTP API, every route's in one module.

Requests forbid unknown fields and use strict types (``"5"`` is not an importance), so a caller's
typo is a 422 naming the field rather than a silently ignored value. Limits that depend on
settings (content length) are checked by MemoryService, the one place every caller goes through.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
)

from app import retrieval
from app.consistency import Operation
from app.domain import MAX_PAGE, MAX_TOP_K, Memory
from app.errors import ValidationError
from app.validation import (
    MAX_BIGINT,
    MAX_USER_ID,
    USER_ID_PATTERN,
    check_text,
    check_user_id,
)


def _rule(check: Callable[[str], object]) -> Callable[[str], str]:
    """A pydantic validator from one of app.validation's checks (the one input contract)."""
    def validate(value: str) -> str:
        try:
            check(value)
        except ValidationError as exc:
            # pydantic names the field; keep the rule without the validator's field name.
            raise ValueError(str(exc).split(" ", 1)[1] if " " in str(exc) else str(exc)) \
                from None
        return value
    return validate


def _iso_datetime(value: object) -> object:
    """Only ISO 8601 text is a timestamp here: pydantic would take 0.5 as seconds since 1970."""
    if not isinstance(value, str | datetime) or (
            isinstance(value, str) and not any(c in value for c in "-:T")):
        raise ValueError("must be an ISO 8601 timestamp, like 2025-01-31T12:00:00Z")
    return value


UserId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=MAX_USER_ID, description=(
        "The memory's owner: printable text, not only white space, no control characters."),
        json_schema_extra={"pattern": USER_ID_PATTERN}),
    AfterValidator(_rule(check_user_id)),
]
Content = Annotated[
    StrictStr,
    Field(min_length=1, description="The text to remember (at most MAX_CONTENT_CHARS)."),
    AfterValidator(_rule(lambda v: check_text(v, "text"))),
]
Text = Annotated[StrictStr, AfterValidator(_rule(lambda v: check_text(v, "text",
                                                                      allow_blank=True)))]
Importance = Annotated[StrictInt, Field(ge=1, le=10, description="1 (trivial) to 10 (vital).")]
Metadata = Annotated[dict[str, Any], Field(description=(
    "A JSON object, within MAX_METADATA_BYTES (serialized), MAX_METADATA_DEPTH levels and "
    "MAX_METADATA_KEYS keys."))]
Version = Annotated[StrictInt, Field(ge=1, le=MAX_BIGINT, description="A memory version.")]
BigId = Annotated[StrictInt, Field(ge=1, le=MAX_BIGINT)]
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]


class StrictBody(BaseModel):
    """Unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class StoreRequest(StrictBody):
    """A new memory."""

    user_id: UserId
    content: Content
    metadata: Metadata | None = None
    importance: Importance = 5

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": "user-1", "content": "Meeting with John about the Q4 roadmap",
        "metadata": {"source": "calendar"}, "importance": 7}]})


class BatchItem(StrictBody):
    """One memory of a batch (its user is the batch's)."""

    content: Content
    metadata: Metadata | None = None
    importance: Importance = 5


class BatchStoreRequest(StrictBody):
    """Several memories of one user, stored in one transaction: all or none."""

    user_id: UserId
    items: Annotated[list[BatchItem], Field(min_length=1, description=(
        "At most MAX_BATCH_ITEMS (default 500); a bad item is a 422 naming "
        "`items.<index>.<field>` and stores nothing."))]


class BatchResult(BaseModel):
    """The stored memories, in the order given."""

    items: list[Memory]


class LegacyStoreRequest(StrictBody):
    """The old system's ``/api/memory/store`` body, kept so existing callers work unchanged."""

    user_id: UserId = Field(alias="userId")
    content: Content
    importance: Importance = 5
    metadata: Metadata | None = None


class UpdateRequest(StrictBody):
    """A change to a memory; fields left out keep their value (at least one must change)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["content"]}, {"required": ["metadata"]}, {"required": ["importance"]}]})

    user_id: UserId
    content: Content | None = None
    metadata: Metadata | None = Field(default=None, description="Replaces the whole object.")
    importance: Importance | None = None
    expected_version: Version | None = Field(
        default=None, description="Refuse with 409 unless this is the current version "
                                  "(the `If-Match` header does the same).")


class SearchRequest(StrictBody):
    """A search over one user's memories: by meaning, by words, or both (the default)."""

    user_id: UserId
    query: Content
    mode: Literal["vector", "text", "hybrid"] = Field(default="hybrid", description=(
        "`vector`: nearest by meaning (the configured embedder's vectors); `text`: Postgres "
        "full-text search; `hybrid`: both lists fused by reciprocal rank."))
    top_k: Annotated[StrictInt, Field(ge=1, le=MAX_TOP_K)] = 10
    metadata: Metadata | None = Field(
        default=None, description="Only memories whose metadata contains this object.")
    min_importance: Importance = 1
    expand: Literal["graph"] | None = Field(default=None, description=(
        "`graph`: add the hits' graph neighbours (memories sharing entities with them), "
        "marked `via: graph`."))


class EntityRef(BaseModel):
    """An entity of the user: `key` is `type:name` (the name normalised)."""

    key: str
    name: str
    type: str


class SearchHit(Memory):
    """A memory found, and where it ranked."""

    score: float = Field(description=(
        "hybrid: the fused score (sum of 1 / (k + rank)); vector: cosine similarity; text: "
        "Postgres' text rank; 0 for graph neighbours."))
    similarity: float | None = Field(default=None, description="Cosine similarity, if ranked.")
    vector_rank: int | None = Field(default=None, description="Rank in the vector list.")
    text_rank: int | None = Field(default=None, description="Rank in the full-text list.")
    text_score: float | None = None
    via: Literal["search", "graph"] = "search"
    neighbour_of: uuid.UUID | None = Field(default=None, description=(
        "via graph: the hit whose neighbour this is."))
    shared_entities: list[EntityRef] = Field(default_factory=list, description=(
        "via graph: the entities it shares with that hit."))


class GraphAnswer(BaseModel):
    """How a read of the graph was answered."""

    source: Literal["graph", "postgres"]
    degraded: bool = Field(description=(
        "True when the graph was unavailable or behind and the answer comes from the "
        "extractions cached in Postgres."))
    reason: str | None = None


class SearchResult(BaseModel):
    """Matches, best first (then graph neighbours, with expand)."""

    items: list[SearchHit]
    mode: Literal["vector", "text", "hybrid"]
    embedder: str = Field(description="The embedder whose vectors were compared.")
    pending_reembed: int = Field(description=(
        "This user's memories whose vectors are not the configured embedder's yet (they are "
        "found by text until `memctl reembed` or the scheduler moves them)."))
    graph: GraphAnswer | None = Field(default=None, description="With expand: how.")


class RelatedItem(BaseModel):
    memory: Memory
    shared_entities: list[EntityRef]


class RelatedResult(BaseModel):
    """The user's live memories sharing entities with this one, most shared first, then most
    important, then most recent."""

    memory_id: uuid.UUID
    memory_version: int
    graph_version: int | None = Field(description="The version the graph has (null: none).")
    items: list[RelatedItem]
    degraded: bool
    source: Literal["graph", "postgres"]
    reason: str | None = None


class EntityItem(EntityRef):
    mentions: int = Field(description="Live memories that mention it.")


class EntitiesResult(BaseModel):
    items: list[EntityItem]
    degraded: bool
    source: Literal["graph", "postgres"]
    reason: str | None = None
    in_transit: int = Field(description="This user's changes the graph has not applied yet.")


class EntityMemoriesResult(BaseModel):
    items: list[Memory]
    degraded: bool
    source: Literal["graph", "postgres"]
    reason: str | None = None
    in_transit: int


def entity_ref(e: retrieval.EntityRef) -> EntityRef:
    return EntityRef(key=e.key, name=e.name, type=e.type)


def search_result(found: retrieval.SearchResult) -> SearchResult:
    """A search's answer as the HTTP API (and the MCP server) return it."""
    return SearchResult(
        items=[SearchHit(**h.memory.model_dump(), score=h.score, similarity=h.similarity,
                         vector_rank=h.vector_rank, text_rank=h.text_rank,
                         text_score=h.text_score, via=h.via, neighbour_of=h.neighbour_of,
                         shared_entities=[entity_ref(e) for e in h.shared]) for h in found.hits],
        mode=found.mode, embedder=found.embedder, pending_reembed=found.pending_reembed,
        graph=GraphAnswer(**dataclasses.asdict(found.graph)) if found.graph else None)


def related_result(found: retrieval.RelatedResult) -> RelatedResult:
    return RelatedResult(
        memory_id=found.memory_id, memory_version=found.memory_version,
        graph_version=found.graph_version,
        items=[RelatedItem(memory=r.memory, shared_entities=[entity_ref(e) for e in r.shared])
               for r in found.items],
        **dataclasses.asdict(found.answer))


def entities_result(found: retrieval.EntitiesResult) -> EntitiesResult:
    return EntitiesResult(items=[EntityItem(key=i.entity.key, name=i.entity.name,
                                            type=i.entity.type, mentions=i.mentions)
                                 for i in found.items],
                          in_transit=found.in_transit, **dataclasses.asdict(found.answer))


def entity_memories_result(found: retrieval.EntityMemoriesResult) -> EntityMemoriesResult:
    return EntityMemoriesResult(items=found.items, in_transit=found.in_transit,
                                **dataclasses.asdict(found.answer))


class Deleted(BaseModel):
    """The answer to a delete."""

    id: uuid.UUID
    version: int = Field(description="The version the delete created.")
    deleted: bool = True


class Health(BaseModel):
    status: str = "ok"


class Whoami(BaseModel):
    scope: str


# -- operators: stats, health, dead letters -----------------------------------------------


class OutboxStats(BaseModel):
    """Outbox rows per status and the projection lag."""

    pending: int
    in_flight: int
    done: int
    dead: int
    expired_leases: int = Field(description="In-flight rows whose lease ran out.")
    lag_seconds: float = Field(description="Age of the oldest open (pending or in-flight) row.")
    held: int = Field(default=0, description=(
        "Pending rows a dependency's breaker holds back (no attempt spent); due when it "
        "closes."))


class MemoryCounts(BaseModel):
    live: int
    deleted: int = Field(description="Tombstones not yet pruned.")
    awaiting_extraction: int
    users: int


class DeadLetterCounts(BaseModel):
    open: int = Field(description="Dead letters waiting for an admin (status `dead`).")
    replayed: int
    discarded: int


class CheckRun(BaseModel):
    """The most recent finished consistency check."""

    id: int
    scope: str
    started_at: datetime
    finished_at: datetime | None
    checked: int | None
    found: int | None
    result: dict[str, Any] | None


class Stats(BaseModel):
    """Everything an operator watches."""

    memories: MemoryCounts
    outbox: OutboxStats
    dead_letters: DeadLetterCounts
    inconsistencies: dict[str, int] = Field(description="Open inconsistencies by kind.")
    graph: dict[str, Any] | None = Field(
        description="Node and edge counts of the graph, or `{\"error\": ...}` when Neo4j is "
                    "unreachable.")
    last_check: CheckRun | None


class ServerProbe(BaseModel):
    ok: bool
    latency_ms: float | None
    error: str | None = Field(description="Why the server is unreachable.")


class BreakerReport(BaseModel):
    """A dependency's circuit breaker: while it is not `closed`, workers do not call the
    dependency, the relay holds the work that needs it, and rows wait without spending
    attempts."""

    name: str = Field(description="`graph` (Neo4j) or `extractor` (the entity extractor).")
    state: Literal["closed", "open", "half_open", "misconfigured"] = Field(description=(
        "`open` after consecutive outages (unreachable, timeouts, 5xx, 429); `half_open` "
        "while a probe is out; `misconfigured` when the dependency refuses our credentials, "
        "model or database: fix the setting and restart the workers."))
    consecutive_failures: int
    opened_at: datetime | None = Field(description="When it opened; null while closed.")
    last_error: str | None = Field(description="The last dependency failure (kept after it "
                                               "closes).")
    last_failure_at: datetime | None
    next_probe_at: datetime | None = Field(description="When a worker probes it next.")
    updated_at: datetime | None
    held: int = Field(description="Outbox rows it holds back.")


class HealthReport(BaseModel):
    """`ok`; `degraded` when only Neo4j or Redis is down or a dependency's breaker is not
    closed (writes are still accepted, the graph lags); `down` (HTTP 503) when Postgres is."""

    status: Literal["ok", "degraded", "down"]
    reasons: list[str] = Field(description=(
        "One line per unreachable server or breaker that is not closed, naming it."))
    servers: dict[str, ServerProbe] = Field(description="`postgres`, `neo4j` and `redis`.")
    outbox: OutboxStats | None = Field(description="Null when Postgres is down.")
    dead_letters: int = Field(description="Open dead letters.")
    breakers: dict[str, BreakerReport] = Field(default_factory=dict, description=(
        "The dependency breakers by name (`graph`, `extractor`); empty when Postgres is "
        "down."))


DeadStatus = Literal["dead", "replayed", "discarded"]


class DeadLetter(BaseModel):
    """An outbox event that ran out of attempts, and what an admin did about it."""

    id: int
    outbox_id: int | None = Field(description="Null once the outbox row was pruned.")
    memory_id: uuid.UUID
    user_id: str
    event_type: str
    memory_version: int
    attempts: int
    last_error: str | None
    status: DeadStatus
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None = Field(description="Who replayed or discarded it, e.g. "
                                                "`api:admin-key-1` or `cli:alice`.")
    resolution_note: str | None = Field(description="`replayed`, or the discard reason.")


class FailedAttempt(BaseModel):
    """One failed attempt in a dead letter's error history."""

    model_config = ConfigDict(extra="allow")

    attempt: int | None = None
    at: datetime | None = None
    error: str | None = None


class DeadLetterDetail(DeadLetter):
    errors: list[FailedAttempt] = Field(description="Every failed attempt, oldest first.")


class DeadLetterPage(BaseModel):
    items: list[DeadLetter] = Field(description="Newest first.")
    next_before_id: int | None = Field(
        description="Pass as `before_id` for the next page; null on the last page.")


class ReplayFilter(StrictBody):
    """Which dead letters (status `dead`) to replay; at least one criterion."""

    user_id: UserId | None = None
    error: Annotated[Text | None, Field(min_length=1, max_length=500, description=(
        "A substring of the last error (case-insensitive)."))] = None
    event_type: Annotated[Text | None, Field(min_length=1, max_length=50)] = None
    since: IsoDateTime | None = Field(default=None, description="Dead since (inclusive).")
    until: IsoDateTime | None = Field(default=None, description="Dead before (exclusive).")


class ReplayRequest(StrictBody):
    """Exactly one of `ids`, `filter` or `all: true`."""

    ids: Annotated[list[BigId] | None, Field(min_length=1, max_length=MAX_PAGE * 20)] = None
    filter: ReplayFilter | None = None
    everything: StrictBool = Field(default=False, alias="all",
                                   description="Replay every open dead letter.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"ids": [12, 13]}, {"filter": {"error": "timeout", "user_id": "user-1"}},
        {"all": True}]})


class ReplayResult(BaseModel):
    replayed: list[int] = Field(description="Dead letters whose outbox row is pending again.")
    count: int
    skipped: list[int] = Field(default_factory=list, description=(
        "Requested ids that were already replayed or discarded."))


class DiscardRequest(StrictBody):
    reason: Annotated[Content, Field(max_length=2000, description=(
        "Why the event is given up; kept on the dead letter."))]


class DiscardResult(BaseModel):
    id: int
    status: Literal["discarded"] = "discarded"
    resolved_by: str
    reason: str


# -- consistency operations --------------------------------------------------------------


class SyncBody(StrictBody):
    """A consistency operation; every field may also come from the query string."""

    operation: Operation | None = Field(default=None, description=(
        "`check` (compare and store findings), `repair` (fix the stored open findings), "
        "`full` (check, then repair what it found) or `rebuild` (re-project the graph)."))
    user_id: UserId | None = Field(
        default=None, validation_alias=AliasChoices("userId", "user_id"),
        description="Only this user's memories (`userId` or `user_id`).")
    limit: Annotated[StrictInt | None, Field(ge=1, le=MAX_BIGINT, description=(
        "check/full: at most this many memories; repair: at most this many findings."))] = None
    dry_run: StrictBool | None = Field(
        default=None, validation_alias=AliasChoices("dryRun", "dry_run"),
        description="check/repair/full: report only, store and change nothing "
                    "(`dryRun` or `dry_run`).")
    reextract: StrictBool | None = Field(default=None, description=(
        "rebuild: run the extractor again instead of using the cached extraction."))


class CheckSummary(BaseModel):
    checked: int = Field(description="Memories compared.")
    graph_nodes_checked: int
    in_transit: int = Field(description="Memories with an outbox event open: not judged.")
    found: int
    by_kind: dict[str, int]
    stored: bool = Field(description="Findings were stored (false on a dry run).")
    complete: bool = Field(description="False when `limit` stopped the check early.")
    seconds: float
    run_id: int | None


class RepairSummary(BaseModel):
    queued: int = Field(description="Outbox events queued to re-project memories.")
    removed_memories: int
    removed_entities: int
    removed_cross_user_edges: bool
    dry_run: bool


class RebuildSummary(BaseModel):
    projected: int
    skipped_deleted: int
    extracted: int
    seconds: float


class FindingOut(BaseModel):
    kind: str
    user_id: str | None
    memory_id: str | None
    entity_key: str | None
    details: dict[str, Any]


MAX_FINDINGS = 1000  # findings listed in a sync answer; all of them are stored


class SyncResult(BaseModel):
    operation: Operation
    consistent: bool | None = Field(default=None, description=(
        "check/full: whether the check found nothing."))
    check: CheckSummary | None = None
    repair: RepairSummary | None = None
    rebuild: RebuildSummary | None = None
    findings: list[FindingOut] = Field(default_factory=list, description=(
        f"check/full: what the check found (the first {MAX_FINDINGS})."))


class SyncJobParams(BaseModel):
    user_id: str | None
    limit: int | None
    dry_run: bool
    reextract: bool


class SyncJobPhase(BaseModel):
    name: str
    done: int
    total: int | None


class SyncJobProgress(BaseModel):
    phase: str | None = Field(description="The phase being run (memories, graph, repair, "
                                          "rebuild).")
    done: int = Field(description="Items of the current phase done.")
    total: int | None = Field(description="The current phase's size, when known.")
    percent: int | None
    phases: list[SyncJobPhase] = Field(description="Every phase of this attempt so far.")


class SyncJob(BaseModel):
    """A background sync job: its state, progress, timings and (once done) its report."""

    id: int
    kind: Operation
    status: Literal["queued", "running", "done", "failed", "cancelled"] = Field(description=(
        "`queued`, `running` (a runner holds its lease), then `done`, `failed` or "
        "`cancelled`."))
    params: SyncJobParams
    requested_by: str = Field(description="Which key asked for it (never the key itself).")
    progress: SyncJobProgress
    attempts: int = Field(description="Runs so far: a job whose runner died runs again.")
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = Field(description="The runner's last sign of life.")
    seconds: float | None = Field(description="How long it has run (so far).")
    cancel_requested_at: datetime | None
    cancelled_by: str | None
    error: str | None
    result: SyncResult | None = Field(description="The report, once done.")


class SyncJobList(BaseModel):
    items: list[SyncJob]
    next_before_id: int | None = Field(description=(
        "Pass as `before_id` for the next (older) page; null on the last page."))




# -- API keys ------------------------------------------------------------------------------


class ApiKey(BaseModel):
    """A key as the database has it: never its secret."""

    id: int
    name: str
    prefix: str = Field(description="The first characters of the secret, to recognise it.")
    scope: Literal["service", "admin"]
    namespace: str | None = Field(description=(
        "A tenant-bound service key acts only on user ids `<namespace>:…`."))
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    revoked_by: str | None = None


class ApiKeyRequest(StrictBody):
    name: Annotated[Content, Field(max_length=200, description="What the key is for.")]
    scope: Literal["service", "admin"] = "service"
    namespace: Annotated[StrictStr | None, Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description=(
            "Bind a service key to user ids `<namespace>:…` (e.g. `acme` for `acme:alice`)."))
    ] = None


class ApiKeyCreated(ApiKey):
    secret: str = Field(description="The key itself: shown once, never stored or shown again.")


class ApiKeyList(BaseModel):
    items: list[ApiKey]


class ReembedStatus(BaseModel):
    """How far the corpus is from the configured embedder."""

    embedder: str
    live: int
    pending: int = Field(description="Live memories whose vector is not the embedder's yet.")
    column_dimension: int
    dimension: int
    dimension_ok: bool = Field(description=(
        "False: run `memctl reembed --change-dimension` first."))
    running: bool = Field(description="A run started by this web process is going on.")
    last_run: dict[str, Any] | None = Field(default=None, description=(
        "The report of the last run this web process finished, or its error."))
