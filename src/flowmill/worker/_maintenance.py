"""Worker maintenance as one object: promote due tasks, expire stale tasks and
suspensions, reconcile dependencies (the backstop that wakes blocked nodes), run on_cancel
hooks, reap expired leases, and apply retention (old finished tasks, gone workers)."""

from __future__ import annotations

import asyncio
import logging

from .._clock import Clock
from .._context import Context
from .._operate import RETAINED_STATES, purge_all
from .._runtime import Runtime
from .._states import Phase
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
    TasksPromote,
)
from ._outcome import reap
from ._runner import AttemptRunner
from ._stats import WorkerStats

log = logging.getLogger("flowmill.worker")

HOOK_BATCH = 16
HOOK_ATTEMPTS = 3
HOOK_TIMEOUT_MS = 60_000  # on_cancel of a task without a timeout
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
        self.retention_ms = retention_ms

    async def loop(self) -> None:
        """Run passes forever: promote every `promote_s`, a full pass every `reap_s`."""
        since_reap = self.reap_s
        while True:
            try:
                await self.maintain(full=since_reap >= self.reap_s)
            except StoreError as exc:
                log.warning("maintenance failed: %s", exc)
            since_reap = 0.0 if since_reap >= self.reap_s else since_reap + self.promote_s
            await self.clock.sleep(self.promote_s)

    async def maintain(self, *, full: bool = True) -> None:
        """One maintenance pass: promote due tasks; when `full`, also expire stale tasks and
        suspensions, run on_cancel hooks and reap expired leases.

        The background loop promotes every `promote_interval` (delayed tasks start on time)
        and makes a full pass every `reap_interval`, so an idle worker sends about one
        query a second.
        """
        store, now = self.rt.store, self.clock.store_now()
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
            outs = await store.tasks_finish(TasksFinish([reap(e) for e in expired], now))
            self.stats.reaped += sum(o.status is FinishStatus.APPLIED for o in outs)
        await self.apply_retention()

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
