"""Worker maintenance as one object: fire due schedules, promote due tasks, expire stale tasks and
suspensions, reconcile dependencies (the backstop that wakes blocked nodes), run on_cancel
hooks, reap expired leases and apply retention (old finished tasks, gone workers); now
and then, warn of ready tasks this worker cannot serve."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from .._clock import Clock
from .._context import Context
from .._operate import RETAINED_STATES, purge_all
from .._runtime import Runtime
from .._schedules import Scheduler
from .._states import Phase, State
from .._stops import CancelToken
from ..errors import LeaseLost, PayloadError, StoreError
from ..store.contract.admin import WorkersPrune
from ..store.contract.dag import DepsReconcile
from ..store.contract.signals import SuspensionsExpire
from ..store.contract.tasks import (
    FinishStatus,
    HookDone,
    HookRow,
    HooksClaim,
    LeasesExpired,
    TasksExpire,
    TasksFinish,
    TasksList,
    TasksPromote,
)
from ._log import reclaimed
from ._outcome import reap
from ._runner import AttemptRunner
from ._stats import WorkerStats

log = logging.getLogger("flowmill.worker")

HOOK_BATCH = 16
HOOK_ATTEMPTS = 3
HOOK_TIMEOUT_MS = 60_000  # on_cancel of a task without a timeout
UNSERVED_SAMPLE = 200  # ready tasks read per queue when looking for kinds nobody here serves


MIN_DEFAULT_REAP = timedelta(seconds=1)
MAX_DEFAULT_REAP = timedelta(seconds=10)


def default_reap_interval(lease_ttl: timedelta) -> timedelta:
    """The reaper's interval when none is given: a third of the lease TTL, from 1 to 10 s.

    A dead worker's lease is reclaimed within TTL + one reap interval of its last renewal,
    so a third of the TTL (the renewal period) adds at most a third to the recovery time
    whoever chose a short TTL wants. 10 s bounds that delay for long leases (the default
    30 s TTL gets 10 s); 1 s bounds the load, as a full pass is about five store queries
    per worker (100 idle workers: about 50 queries a second at the 10 s interval).
    """
    return min(max(lease_ttl / 3, MIN_DEFAULT_REAP), MAX_DEFAULT_REAP)


# Retention: batches per full pass (each its own short transaction), so that one pass
# never holds the store for long; a backlog is worked off over several passes.
RETENTION_BATCHES = 4
WORKERS_PRUNE_AFTER_MS = 3_600_000  # registry rows of workers gone for an hour


class Maintenance:
    """The background passes every worker runs beside its claims (one loop, `loop()`)."""

    def __init__(
        self,
        rt: Runtime,
        *,
        clock: Clock,
        runner: AttemptRunner,
        stats: WorkerStats,
        worker_id: str,
        lease_ttl_ms: int,
        promote_s: float,
        reap_s: float,
        queues: Sequence[str] = (),
        unserved_s: float = 60.0,
        resources: Mapping[str, Any] | None = None,
        scheduler: Scheduler | None = None,
        retention_ms: int | None = None,
    ) -> None:
        self.rt = rt
        self.clock = clock
        self.runner = runner
        self.stats = stats
        self.worker_id = worker_id
        self.lease_ttl_ms = lease_ttl_ms
        self.promote_s = promote_s
        self.reap_s = reap_s
        self.queues = list(queues)
        self.unserved_s = unserved_s
        self.resources = resources
        self.scheduler = scheduler
        self._unserved_at: float | None = None
        self.retention_ms = retention_ms

    async def loop(self) -> None:
        """Run passes forever: promote every `promote_s`, a full pass every `reap_s`."""
        since_reap = self.reap_s
        while True:
            full = since_reap >= self.reap_s
            try:
                await self.maintain(full=full)
                if full:
                    await self.warn_unserved()
            except StoreError as exc:
                log.warning("maintenance failed: %s", exc)
            if full:
                since_reap = 0.0
            # Never sleep past the next full pass: a lease is reclaimed within reap_s of
            # its expiry even when reap_s is no multiple of promote_s.
            pause = min(self.promote_s, self.reap_s - since_reap)
            await self.clock.sleep(pause)
            since_reap += pause

    async def maintain(self, *, full: bool = True) -> None:
        """One maintenance pass: promote due tasks; when `full`, also expire stale tasks and
        suspensions, run on_cancel hooks and reap expired leases.

        The background loop promotes every `promote_interval` (delayed tasks start on time)
        and makes a full pass every `reap_interval`, so an idle worker sends about one
        query a second.
        """
        store, now = self.rt.store, self.clock.store_now()
        if self.scheduler is not None:  # fire due schedules first: their tasks start now
            await self.scheduler.fire_due(refresh=full)
        self.stats.promoted += await store.tasks_promote(TasksPromote(now_ms=now))
        if not full:
            return
        self.stats.expired += await store.tasks_expire(TasksExpire(now_ms=now))
        self.stats.expired += await store.suspensions_expire(SuspensionsExpire(now_ms=now))
        # The backstop of dependency resolution: 0 unless a push was missed.
        await store.deps_reconcile(DepsReconcile(now_ms=now))
        await self.run_hooks()
        expired = await store.leases_expired(LeasesExpired(now_ms=now))
        if expired:
            finishes = [reap(e) for e in expired]
            outs = await store.tasks_finish(TasksFinish(finishes, now))
            self.stats.reaped += sum(o.status is FinishStatus.APPLIED for o in outs)
            reclaimed(self.worker_id, expired, finishes, outs)

        await self.apply_retention()

    async def warn_unserved(self, *, force: bool = False) -> int:
        """Warn of ready tasks that wait in vain here: of a kind this worker does not know
        in a queue it serves, or of a kind it knows in a queue it does not serve. At most
        once per `unserved_s` unless `force`; returns how many (queue, kind) pairs warned."""
        now = self.clock.monotonic()
        last = self._unserved_at
        if not force and last is not None and now - last < self.unserved_s:
            return 0
        self._unserved_at = now
        counts = await self.rt.store.tasks_count()
        waiting = sorted({c.queue for c in counts if c.state is State.READY and c.count > 0})
        kinds = set(self.rt.registry)
        found: collections.Counter[tuple[str, str]] = collections.Counter()
        for queue in waiting:
            served = queue in self.queues
            rows = await self.rt.store.tasks_list(
                TasksList((State.READY,), queue, None, UNSERVED_SAMPLE)
            )
            for r in rows:
                if (r.kind in kinds) != served:
                    found[queue, r.kind] += 1
        for (queue, kind), n in sorted(found.items()):
            why = (
                "no task of that name is registered here"
                if kind not in kinds
                else f"this worker serves queues {','.join(self.queues)} only"
            )
            log.warning(
                "%s%d ready task(s) of kind %s wait in queue %s that this worker will not "
                "claim: %s",
                "at least " if n >= UNSERVED_SAMPLE else "",
                n,
                kind,
                queue,
                why,
                extra={"worker_id": self.worker_id, "kind": kind, "queue": queue, "count": n},
            )
        return len(found)

    async def apply_retention(self) -> int:
        """Delete finished tasks older than the retention (never dead letters) and prune
        registry rows of workers gone for an hour; returns how many tasks went."""
        now = self.clock.store_now()
        await self.rt.store.workers_prune(WorkersPrune(WORKERS_PRUNE_AFTER_MS, now))
        if self.retention_ms is None:
            return 0
        if now is None:
            now = await self.rt.store.now_ms()
        return await purge_all(
            self.rt.store,
            before_ms=now - self.retention_ms,
            states=RETAINED_STATES,
            now_ms=now,
            max_batches=RETENTION_BATCHES,
        )

    async def run_hooks(self) -> int:
        """Run pending on_cancel hooks of ended orchestrators; returns how many ran."""
        kinds = [
            n
            for n, t in self.rt.registry.items()
            if t.executor is not None and t.executor.has_on_cancel
        ]
        if not kinds:
            return 0
        hooks = await self.rt.store.hooks_claim(
            HooksClaim(self.worker_id, kinds, HOOK_BATCH, self.lease_ttl_ms, self.clock.store_now())
        )
        for hook in hooks:
            ok = await self._run_hook(hook)
            try:
                await self.rt.store.hook_done(
                    HookDone(hook.task_id, hook.epoch, ok, now_ms=self.clock.store_now())
                )
            except LeaseLost:
                log.warning("on_cancel of %s: hook lease lost", hook.task_id)
        return len(hooks)

    async def _run_hook(self, hook: HookRow) -> bool:
        tdef = self.rt.registry[hook.kind]
        parts = tdef.executor
        assert parts is not None
        try:
            payload = tdef.payload.decode(hook.payload)
            memo = parts.memo.decode(hook.memo) if hook.memo is not None else None
        except PayloadError as err:
            log.error("on_cancel of %s cannot run: %s", hook.task_id, err)
            return True  # retrying cannot fix a payload: give up on the hook
        token = CancelToken()
        ctx = Context(
            task_id=hook.task_id,
            kind=hook.kind,
            queue=tdef.queue,
            attempt=hook.attempt,
            max_attempts=HOOK_ATTEMPTS,
            lease_epoch=hook.epoch,
            worker_id=self.worker_id,
            app=self.rt,
            token=token,
            loop=asyncio.get_running_loop(),
            phase=Phase.FINALIZE,
            now_ms=self.clock.store_now(),
            resources=self.resources,
        )
        ended = await self.runner.invoke(
            parts.instance.on_cancel,
            (payload, memo, ctx),
            is_async=parts.on_cancel_async,
            timeout_ms=tdef.timeout_ms or HOOK_TIMEOUT_MS,
            token=token,
        )
        if ended.error is not None or not ended.finished or ended.stop_reason is not None:
            log.warning(
                "on_cancel of %s failed (attempt %d): %r",
                hook.task_id,
                hook.attempt,
                ended.error or ended.stop_reason,
            )
            return False
        self.stats.hooks += 1
        return True
