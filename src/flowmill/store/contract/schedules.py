"""The store contract for schedules: periodic tasks declared in code, stored by name.

The engine computes every time (cron or interval ticks, misfire policy, jitter); the store
keeps one row per schedule and applies each firing as a compare-and-set, in one transaction
with the insert of that firing's tasks. So any number of workers may fire the same schedule
at the same time: one firing wins, the others are answered STALE and insert nothing, and a
worker killed mid-firing either committed both the tasks and the new next fire time, or
neither. Same rules as `protocol`: frozen params, int ms times, `now_ms=None` is the
store's clock.

A schedule row holds:
- its definition, as the last worker that declared it wrote it: `kind`, `trigger` (an
  opaque text the engine parses, e.g. "cron:0 3 * * *" or "every:300000"), `tz`,
  `misfire`, `jitter_ms` and the task template (`payload`, `queue`, `priority`,
  `max_attempts`, `retry_policy`, `timeout_ms`), with `definition`, an opaque digest of all
  of it, and `version`, which grows by one whenever `definition` changes;
- its state: `paused`, `next_fire_ms` (the earliest tick not yet fired or skipped),
  `last_tick_ms` (the tick of the last task fired), `last_fired_at_ms` (when that firing
  happened), `fired` (tasks inserted by firings so far);
- its declaration: `declared_at_ms` (when a starting worker last declared it) and
  `undeclared_since_ms` (set when a starting worker declared schedules but not this one,
  cleared when one declares it again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .tasks import InsertOutcome, NewTask

MISFIRE_POLICIES: tuple[str, ...] = ("run_once", "skip", "run_all")


@dataclass(frozen=True, slots=True)
class ScheduleDecl:
    """One schedule as a worker's code declares it (see the module doc for the fields).

    `first_fire_ms` is the first tick after the declaring worker's now: the `next_fire_ms`
    of a new schedule, and of one whose `trigger` or `tz` changed, or that the declaration
    unpauses. `paused` is the declared value: it applies when the schedule is created and
    whenever the declared value changes; in between, operators pause and resume."""

    name: str
    kind: str
    trigger: str
    tz: str | None
    misfire: str
    jitter_ms: int
    payload: bytes
    queue: str
    priority: int
    max_attempts: int
    retry_policy: bytes
    timeout_ms: int | None
    definition: str
    paused: bool
    first_fire_ms: int


@dataclass(frozen=True, slots=True)
class SchedulesUpsert:
    """Store what a starting worker declares, in one transaction, and return every stored
    schedule (declared or not), by name.

    For each declared schedule: a new name is inserted (`version` 1, `paused` and
    `next_fire_ms` from the declaration, `fired` 0). An existing one gets the declared
    definition; when `definition` differs from the stored one, `version` grows by one; when
    `trigger` or `tz` differ, `next_fire_ms` becomes `first_fire_ms`; when the declared
    `paused` differs from the one declared before, `paused` takes it (and unpausing sets
    `next_fire_ms` to `first_fire_ms`). Every declared one gets `declared_at_ms = now` and
    `undeclared_since_ms = NULL`. Every stored schedule NOT declared keeps its row and gets
    `undeclared_since_ms = now` unless it was set already. Nothing is ever deleted."""

    schedules: Sequence[ScheduleDecl]
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SchedulesList:
    """The stored schedules, by name; only those named when `names` is not empty."""

    names: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class ScheduleFire:
    """Fire one schedule: a compare-and-set that inserts the firing's tasks atomically.

    Applied only when the schedule exists, is not paused, and its stored `next_fire_ms` and
    `version` equal `expected_next_ms` and `expected_version`. Then, in one transaction:
    `tasks` are inserted as `tasks_insert` with `on_duplicate="skip"` would (each carries a
    dedup key derived from the schedule and its tick); `next_fire_ms` becomes
    `next_fire_ms`; when `tasks` is not empty, `last_tick_ms` becomes `last_tick_ms`,
    `last_fired_at_ms` becomes now and `fired` grows by the number of tasks INSERTED (not
    skipped). `tasks` may be empty (the misfire policy skipped every due tick): the schedule
    only advances. Otherwise nothing is written and the status says why."""

    name: str
    expected_version: int
    expected_next_ms: int
    next_fire_ms: int
    tasks: Sequence[NewTask] = ()
    last_tick_ms: int | None = None
    now_ms: int | None = None


class FireStatus(StrEnum):
    """What a firing did."""

    FIRED = "fired"  # applied: tasks inserted (or skipped as duplicates), schedule advanced
    STALE = "stale"  # next_fire_ms or version moved on: another firing or declaration won
    PAUSED = "paused"  # the schedule is paused: nothing written
    MISSING = "missing"  # no schedule of that name


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A stored schedule (see the module doc for every field)."""

    name: str
    kind: str
    trigger: str
    tz: str | None
    misfire: str
    jitter_ms: int
    payload: bytes
    queue: str
    priority: int
    max_attempts: int
    retry_policy: bytes
    timeout_ms: int | None
    definition: str
    version: int
    paused: bool
    next_fire_ms: int
    last_tick_ms: int | None
    last_fired_at_ms: int | None
    fired: int
    declared_at_ms: int
    undeclared_since_ms: int | None
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class FireOutcome:
    """The answer to `schedules_fire`: `row` is the schedule after the call (None when
    MISSING), `inserted` the outcome of each task when FIRED (empty otherwise)."""

    status: FireStatus
    row: ScheduleRow | None
    inserted: tuple[InsertOutcome, ...] = ()


@dataclass(frozen=True, slots=True)
class SchedulePause:
    """Pause (`paused=True`) or resume a schedule; returns the row, None when there is no
    such schedule. Resuming an unpaused schedule, or pausing a paused one, changes nothing.
    Resuming a paused one sets `next_fire_ms` to `next_fire_ms` (the engine passes the first
    tick after now: ticks that fell while paused are not fired)."""

    name: str
    paused: bool
    next_fire_ms: int | None = None
    now_ms: int | None = None
