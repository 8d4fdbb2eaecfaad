"""Dramatiq on Redis: the transport between the relay and the workers (never the ledger)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, ShutdownNotifications, TimeLimit

from app.settings import Settings

PROJECT_ACTOR = "project_outbox"


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with only the middleware we rely on.

    Dramatiq's Retries middleware is left out on purpose: the outbox row holds the durable
    attempt count and schedule, which a killed worker or a flushed Redis cannot reset.
    """
    broker = RedisBroker(url=settings.redis_url, middleware=[  # type: ignore[no-untyped-call]
        AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(),
    ], namespace="memctl", heartbeat_timeout=int(max(settings.lease_seconds, 10) * 1000))
    return broker


def declare_project_actor(broker: RedisBroker, settings: Settings,
                          handler: Callable[[list[int]], Any]) -> dramatiq.Actor[Any, Any]:
    """The one actor: project a batch of outbox rows (by id)."""
    return dramatiq.Actor(
        handler, broker=broker, actor_name=PROJECT_ACTOR, queue_name=settings.queue_name,
        priority=0,
        options={"time_limit": int(settings.lease_seconds * 1000 * 2), "max_retries": 0},
    )


def project_message(settings: Settings, outbox_ids: list[int]) -> dramatiq.Message[Any]:
    """The message the relay sends for a batch of rows."""
    return dramatiq.Message(queue_name=settings.queue_name, actor_name=PROJECT_ACTOR,
                            args=(outbox_ids,), kwargs={}, options={})
