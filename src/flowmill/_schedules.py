"""Schedules: periodic tasks declared in code (`app.schedule(...)`), fired by workers.

A schedule is declared in code and stored by name: each starting worker upserts what its
code declares, so the fleet fires from one stored definition (the last declared). Every
worker's maintenance fires the due schedules it declares; each firing is one store
transaction that compares and sets the schedule's next fire time and inserts the tasks of
the ticks it fires, each under the dedup key `schedule:<name>:<tick ms>`. Any number of
workers may try the same firing: exactly one commits. Nothing here elects a leader.

Ticks: `every=` ticks fall on whole multiples of the interval since the Unix epoch (so
every worker computes the same ticks); `cron=` ticks are computed by `cronsim` in the
schedule's time zone (UTC by default). On a spring-forward day a cron time inside the
skipped hour fires once, at the end of the gap (03:00 for "30 2 * * *" in Europe/Paris);
on a fall-back day a fixed time fires once (its first occurrence), while an expression
with a wildcard hour fires in both repeated hours, as Debian cron does.

Misfire: a due tick is on time while it is at most `MISFIRE_GRACE_MS` old; older due ticks
were missed (no worker ran). `run_once` fires one task for all of them (its tick is the
latest due), `skip` fires only an on-time tick, `run_all` fires one task per due tick,
the latest `RUN_ALL_CAP` of them at most.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ._clock import Clock, from_ms
from ._rows import new_task_id
from ._task import TaskDef, check_queue
from .errors import ConfigurationError, StoreError
from .store.contract.protocol import Store
from .store.contract.schedules import (
    MISFIRE_POLICIES,
    FireStatus,
    ScheduleDecl,
    ScheduleFire,
    SchedulePause,
    ScheduleRow,
    SchedulesList,
    SchedulesUpsert,
)
from .store.contract.tasks import InsertOutcome, InsertStatus, NewTask, TasksInsert

log = logging.getLogger("flowmill.schedules")

MISFIRE_GRACE_MS = 60_000  # a due tick at most this old is on time, not missed
RUN_ALL_CAP = 100  # run_all fires at most this many missed ticks at once (the latest)
CRON_LOOKBACK_MS = 31 * 24 * 3600 * 1000  # missed cron ticks older than this are dropped
SCHEDULE_TAG = "flowmill.schedule"


# -- ticks ---------------------------------------------------------------------------------


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"tz: unknown time zone {tz!r}") from exc


def next_tick(trigger: str, tz: str | None, after_ms: int) -> int:
    """The first tick of `trigger` strictly after `after_ms`."""
    kind, _, spec = trigger.partition(":")
    if kind == "every":
        interval = int(spec)
        return (after_ms // interval + 1) * interval
    return next(_cron_ticks(spec, tz, after_ms))


def _cron_ticks(spec: str, tz: str | None, after_ms: int) -> Iterator[int]:
    """The ticks of a cron expression after `after_ms`, strictly increasing."""
    ticks = CronSim(spec, datetime.fromtimestamp(after_ms / 1000, tz=_zone(tz)))
    last, stale = after_ms, 0
    while stale < 1000:
        # cronsim works on wall times: after a fall-back hour it may name a time already
        # passed in absolute terms; those are skipped.
        ms = int(next(ticks).timestamp() * 1000)
        if ms > last:
            last, stale = ms, 0
            yield ms
        else:
            stale += 1
    raise ConfigurationError(f"cron: {spec!r} has no tick after {from_ms(last)}")


def due_ticks(row: ScheduleRow, now_ms: int, keep: int) -> tuple[list[int], int]:
    """The latest `keep` ticks from `row.next_fire_ms` to `now_ms` (inclusive), oldest first,
    and how many ticks were due in all (over the lookback window for cron)."""
    first = row.next_fire_ms
    if first > now_ms:
        return [], 0
    kind, _, spec = row.trigger.partition(":")
    if kind == "every":
        interval = int(spec)
        start = -(-first // interval) * interval  # a changed interval may leave `first` off
        if start > now_ms:
            return [], 0
        count = (now_ms - start) // interval + 1
        lowest = max(start, start + (count - keep) * interval)
        return list(range(lowest, now_ms + 1, interval)), count
    window: collections.deque[int] = collections.deque(maxlen=keep)
    # The first due tick itself, then every later one, from one cron iterator.
    since = max(first - 1, now_ms - CRON_LOOKBACK_MS)
    count = 0
    for t in _cron_ticks(spec, row.tz, since):
        if t > now_ms:
            break
        window.append(t)
        count += 1
    return list(window), count


def plan(row: ScheduleRow, now_ms: int) -> tuple[list[int], int]:
    """The ticks a firing at `now_ms` fires under the row's misfire policy, and the next
    fire time it stores (the first tick after `now_ms`)."""
    ticks, _ = due_ticks(row, now_ms, RUN_ALL_CAP if row.misfire == "run_all" else 1)
    nxt = next_tick(row.trigger, row.tz, now_ms)
    if not ticks:
        return [], nxt
    latest = ticks[-1]
    if row.misfire == "skip":
        return ([latest] if now_ms - latest <= MISFIRE_GRACE_MS else []), nxt
    if row.misfire == "run_once":
        return [latest], nxt
    return ticks, nxt


def jitter_for(name: str, tick_ms: int, jitter_ms: int) -> int:
    """A delay in [0, jitter_ms) fixed by (schedule, tick): every worker computes the same."""
    if jitter_ms <= 0:
        return 0
    digest = hashlib.blake2b(f"{name}\x00{tick_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % jitter_ms


def dedup_key(name: str, tick_ms: int) -> str:
    return f"schedule:{name}:{tick_ms}"


def tick_task(row: ScheduleRow, tick_ms: int, key: str | None = None) -> NewTask:
    """The task of one tick of a stored schedule."""
    delay = jitter_for(row.name, tick_ms, row.jitter_ms)
    return NewTask(
        id=new_task_id(),
        kind=row.kind,
        payload=row.payload,
        queue=row.queue,
        priority=row.priority,
        run_at_ms=tick_ms + delay if delay else None,
        dedup_key=key or dedup_key(row.name, tick_ms),
        max_attempts=row.max_attempts,
        retry_policy=row.retry_policy,
        timeout_ms=row.timeout_ms,
        tags={SCHEDULE_TAG: row.name},
    )


# -- declaration ---------------------------------------------------------------------------


def _positive_ms(field: str, value: timedelta) -> int:
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{field} must be a timedelta, got {value!r}")
    ms = value // timedelta(milliseconds=1)
    if ms <= 0:
        raise ConfigurationError(f"{field} must be > 0, got {value}")
    return ms


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule as `app.schedule(...)` declared it (validated)."""

    name: str
    task: TaskDef
    payload: bytes
    trigger: str  # "cron:<expression>" or "every:<ms>"
    tz: str | None
    misfire: str
    jitter_ms: int
    paused: bool
    queue: str
    priority: int

    @staticmethod
    def build(
        name: str,
        task: TaskDef,
        payload: Any,
        *,
        cron: str | None,
        every: timedelta | None,
        tz: str | None,
        misfire: str,
        jitter: timedelta | None,
        paused: bool,
        queue: str | None,
        priority: int | None,
    ) -> Schedule:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ConfigurationError(f"name: a schedule needs a non-empty name, got {name!r}")
        if (cron is None) == (every is None):
            raise ConfigurationError(f"schedule {name!r}: pass exactly one of cron= or every=")
        if cron is not None:
            if not isinstance(cron, str):
                raise ConfigurationError(f"cron: expected a string, got {cron!r}")
            zone = _zone(tz)
            try:
                CronSim(cron, datetime.now(zone))
            except (CronSimError, ValueError, KeyError, IndexError) as exc:
                raise ConfigurationError(f"cron: invalid expression {cron!r}: {exc}") from exc
            trigger = f"cron:{cron}"
        else:
            assert every is not None
            if tz is not None:
                raise ConfigurationError("tz: applies to cron= schedules, not every=")
            trigger = f"every:{_positive_ms('every', every)}"
        if misfire not in MISFIRE_POLICIES:
            raise ConfigurationError(
                f"misfire: expected one of {', '.join(MISFIRE_POLICIES)}, got {misfire!r}"
            )
        jitter_ms = 0
        if jitter is not None and jitter != timedelta(0):
            jitter_ms = _positive_ms("jitter", jitter)
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise ConfigurationError(f"priority: must be an int, got {priority!r}")
        return Schedule(
            name=name,
            task=task,
            payload=task.payload.encode(payload),
            trigger=trigger,
            tz=tz if cron is not None else None,
            misfire=misfire,
            jitter_ms=jitter_ms,
            paused=bool(paused),
            queue=check_queue(queue) if queue is not None else task.queue,
            priority=int(priority) if priority is not None else task.priority,
        )

    def decl(self, now_ms: int) -> ScheduleDecl:
        """What a worker declaring this schedule at `now_ms` stores."""
        t = self.task
        parts = [
            t.name,
            self.trigger,
            self.tz,
            self.misfire,
            self.jitter_ms,
            self.payload.hex(),
            self.queue,
            self.priority,
            t.retry.max_attempts,
            t.retry_policy.hex(),
            t.timeout_ms,
        ]
        digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
        return ScheduleDecl(
            name=self.name,
            kind=t.name,
            trigger=self.trigger,
            tz=self.tz,
            misfire=self.misfire,
            jitter_ms=self.jitter_ms,
            payload=self.payload,
            queue=self.queue,
            priority=self.priority,
            max_attempts=t.retry.max_attempts,
            retry_policy=t.retry_policy,
            timeout_ms=t.timeout_ms,
            definition=digest,
            paused=self.paused,
            first_fire_ms=next_tick(self.trigger, self.tz, now_ms),
        )


