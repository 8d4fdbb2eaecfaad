"""The Neo4j adapter sorts driver errors: an outage, a misconfiguration, or the row's own."""

from __future__ import annotations

import neo4j.exceptions as nx
import pytest

from app.errors import (
    DependencyUnavailable,
    GraphConflict,
    GraphError,
    GraphMisconfigured,
    GraphUnavailable,
    Misconfigured,
)
from app.graph.neo4j import DriverTimeouts, convert


def server(code: str) -> Exception:
    """A server error with this Neo4j status code, as the driver builds it."""
    return nx.Neo4jError._hydrate_neo4j(code=code, message="from the server")


@pytest.mark.parametrize(("error", "kind"), [
    # Outages of Neo4j: the breaker's business, no attempt spent.
    (nx.ServiceUnavailable("Couldn't connect to 127.0.0.1:7687"), GraphUnavailable),
    (nx.SessionExpired("gone"), GraphUnavailable),
    (nx.ConnectionAcquisitionTimeoutError("pool"), GraphUnavailable),
    (ConnectionRefusedError(111, "refused"), GraphUnavailable),
    (server("Neo.TransientError.General.DatabaseUnavailable"), GraphUnavailable),
    (server("Neo.ClientError.Cluster.NotALeader"), GraphUnavailable),
    (server("Neo.ClientError.General.ForbiddenOnReadOnlyDatabase"), GraphUnavailable),
    (server("Neo.ClientError.Security.AuthenticationRateLimit"), GraphUnavailable),
    # Settings an operator must fix.
    (server("Neo.ClientError.Security.Unauthorized"), GraphMisconfigured),
    (server("Neo.ClientError.Database.DatabaseNotFound"), GraphMisconfigured),
    (server("Neo.ClientError.Security.Forbidden"), GraphMisconfigured),
    # The row's own transaction: retried with its attempts.
    (server("Neo.TransientError.Transaction.DeadlockDetected"), GraphConflict),
    (server("Neo.ClientError.Statement.EntityNotFound"), GraphConflict),
    # The row's, permanent.
    (server("Neo.ClientError.Schema.ConstraintValidationFailed"), GraphError),
])
def test_driver_errors_are_sorted(error: Exception, kind: type[GraphError]) -> None:
    converted = convert(error)
    assert type(converted) is kind
    outage = isinstance(converted, DependencyUnavailable | Misconfigured)
    assert outage == (kind in (GraphUnavailable, GraphMisconfigured))
    assert converted.retryable == (kind in (GraphUnavailable, GraphConflict))


@pytest.mark.parametrize(("lease", "expected"), [
    (60.0, (5.0, 5.0, 10.0)), (3.0, (0.5, 0.5, 1.0)), (20.0, (2.0, 2.0, 4.0))])
def test_the_drivers_waits_stay_well_inside_the_lease(
        lease: float, expected: tuple[float, float, float]) -> None:
    bounds = DriverTimeouts.for_lease(lease)
    assert (bounds.connect, bounds.transaction_retry, bounds.acquisition) == expected
    # A connect, a retrying transaction and a pool wait together stay within the lease.
    assert bounds.connect + bounds.transaction_retry + bounds.acquisition < lease
