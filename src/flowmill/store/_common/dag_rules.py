"""Dependency rules every backend applies when it inserts linked tasks: which batches need
the dependency work, which dependent tasks are refused, and the edges a batch makes."""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ConfigurationError
from ..contract.dag import UpstreamPolicy
from ..contract.tasks import NewTask

POLICIES = frozenset(p.value for p in UpstreamPolicy)


def has_links(tasks: Sequence[NewTask]) -> bool:
    """Whether an insert batch needs the dependency work (edges, a workflow row)."""
    return any(t.depends_on or t.workflow_id is not None for t in tasks)


def check(t: NewTask) -> None:
    """Refuse a dependent task no store can honour (`ConfigurationError`)."""
    if t.upstream_policy not in POLICIES:
        raise ConfigurationError(
            f"upstream policy must be one of {', '.join(sorted(POLICIES))}, "
            f"got {t.upstream_policy!r}"
        )
    if t.depends_on:
        if t.parent_id is not None:
            raise ConfigurationError("a child task cannot have dependencies")
        if t.delay_ms is not None or t.run_at_ms is not None:
            raise ConfigurationError("a task with dependencies cannot also be delayed")
        if len(set(t.depends_on)) != len(t.depends_on):
            raise ConfigurationError(f"task {t.id} names an upstream task twice")
        if t.id in t.depends_on:
            raise ConfigurationError(f"task {t.id} depends on itself")


def edges_of(
    inserted: Sequence[NewTask], remap: dict[str, str]
) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    """The (upstream, task, pos) edges of the inserted tasks, upstream ids of tasks the
    batch skipped (dedup) sent to the task standing for them (`remap`); and, per task, how
    many upstreams that made one with another (each counted once: deps_pending drops)."""
    edges: list[tuple[str, str, int]] = []
    doubled: dict[str, int] = {}
    for t in inserted:
        seen: set[str] = set()
        for pos, up in enumerate(t.depends_on):
            up = remap.get(up, up)
            if up in seen:
                doubled[t.id] = doubled.get(t.id, 0) + 1
                continue
            seen.add(up)
            edges.append((up, t.id, pos))
    return edges, doubled