# -- firing --------------------------------------------------------------------------------


class Scheduler:
    """A worker's side of schedules: declare at start, fire what is due on each pass.

    Keeps the stored rows between passes, so a pass with nothing due costs no query; the
    rows are read again on every `refresh` (the maintenance's full pass) and after each
    firing. A stored schedule this worker does not declare is never fired here."""

    def __init__(
        self, store: Store, clock: Clock, declared: Mapping[str, Schedule], worker_id: str
    ) -> None:
        self.store = store
        self.clock = clock
        self.declared = dict(declared)
        self.worker_id = worker_id
        self.rows: dict[str, ScheduleRow] = {}
        self.fired = 0  # tasks this worker's firings inserted
        self._offset_ms = 0  # store clock - local wall clock, when the store keeps time
        self._enabled = True

    async def now_ms(self, *, ask_store: bool = False) -> int:
        given = self.clock.store_now()
        if given is not None:
            return given
        if ask_store:
            self._offset_ms = await self.store.now_ms() - self.clock.wall_ms()
        return self.clock.wall_ms() + self._offset_ms

    async def declare(self) -> list[ScheduleRow]:
        """Upsert this worker's schedules; warn of stored ones its code does not declare."""
        now = await self.now_ms(ask_store=True)
        decls = [s.decl(now) for s in self.declared.values()]
        try:
            rows = await self.store.schedules_upsert(SchedulesUpsert(decls, self.clock.store_now()))
        except StoreError:
            if decls:
                raise
            self._enabled = False  # a backend without schedules, and none declared here
            log.debug("schedules: this store keeps none; nothing declared", exc_info=True)
            return []
        self.rows = {r.name: r for r in rows}
        for r in rows:
            if r.name not in self.declared:
                log.warning(
                    "schedule %s is stored but not declared by this worker's code: this "
                    "worker does not fire it (not declared by a starting worker since %s)",
                    r.name,
                    from_ms(r.undeclared_since_ms or now).isoformat(),
                    extra={"worker_id": self.worker_id, "schedule": r.name},
                )
        return rows

    async def fire_due(self, *, refresh: bool = False) -> int:
        """Fire every due schedule this worker declares; returns how many tasks it inserted."""
        if not self._enabled or not self.declared:
            return 0
        now = await self.now_ms(ask_store=refresh)
        if refresh:
            names = sorted(self.declared)
            self.rows = {r.name: r for r in await self.store.schedules_list(SchedulesList(names))}
        inserted = 0
        for name in sorted(self.declared):
            for _ in range(3):  # a lost race shows the winner's row: fire again if still due
                row = self.rows.get(name)
                if row is None or row.paused or row.next_fire_ms > now:
                    break
                ticks, nxt = plan(row, now)
                out = await self.store.schedules_fire(
                    ScheduleFire(
                        name=name,
                        expected_version=row.version,
                        expected_next_ms=row.next_fire_ms,
                        next_fire_ms=nxt,
                        tasks=[tick_task(row, t) for t in ticks],
                        last_tick_ms=ticks[-1] if ticks else None,
                        now_ms=self.clock.store_now(),
                    )
                )
                if out.row is None:
                    self.rows.pop(name, None)
                    break
                self.rows[name] = out.row
                if out.status is FireStatus.FIRED:
                    n = sum(o.status is InsertStatus.INSERTED for o in out.inserted)
                    inserted += n
                    if ticks and n < len(ticks):
                        log.info("schedule %s: %d tick(s) were fired already", name, len(ticks) - n)
                    break
        self.fired += inserted
        return inserted


