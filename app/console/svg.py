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


def line_chart(title: str, unit: str, series: Sequence[tuple[float, float]], now: float,
               window: float = 3600.0, width: int = 360, height: int = 120) -> Chart:
    """``series`` of (epoch seconds, value) over the ``window`` before ``now``."""
    shown = [(t, v) for t, v in series if now - window <= t <= now]
    top = _nice(max((v for _, v in shown), default=0.0))
    points = " ".join(
        f"{(t - (now - window)) / window * width:.1f},{height - v / top * height:.1f}"
        for t, v in shown)
    ticks = [(width * i / 4, "now" if i == 4 else f"-{int(window / 60 * (4 - i) / 4)} min")
             for i in range(5)]
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
    kind: str  # mentions | related
    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""


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

    Each neighbour sits on the outer ring in the order of the entity it hangs from, so its
    edges stay short and rarely cross.
    """
    cx, cy = width / 2, height / 2
    inner = min(width, height) * 0.26
    outer = min(width, height) * 0.44
    nodes = [Node("memory", _short(memory_label, 28), memory_label, "memory", "memory", cx, cy)]
    at: dict[str, tuple[float, float, float]] = {}
    for entity, (angle, x, y) in zip(around.entities, _ring(len(around.entities), inner, cx,
                                                               cy), strict=True):
        at[entity.key] = (angle, x, y)
        nodes.append(_node(entity, "entity", x, y))
    anchor: dict[str, float] = {}
    for r in around.relations:
        for near, far in ((r.source, r.target), (r.target, r.source)):
            if near in at and far not in at and far not in anchor:
                anchor[far] = at[near][0]
    order = sorted(around.neighbours, key=lambda e: (anchor.get(e.key, 10.0), e.key))
    spots = _ring(len(order), outer, cx, cy,
                  start=anchor.get(order[0].key, -math.pi / 2) if order else 0.0)
    for entity, (angle, x, y) in zip(order, spots, strict=True):
        at[entity.key] = (angle, x, y)
        nodes.append(_node(entity, "neighbour", x, y))
    edges = [Edge("mentions", cx, cy, at[e.key][1], at[e.key][2]) for e in around.entities]
    for r in around.relations:
        if r.source in at and r.target in at:
            (_, x1, y1), (_, x2, y2) = at[r.source], at[r.target]
            edges.append(Edge("related", x1, y1, x2, y2, _short(r.predicate, 18)))
    return Picture(width, height, nodes, edges)


def _node(entity: EntityRow, kind: str, x: float, y: float) -> Node:
    return Node(entity.key, _short(entity.name), f"{entity.type}: {entity.name}", kind,
                entity.type, x, y)
