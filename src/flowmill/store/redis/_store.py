"""The Redis/Valkey store: one Functions library, one FCALL per transition, Streams for events.

Keys live under `<prefix>{fm:0}:` (the hash tag keeps a partition in one cluster slot;
one partition for now, see `_partitions`); see `flowmill.lua` for the layout. Time is the
server's (`TIME` inside the functions) unless a caller passes `now_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any, NoReturn, TypeVar

import msgspec
from redis import exceptions as rx
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..._states import State
from ...errors import ConfigurationError, SchemaError, StoreError
from .._common.budget_rules import check_claim_limit
from .._common.dag_rules import check, has_links
from .._common.serde import encode_error, progress_detail
from ..contract.budgets import ClaimedRows
from ..contract.capabilities import Capabilities, MigrateResult
from ..contract.tasks import (
    ON_DUPLICATE_CHOICES,
    CancelOutcome,
    ClaimedRow,
    ErrorInfo,
    ExpiredLease,
    FinishOutcome,
    FinishStatus,
    InsertOutcome,
    InsertStatus,
    LeasesExpired,
    LeasesRenew,
    RenewOutcome,
    TaskCancel,
    TaskProgress,
    TaskRetry,
    TasksClaim,
    TasksExpire,
    TasksFinish,
    TasksInsert,
    TasksPromote,
)
from . import _records as rec
from ._admin import RedisAdminMixin
from ._batch import Coalescer
from ._budgets import RedisBudgetsMixin
from ._conn import (
    Durability,
    check_durability,
    guarded,
    parse_url,
    raise_reply,
    redact,
    translate,
)
from ._dag import RedisDagMixin
from ._layout import (
    INDEXED_SINCE,
    MARKERS_SINCE,
    SCHEMA_VERSION,
    SIGNAL_KEYS_SPLIT_SINCE,
    mark_ready_queues,
    reindex,
    split_signal_keys,
)
from ._leases import HeldLeases
from ._outage import Outage
from ._partitions import DEFAULT_PARTITIONS, check_count, check_stamp, parse_count, prefix_of
from ._reads import RedisReadsMixin
from ._schedules import RedisSchedulesMixin
from ._signals import RedisSignalsMixin
from ._tree import RedisTreeMixin
from ._wakes import Markers, RedisWakesMixin

_SOURCE = files(__package__ or __name__.rpartition(".")[0]).joinpath("flowmill.lua").read_text()
LIBRARY_VERSION = hashlib.sha256(_SOURCE.encode()).hexdigest()[:12]
LIBRARY = _SOURCE.replace("__VERSION__", LIBRARY_VERSION)

T = TypeVar("T")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_RESULT_CHUNK = 500


class RedisStore(
    RedisWakesMixin,
    RedisTreeMixin,
    RedisSignalsMixin,
    RedisBudgetsMixin,
    RedisDagMixin,
    RedisReadsMixin,
    RedisSchedulesMixin,
    RedisAdminMixin,
):
    """Tasks in Redis or Valkey, shared by every worker that reaches the server."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        durability: Durability | None = None,
        max_connections: int = 64,
    ) -> None:
        settings = parse_url(url, prefix, durability)
        self.url = url
        self.prefix = settings.prefix
        self.durability: Durability = settings.durability
        self._driver_url = settings.driver_url
        self.cluster = settings.cluster
        self._max_connections = max_connections
        # `partitions=` as the URL gives it (None: the count stamped in the store)
        self._partitions_asked = settings.partitions
        if settings.partitions is not None:
            check_count(settings.partitions, f"cannot open {redact(url)}")
        # the count the open store runs with, from its meta hash
        self.partitions = DEFAULT_PARTITIONS
        # One partition for now: every key shares the hash tag {fm:0}.
        self._k = prefix_of(self.prefix, 0)
        self._client: Any = None  # Redis, or RedisCluster for a cluster URL
        # Blocking reads (XREAD BLOCK) get a client without a socket timeout of their own:
        # the block is the timeout, and keepalives notice a dead peer.
        self._blocking: Any = None
        self._waitaof = False
        # the lease id of each lease this store's claims hold (see `_leases`)
        self._leases = HeldLeases()
        # a server down or restarting is waited for, in one log line (see `_outage`)
        self._outage = Outage(f"Redis at {redact(url)}")
        # wake-up Stream cursors per waiting asyncio task (see `_wait`)
        self._cursors: weakref.WeakKeyDictionary[Any, dict[str, bytes]] = (
            weakref.WeakKeyDictionary()
        )
        # work wake-ups once claims named their queues (see `_wakes`)
        self._markers = Markers(
            self._k,
            self._run,
            self._next_due,
            lambda: self._blocking,
            self._track,
            self._library_ours,
        )
        self.capabilities = Capabilities(durable=True, local_file=False)
        self._waits: set[asyncio.Future[Any]] = set()
        # inserts of concurrent callers go out together (see `_batch`)
        self._inserts: Coalescer[tuple[TasksInsert, Any]] = Coalescer(
            self._insert_batch, lambda req: len(req[0].tasks), self._track
        )
        # A cluster client refuses a command when its node's pool is full, where a plain
        # client's pool makes it wait: callers wait here instead.
        self._gate: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(max_connections) if self.cluster else contextlib.nullcontext()
        )

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        where = f"cannot open {redact(self.url)}"
        client = self._new_client()
        try:
            await guarded(where, client.ping)
            self._waitaof = await guarded(
                where, lambda: check_durability(client, self.durability, self._driver_url)
            )
            await guarded(where, lambda: self._migrate(client))
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        # no retries: a dropped blocking read is a wake-up to wait again, never a reconnect
        # that could outlive close()
        self._blocking = self._connect(
            socket_timeout=None, socket_keepalive=True, retry=Retry(NoBackoff(), 0)
        )

    def _new_client(self) -> Any:
        try:
            return self._connect()
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Redis URL {redact(self.url)}: {exc}") from exc

    # -- schema: the key layout of flowmill.lua, stamped in the partition's meta hash ------

    async def _schema_of(self, client: Redis) -> int | None:
        meta: dict[Any, Any] = await client.hgetall(self._k + "meta")
        if not meta or b"schema_version" not in meta:
            return None
        if meta.get(b"app") != b"flowmill":
            raise SchemaError(f"the keys under {self._k!r} are not flowmill's")
        return int(meta[b"schema_version"])

    async def _migrate(self, client: Redis) -> MigrateResult:
        before = await self._schema_of(client)
        if before is not None and before > SCHEMA_VERSION:
            raise SchemaError(
                f"the keys under {self._k!r} have schema version {before}, newer than this "
                f"flowmill's {SCHEMA_VERSION}: upgrade flowmill"
            )
        partitions = await self._partitions_of(client)
        await self._load_library(client)
        if before is not None and before < INDEXED_SINCE:
            await reindex(client, self._k)
        if before is not None and before < SIGNAL_KEYS_SPLIT_SINCE:
            await split_signal_keys(client, self._k)
        if before is not None and before < MARKERS_SINCE:
            await mark_ready_queues(client, self._k)
        await client.hset(
            self._k + "meta",
            mapping={
                "app": "flowmill",
                "schema_version": SCHEMA_VERSION,
                "partitions": partitions,
            },
        )
        self.partitions = partitions
        return MigrateResult(before, SCHEMA_VERSION)

    async def _partitions_of(self, client: Redis) -> int:
        """The partition count the store runs with: the one stamped in partition 0's meta
        hash (a store stamped before partitions existed has none: it has one), which an
        explicit `partitions=` must match; a store without a stamp takes the URL's."""
        where = f"cannot open {redact(self.url)}"
        stamped: Any = await client.hget(self._k + "meta", "partitions")
        if stamped is not None:
            n = check_stamp(parse_count(stamped.decode()), self._partitions_asked, where)
        else:
            n = self._partitions_asked or DEFAULT_PARTITIONS
        check_count(n, where)
        return n

    async def _with_client(self, where: str, job: Callable[[Redis], Awaitable[T]]) -> T:
        """Run `job` on the open client, or on a short-lived one before `open()`."""
        if self._client is not None:
            client = self._client
            return await guarded(where, lambda: job(client))
        temp = self._new_client()
        try:
            return await guarded(where, lambda: job(temp))
        finally:
            await temp.aclose()

    async def schema_version(self) -> int | None:
        return await self._with_client(f"cannot read {redact(self.url)}", self._schema_of)

    async def migrate(self) -> MigrateResult:
        return await self._with_client(f"cannot migrate {redact(self.url)}", self._migrate)

    def _connect(self, **options: Any) -> Any:
        """A client whose pool makes callers wait for a free connection (never refuses).

        For a cluster, a `RedisCluster`: every key of a partition shares one hash slot, so
        each FCALL runs on the one node that holds it.
        """
        if self.cluster:
            return RedisCluster.from_url(
                self._driver_url,
                max_connections=max(self._max_connections, 1024),
                health_check_interval=30,
                **options,
            )
        pool = BlockingConnectionPool.from_url(
            self._driver_url,
            max_connections=self._max_connections,
            timeout=None,
            health_check_interval=30,
            **options,
        )
        return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both

    async def _load_library(self, client: Redis, *, force: bool = False) -> None:
        """Load the Functions library unless this exact version is loaded already."""
        if not force:
            try:
                loaded = await client.fcall("fm_version", 0)
            except rx.ResponseError:
                loaded = None
            if loaded == LIBRARY_VERSION.encode():
                return
        await client.function_load(LIBRARY, replace=True)

    async def _library_ours(self) -> bool:
        """Whether the library loaded on the server is this client's version."""
        loaded = await self._run("fm_version", lambda: self._c().fcall("fm_version", 1, self._k))
        return bool(loaded == LIBRARY_VERSION.encode())

    async def close(self) -> None:
        # calls still running (cancelled callers leave theirs behind) end before the pools
        waits, self._waits = self._waits, set()
        for w in waits:
            w.cancel()
        if waits:
            await asyncio.wait(waits, timeout=5)
        client, self._client = self._client, None
        blocking, self._blocking = self._blocking, None
        for c in (blocking, client):
            if c is not None:
                await c.aclose()

    def _c(self) -> Any:
        if self._client is None:
            raise StoreError("the store is not open")
        return self._client

    def _track(self, task: asyncio.Task[None]) -> None:
        """A task of this store's own, ended by close()."""
        self._waits.add(task)
        task.add_done_callback(self._waits.discard)

    async def _detached(self, call: Awaitable[T]) -> T:
        """Await a driver call so that cancelling the caller always raises at once.

        The driver can turn a cancel that races its own socket timeout into a timeout
        error; a loop that retries on store errors (a lease keeper, a waiter) would then
        go on instead of stopping, and a worker would never finish shutting down. The
        call runs in a task of its own (ended by close()), and the caller's cancel is
        raised whatever the driver does with it.
        """
        inner = asyncio.ensure_future(call)
        self._waits.add(inner)
        inner.add_done_callback(self._waits.discard)
        try:
            await asyncio.wait({inner})
        except asyncio.CancelledError:
            inner.cancel()
            inner.add_done_callback(_retrieve)
            raise
        return inner.result()

    async def _run(self, where: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """One plain command (a read); its reply as the driver gives it (bytes)."""

        async def run() -> Any:
            async with self._gate:
                return await self._outage.ride(lambda: guarded(where, call))

        return await self._detached(run())

    async def _fcall(
        self,
        fn: str,
        params: dict[str, Any],
        blobs: Sequence[bytes] = (),
        *,
        durable: bool = False,
    ) -> Any:
        """One function call; on a library that is missing or stale, load ours and retry.

        `durable`: a write the caller acknowledges (submit, complete, signal, schedules);
        with durability=fsync it returns once the server's AOF holds it on disk.
        """

        encoded = _enc.encode(params)
        fsync = durable and self._waitaof

        async def run() -> Any:
            async with self._gate:
                return await self._outage.ride(lambda: self._fcall_once(fn, encoded, blobs, fsync))

        return await self._detached(run())

    async def _fcall_once(
        self, fn: str, encoded: bytes, blobs: Sequence[bytes], fsync: bool
    ) -> Any:
        client = self._c()
        args = (encoded, *blobs)
        try:
            return await self._send(client, fn, args, fsync)
        except rx.ResponseError as exc:
            if "function not found" not in str(exc).lower():
                raise translate(exc, fn) from exc
        except (rx.RedisError, OSError) as exc:
            raise translate(exc, fn) from exc
        try:
            await self._load_library(client, force=True)
            return await self._send(client, fn, args, fsync)
        except (rx.RedisError, OSError) as exc:
            raise translate(exc, fn) from exc

    async def _send(self, client: Any, fn: str, args: Sequence[Any], fsync: bool) -> Any:
        """FCALL, and with `fsync` a WAITAOF on the same connection: WAITAOF waits for the
        writes of the connection it is sent on, so both go in one pipeline."""
        if not fsync:
            return await client.fcall(fn, 1, self._k, *args)
        pipe = client.pipeline(transaction=False)
        pipe.fcall(fn, 1, self._k, *args)
        pipe.execute_command("WAITAOF", 1, 0, 0)
        reply, _fsynced = await pipe.execute()
        return reply

    async def _call(
        self,
        fn: str,
        params: dict[str, Any],
        blobs: Sequence[bytes] = (),
        *,
        durable: bool = False,
    ) -> Any:
        """A function whose reply is one MessagePack map; its `err` raised as typed errors."""
        out = _dec.decode(await self._fcall(fn, params, blobs, durable=durable))
        if isinstance(out, dict) and "err" in out:
            raise_reply(out)
        return out

    def _raise_reply(self, encoded: bytes) -> NoReturn:
        """Raise the typed error of a function's MessagePack error map."""
        raise_reply(_dec.decode(encoded))

    # -- submission and leases -------------------------------------------------------

    async def tasks_insert(self, p: TasksInsert) -> list[InsertOutcome]:
        if p.on_duplicate not in ON_DUPLICATE_CHOICES:
            raise ConfigurationError(
                f"on_duplicate must be one of {', '.join(ON_DUPLICATE_CHOICES)}, "
                f"got {p.on_duplicate!r}"
            )
        if not p.tasks and p.fence is None:
            return []
        if p.workflow is not None or has_links(p.tasks):
            for t in p.tasks:
                check(t)
                if t.depends_on and t.dedup_key is not None and p.on_duplicate == "replace":
                    raise ConfigurationError("a task with dependencies cannot replace a duplicate")
        fence: dict[str, Any] | None = None
        if p.fence is not None:
            fence = {"id": p.fence.task_id, "epoch": p.fence.epoch}
            fence = self._leases.name(fence, p.fence.task_id, p.fence.epoch)
        out = await self._inserts.call((p, fence))
        if "err" in out:
            raise_reply(out)
        return [InsertOutcome(o[0], InsertStatus(o[1])) for o in out["out"]]

    async def _insert_batch(self, batch: list[tuple[TasksInsert, Any]]) -> list[Any]:
        """Concurrent inserts in one FCALL (`fm_insert` alone, `fm_insert_many` for more)."""
        blobs = rec.Blobs()
        groups = [rec.insert_group(p, fence, blobs) for p, fence in batch]
        if len(groups) == 1:
            return [
                _dec.decode(await self._fcall("fm_insert", groups[0], blobs.items, durable=True))
            ]
        reply = await self._fcall("fm_insert_many", {"groups": groups}, blobs.items, durable=True)
        out: list[Any] = _dec.decode(reply)["out"]
        return out

    async def tasks_claim(self, p: TasksClaim) -> list[ClaimedRow]:
        if p.limit <= 0 or not p.kinds or not p.queues:
            return []
        for limit in p.limits:
            check_claim_limit(limit)
        seed = HeldLeases.seed()
        params: dict[str, Any] = {
            "worker": p.worker_id,
            "queues": list(p.queues),
            "kinds": list(p.kinds),
            "limit": p.limit,
            "ttl": p.lease_ttl_ms,
            "start": p.start,
            "lid": seed,
        }
        if p.limits:
            params["limits"] = [rec.claim_limit(x) for x in p.limits]
        if p.now_ms is not None:
            params["now"] = p.now_ms
        self._markers.learn(p.queues)
        rows, retry_in, held = await self._fcall("fm_claim", params)
        claimed = [rec.claimed_row(r) for r in rows]
        self._markers.claimed(len(claimed) >= p.limit, len(claimed))
        for i, row in enumerate(claimed, 1):  # the function's lease ids: `<seed>:<position>`
            self._leases.took(row.id, row.lease_epoch, row.attempt, f"{seed}:{i}")
        if not p.limits:
            return claimed
        out = ClaimedRows(claimed)
        out.retry_in_ms = None if retry_in is None else int(retry_in)
        out.held_by_running = bool(held)
        return out

    async def leases_renew(self, p: LeasesRenew) -> list[RenewOutcome]:
        if not p.leases:
            return []
        params: dict[str, Any] = {
            "leases": [
                [ref.task_id, ref.epoch, self._leases.lease(ref.task_id, ref.epoch) or False]
                for ref in p.leases
            ],
            "ttl": p.lease_ttl_ms,
            "start": p.start,
        }
        if p.now_ms is not None:
            params["now"] = p.now_ms
        out = await self._call("fm_renew", params)
        for ref, (held, _cr, _exp) in zip(p.leases, out["out"], strict=True):
            if not held:
                self._leases.drop(ref.task_id, ref.epoch)
        return [
            RenewOutcome(ref.task_id, bool(held), bool(cr), exp if held else None)
            for ref, (held, cr, exp) in zip(p.leases, out["out"], strict=True)
        ]

    async def tasks_finish(self, p: TasksFinish) -> list[FinishOutcome]:
        if not p.items:
            return []
        blobs = rec.Blobs()
        items: list[dict[str, Any]] = []
        for f in p.items:
            item: dict[str, Any] = {"id": f.task_id, "epoch": f.epoch, "target": f.target.value}
            if f.result is not None:
                item["result"] = blobs.add(f.result)
            if f.error is not None:
                item["error"] = encode_error(f.error)
                item["category"] = f.error.category
            if f.delay_ms is not None:
                item["delay"] = f.delay_ms
            if f.run_at_ms is not None:
                item["run_at"] = f.run_at_ms
            if f.release:
                item["release"] = True
            if f.expired_lease:
                item["expired"] = True  # the reaper's: it holds no lease
            else:
                self._leases.name(item, f.task_id, f.epoch)
            items.append(item)
        params: dict[str, Any] = {"items": items}
        if p.now_ms is not None:
            params["now"] = p.now_ms
        out = await self._call("fm_finish", params, blobs.items, durable=True)
        for f in p.items:
            if not f.expired_lease:  # whatever the outcome, this lease has ended
                self._leases.drop(f.task_id, f.epoch)
        return [
            FinishOutcome(
                o[0], FinishStatus(o[1]), State(o[2]) if len(o) > 2 and o[2] is not None else None
            )
            for o in out["out"]
        ]

    async def tasks_promote(self, p: TasksPromote) -> int:
        n: int = (await self._call("fm_promote", rec.limit_now(p.limit, p.now_ms)))["n"]
        return n

    async def tasks_expire(self, p: TasksExpire) -> int:
        n: int = (await self._call("fm_expire", rec.limit_now(p.limit, p.now_ms)))["n"]
        return n

    async def leases_expired(self, p: LeasesExpired) -> list[ExpiredLease]:
        rows = await self._fcall("fm_leases_expired", rec.limit_now(p.limit, p.now_ms))
        return [rec.expired_lease(r) for r in rows]

    async def task_cancel(self, p: TaskCancel) -> CancelOutcome:
        params: dict[str, Any] = {
            "id": p.task_id,
            "reason": p.reason,
            "error": encode_error(ErrorInfo("Cancelled", p.reason, "cancelled")),
        }
        if p.now_ms is not None:
            params["now"] = p.now_ms
        out = await self._call("fm_cancel", params)
        return CancelOutcome(p.task_id, State(out["state"]), bool(out["requested"]))

    async def task_retry(self, p: TaskRetry) -> State:
        params: dict[str, Any] = {"id": p.task_id}
        if p.now_ms is not None:
            params["now"] = p.now_ms
        out = await self._call("fm_retry", params)
        return State(out["state"])

    async def task_progress(self, p: TaskProgress) -> None:
        params: dict[str, Any] = {
            "id": p.task_id,
            "epoch": p.epoch,
            "pct": repr(float(p.pct)),
            "detail": progress_detail(p.pct, p.message),
        }
        if p.message is not None:
            params["message"] = p.message
        if p.now_ms is not None:
            params["now"] = p.now_ms
        await self._call("fm_progress", self._leases.name(params, p.task_id, p.epoch))


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