# -- operator calls (the CLI) --------------------------------------------------------------


async def set_paused(
    store: Store, name: str, paused: bool, now_ms: int | None
) -> ScheduleRow | None:
    """Pause or resume a stored schedule; resuming skips the ticks that fell while paused."""
    nxt = None
    if not paused:
        found = await store.schedules_list(SchedulesList([name]))
        if not found:
            return None
        now = now_ms if now_ms is not None else await store.now_ms()
        nxt = next_tick(found[0].trigger, found[0].tz, now)
    return await store.schedules_set_paused(SchedulePause(name, paused, nxt, now_ms))


async def run_now(store: Store, name: str, now_ms: int | None) -> InsertOutcome | None:
    """Insert one task of a stored schedule now, leaving its next fire time alone; None when
    there is no such schedule. Its dedup key names this instant, so it never collides with a
    tick's."""
    found = await store.schedules_list(SchedulesList([name]))
    if not found:
        return None
    now = now_ms if now_ms is not None else await store.now_ms()
    task = tick_task(found[0], now, key=f"schedule:{name}:run-now:{now}")
    task.run_at_ms = None
    [out] = await store.tasks_insert(TasksInsert([task], "skip", now_ms))
    return out


def iter_ticks(trigger: str, tz: str | None, after_ms: int) -> Iterator[int]:
    """Every tick after `after_ms`, in order (for docs and tests)."""
    t = after_ms
    while True:
        t = next_tick(trigger, tz, t)
        yield t
