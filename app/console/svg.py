"""Geometry for the console's inline SVG: line charts of samples and a memory's entity graph.

Only numbers and plain text come out of here; the templates write the SVG (autoescaped), and
the stylesheet colours it by class, so the pictures need no script and no inline style.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from app.graph.base import EntityRow, Neighbourhood

# -- line charts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    width: int
    height: int
    points: str  # the polyline's "x,y x,y ..."
    top: float  # the value at the top edge
    last: float | None
    ticks: list[tuple[float, str]]  # x position, label
    empty: bool


def _nice(value: float) -> float:
    """A round number at or above ``value`` for the top of a chart."""
    if value <= 0:
        return 1.0
    scale = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * scale:
            return float(step * scale)
    return float(10 * scale)  # pragma: no cover - the loop always returns


def _ago(seconds: float) -> str:
    """A tick label: ``now``, ``-15 min`` or ``-3:45``."""
    if seconds <= 0:
        return "now"
    minutes, rest = divmod(int(seconds), 60)
    return f"-{minutes} min" if rest == 0 else f"-{minutes}:{rest:02d}"


def line_chart(title: str, unit: str, series: Sequence[tuple[float, float]], now: float,
               window: float = 3600.0, width: int = 360, height: int = 120) -> Chart:
    """``series`` of (epoch seconds, value) over the ``window`` before ``now``."""
    shown = [(t, v) for t, v in series if now - window <= t <= now]
    top = _nice(max((v for _, v in shown), default=0.0))
    points = " ".join(
        f"{(t - (now - window)) / window * width:.1f},{height - v / top * height:.1f}"
        for t, v in shown)
    ticks = [(width * i / 4, _ago(window * (4 - i) / 4)) for i in range(5)]
    return Chart(title, unit, width, height, points, top, shown[-1][1] if shown else None,
                 ticks, not shown)


# -- the entity graph -------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    key: str
    label: str
    title: str
    kind: str  # memory | entity | neighbour
    type: str
    x: float
    y: float


@dataclass(frozen=True)
class Edge:
    """A line, or a quadratic curve through (qx, qy), with its label at (lx, ly)."""

    kind: str  # mentions | related
    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""
    qx: float = 0.0
    qy: float = 0.0
    lx: float = 0.0
    ly: float = 0.0

    @property
    def path(self) -> str:
        return (f"M{self.x1:.1f},{self.y1:.1f} Q{self.qx:.1f},{self.qy:.1f} "
                f"{self.x2:.1f},{self.y2:.1f}")


def _edge(kind: str, a: tuple[float, float], b: tuple[float, float], centre: tuple[float, float],
          label: str = "", bow: float = 0.0) -> Edge:
    """An edge from a to b bowed away from the centre by ``bow`` times its length."""
    (x1, y1), (x2, y2) = a, b
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    length = math.hypot(x2 - x1, y2 - y1) or 1.0
    nx, ny = -(y2 - y1) / length, (x2 - x1) / length  # a unit normal
    if (mx - centre[0]) * nx + (my - centre[1]) * ny < 0:
        nx, ny = -nx, -ny  # bend outwards
    qx, qy = mx + nx * bow * length, my + ny * bow * length
    # the curve's own midpoint (t = 1/2), a little above it for the label
    lx, ly = (x1 + 2 * qx + x2) / 4, (y1 + 2 * qy + y2) / 4 - 4
    return Edge(kind, x1, y1, x2, y2, label, qx, qy, lx, ly)


@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    nodes: list[Node]
    edges: list[Edge]


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _ring(count: int, radius: float, cx: float, cy: float, start: float = -math.pi / 2
          ) -> list[tuple[float, float, float]]:
    """``count`` points evenly on a circle: (angle, x, y)."""
    out = []
    for i in range(count):
        angle = start + 2 * math.pi * i / max(count, 1)
        out.append((angle, cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return out


def entity_graph(around: Neighbourhood, memory_label: str, width: int = 720,
                 height: int = 460) -> Picture:
    """The memory in the middle, its entities on an inner ring, their neighbours outside.

    Each neighbour sits on the outer ring near the entity it hangs from (a fan around that
    entity's angle), so its edges stay short and rarely cross.
    """
    cx, cy = width / 2, height / 2
    inner = min(width, height) * 0.25
    outer_x, outer_y = width * 0.43, height * 0.43
    nodes = [Node("memory", _short(memory_label, 28), memory_label, "memory", "memory", cx, cy)]
    count = len(around.entities)
    at: dict[str, tuple[float, float, float]] = {}
    for entity, (angle, x, y) in zip(around.entities, _ring(
            count, inner, cx, cy, start=-math.pi / 2 + math.pi / max(count, 1)), strict=True):
        at[entity.key] = (angle, x, y)
        nodes.append(_node(entity, "entity", x, y))
    fans: dict[str, list[EntityRow]] = {}
    for neighbour in around.neighbours:
        hub = next((near for r in around.relations
                    for near, far in ((r.source, r.target), (r.target, r.source))
                    if far == neighbour.key and near in at), None)
        fans.setdefault(hub or "", []).append(neighbour)
    sector = 2 * math.pi / max(count, 1)
    for hub, members in fans.items():
        base = at[hub][0] if hub in at else 0.0
        step = min(0.45, sector * 0.8 / max(len(members), 1)) if hub in at \
            else 2 * math.pi / len(members)
        for i, entity in enumerate(members):
            angle = base + (i - (len(members) - 1) / 2) * step
            x, y = cx + outer_x * math.cos(angle), cy + outer_y * math.sin(angle)
            at[entity.key] = (angle, x, y)
            nodes.append(_node(entity, "neighbour", x, y))
    centre = (cx, cy)
    edges = [_edge("mentions", centre, at[e.key][1:], centre) for e in around.entities]
    mentioned = {e.key for e in around.entities}
    for r in around.relations:
        if r.source in at and r.target in at:
            # Between two mentioned entities the straight line would cross the memory: bow it.
            bow = 0.35 if r.source in mentioned and r.target in mentioned else 0.0
            edges.append(_edge("related", at[r.source][1:], at[r.target][1:], centre,
                               _short(r.predicate, 18), bow))
    return Picture(width, height, nodes, edges)


def _node(entity: EntityRow, kind: str, x: float, y: float) -> Node:
    return Node(entity.key, _short(entity.name), f"{entity.type}: {entity.name}", kind,
                entity.type, x, y)
