"""Background sync jobs: check, repair, full and rebuild run by a runner, not a web request.

``sync_jobs`` holds one row per submitted operation and every transition of it (``app.jobs``
owns them): queued, running (a runner holds a lease it renews), then done, failed or cancelled.
A running job whose lease ran out lost its runner; the next runner takes it over (a new claim
token fences the old one out) until ``max_attempts`` runs are spent, then it fails.

Revision ID: 0008_jobs
Revises: 0007_history
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0008_jobs"
down_revision = "0007_history"
branch_labels = None
depends_on = None


def upgrade(**kw: Any) -> None:
    op.execute("""
    CREATE TABLE sync_jobs (
        id                  bigserial PRIMARY KEY,
        kind                text NOT NULL
                            CHECK (kind IN ('check', 'repair', 'full', 'rebuild')),
        params              jsonb NOT NULL DEFAULT '{}',
        requested_by        text NOT NULL,
        status              text NOT NULL DEFAULT 'queued'
                            CHECK (status IN ('queued', 'running', 'done', 'failed',
                                              'cancelled')),
        phase               text,
        done                bigint NOT NULL DEFAULT 0,
        total               bigint,
        phases              jsonb NOT NULL DEFAULT '[]',
        attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        max_attempts        integer NOT NULL CHECK (max_attempts >= 1),
        runner              text,
        claim_token         uuid,
        lease_expires_at    timestamptz,
        heartbeat_at        timestamptz,
        not_before          timestamptz NOT NULL DEFAULT now(),
        cancel_requested_at timestamptz,
        cancelled_by        text,
        result              jsonb,
        error               text,
        created_at          timestamptz NOT NULL DEFAULT now(),
        started_at          timestamptz,
        attempt_started_at  timestamptz,
        finished_at         timestamptz,
        updated_at          timestamptz NOT NULL DEFAULT now()
    )""")
    # What runners scan: due queued jobs, and running jobs whose lease may have run out.
    op.execute("CREATE INDEX sync_jobs_queued ON sync_jobs (not_before, id)"
               " WHERE status = 'queued'")
    op.execute("CREATE INDEX sync_jobs_running ON sync_jobs (lease_expires_at)"
               " WHERE status = 'running'")
    # Pruning finished jobs past retention.
    op.execute("CREATE INDEX sync_jobs_finished ON sync_jobs (finished_at)"
               " WHERE finished_at IS NOT NULL")


def downgrade(**kw: Any) -> None:
    op.execute("DROP TABLE sync_jobs")
