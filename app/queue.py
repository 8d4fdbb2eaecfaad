"""Dramatiq on Redis: the transport between the relay and the workers (never the ledger).

The one owner of Redis I/O: building the broker, declaring the projection actor, sending a batch
of outbox ids, probing Redis. Redis and Dramatiq errors leave as ``QueueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import DramatiqError
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, ShutdownNotifications, TimeLimit
from redis.exceptions import RedisError

from app.errors import QueueError
from app.settings import Settings

PROJECT_ACTOR = "project_outbox"
NAMESPACE = "memctl"


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with only the middleware we rely on.

    Dramatiq's Retries middleware is left out on purpose: the outbox row holds the durable
    attempt count and schedule, which a killed worker or a flushed Redis cannot reset.
    """
    return RedisBroker(url=settings.redis_url, middleware=[  # type: ignore[no-untyped-call]
        AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(),
    ], namespace=NAMESPACE, heartbeat_timeout=int(max(settings.lease_seconds, 10) * 1000))


def declare_project_actor(broker: RedisBroker, settings: Settings,
                          handler: Callable[[list[int]], Any]) -> dramatiq.Actor[Any, Any]:
    """The one actor: project a batch of outbox rows (by id)."""
    return dramatiq.Actor(
        handler, broker=broker, actor_name=PROJECT_ACTOR, queue_name=settings.queue_name,
        priority=0,
        options={"time_limit": int(settings.lease_seconds * 1000 * 2), "max_retries": 0},
    )


class ProjectionQueue:
    """Sends batches of outbox ids to the workers."""

    def __init__(self, settings: Settings, broker: RedisBroker | None = None) -> None:
        self.settings = settings
        self.broker = broker or build_broker(settings)

    def send(self, outbox_ids: list[int]) -> None:
        """Enqueue one message naming these rows; raises QueueError when Redis refuses."""
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=self.settings.queue_name, actor_name=PROJECT_ACTOR,
            args=(outbox_ids,), kwargs={}, options={})
        try:
            self.broker.enqueue(message)
        except (RedisError, DramatiqError, OSError) as exc:
            raise QueueError(f"enqueue failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.broker.close()


def ping(settings: Settings) -> None:
    """Raise QueueError unless Redis answers."""
    client = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=2,
                                      socket_connect_timeout=2)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        raise QueueError(f"Redis: {type(exc).__name__}: {exc}") from exc
    finally:
        client.close()
