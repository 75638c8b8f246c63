"""flowmill reclaim latency: how long a dead worker's tasks wait before the reaper takes
them back.

    .venv/bin/python bench/reclaim_latency.py                          # SQLite, TTL 3 s
    .venv/bin/python bench/reclaim_latency.py --backend postgres
    .venv/bin/python bench/reclaim_latency.py --ttl 6 --reap-interval 2 --rounds 10
    .venv/bin/python bench/reclaim_latency.py --json

Each round starts `--victims` worker processes that claim `--tasks` tasks which never
end (their handlers sleep), waits until every task is running under a renewed lease, then
SIGKILLs the victims. One surviving worker (in this process, registered for another task
kind so it only reaps) runs its maintenance loop with the reap interval under test, from
a phase that is random with respect to the kill. For each task:

* expiry -> reclaimed: from the `lease_expires_at` the victim last renewed to the store
  event that reclaimed it (category `lease_expired`); the reaper's own share;
* kill -> reclaimed: from the kill (read on the store's clock) to that event.

Both are measured on the store's clock. The goal: p99 of kill -> reclaimed <= TTL + 2 reap
intervals (a lease was renewed at most TTL/3 before the kill; it expires at most TTL after;
the reaper passes at most one interval after that, plus the pass itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import flowmill as fm
from flowmill.store.contract.tasks import EventsRead, TasksList

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
HANG_S = 3600.0
READY_TIMEOUT_S = 60.0
SCRIPT = os.path.abspath(__file__)


async def _hang(x: int) -> None:
    await asyncio.sleep(HANG_S)


async def _other(x: int) -> None:
    """The surviving worker's only task kind: it claims nothing of the victims'."""


# -- the victim process -------------------------------------------------------------------


async def _victim(url: str, kind: str, ttl_s: float, concurrency: int) -> None:
    app = fm.App(url)
    app.task(name=kind, retry=fm.Retry(max_attempts=1000))(_hang)
    await app.open()
    worker = app.worker(lease_ttl=timedelta(seconds=ttl_s), concurrency=concurrency, prefetch=0)
    await worker.run()


# -- the bench ----------------------------------------------------------------------------


def _spawn(cmd: list[str], n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(cmd, stdin=subprocess.DEVNULL) for _ in range(n)]


def _percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of `values`."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def _count(app: fm.App, kind: str, state: fm.State) -> int:
    rows = await app.store.tasks_list(TasksList((state,), None, kind, 10_000))
    return len(rows)


async def _wait_running(
    app: fm.App, kind: str, n: int, procs: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while await _count(app, kind, fm.State.RUNNING) < n:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a victim worker exited early with status {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the victims did not claim all {n} tasks in time")
        await asyncio.sleep(0.05)


async def _reclaim_events(
    app: fm.App, ids: set[str], after: int, timeout_s: float
) -> dict[str, int]:
    """task id -> the store time (ms) of the event that reclaimed it."""
    found: dict[str, int] = {}
    cursor = after
    deadline = time.monotonic() + timeout_s
    while len(found) < len(ids):
        page = await app.store.events_read(EventsRead(cursor, 1000))
        for ev in page:
            cursor = ev.id
            if ev.task_id in ids and ev.detail == "lease_expired" and ev.task_id not in found:
                found[ev.task_id] = ev.at_ms
        if not page:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(found)} of {len(ids)} leases were reclaimed")
            await asyncio.sleep(0.02)
    return found


async def _last_event_id(app: fm.App) -> int:
    last = 0
    while page := await app.store.events_read(EventsRead(last, 10_000)):
        last = page[-1].id
    return last


async def _round(
    app: fm.App, url: str, n: int, args: argparse.Namespace, reap_s: float
) -> tuple[list[float], list[float]]:
    kind = f"bench.hang.{n}"  # a kind per round: reclaimed tasks of earlier rounds stay put
    async with fm.App(url) as feeder:  # the survivor must not know the kind, or claim it
        feeder.task(name=kind, retry=fm.Retry(max_attempts=1000))(_hang)
        await feeder.submit_many(kind, list(range(args.tasks)))
    per_victim = math.ceil(args.tasks / args.victims)
    cmd = [sys.executable, SCRIPT, "--victim", url, kind, str(args.ttl), str(per_victim)]
    procs = _spawn(cmd, args.victims)
    try:
        await _wait_running(app, kind, args.tasks, procs)
        # Let the leases age a random part of a renewal period, then kill every victim.
        await asyncio.sleep(args.ttl / 3 * (0.5 + (n % 7) / 7))
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    killed_at = await app.store.now_ms()
    after = await _last_event_id(app)
    rows = await app.store.tasks_list(TasksList((fm.State.RUNNING,), None, kind, 10_000))
    expiry = {r.id: r.lease_expires_at_ms for r in rows}
    if len(expiry) != args.tasks:
        raise RuntimeError(f"{args.tasks - len(expiry)} task(s) left running before the kill")
    reclaimed = await _reclaim_events(app, set(expiry), after, args.ttl + 10 * reap_s + 30)
    from_expiry = [(reclaimed[i] - e) / 1000 for i, e in expiry.items() if e is not None]
    from_kill = [(at - killed_at) / 1000 for at in reclaimed.values()]
    return from_expiry, from_kill


async def _store_url(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> str:
    if args.backend == "sqlite":
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fm-reclaim-"))
        return f"sqlite:///{os.path.join(tmp, 'flowmill.db')}"
    from flowmill.testing._pg import fresh_pg_schema

    schema = await stack.enter_async_context(fresh_pg_schema(args.pg_url, "fmbench_reclaim"))
    return f"{args.pg_url}?schema={schema}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ttl = timedelta(seconds=args.ttl)
    reap = timedelta(seconds=args.reap_interval) if args.reap_interval is not None else None
    async with contextlib.AsyncExitStack() as stack:
        url = await _store_url(args, stack)
        app = fm.App(url)
        app.task(name="bench.other")(_other)
        await app.open()
        stack.push_async_callback(app.close)
        survivor = app.worker(lease_ttl=ttl, reap_interval=reap, concurrency=1)
        reap_s = survivor.maintenance.reap_s
        running = asyncio.create_task(survivor.run())
        from_expiry: list[float] = []
        from_kill: list[float] = []
        try:
            for n in range(args.rounds):
                e, k = await _round(app, url, n, args, reap_s)
                from_expiry += e
                from_kill += k
                if not args.json:
                    print(f"round {n + 1}/{args.rounds}: kill -> reclaimed max {max(k):.2f} s")
        finally:
            survivor.stop()
            await asyncio.wait_for(running, 60)
    goal = args.ttl + 2 * reap_s
    p99 = _percentile(from_kill, 99)
    return {
        "backend": args.backend,
        "lease_ttl_s": args.ttl,
        "reap_interval_s": reap_s,
        "rounds": args.rounds,
        "leases": len(from_kill),
        "expiry_to_reclaimed_s": _summary(from_expiry),
        "kill_to_reclaimed_s": _summary(from_kill),
        "goal_p99_s": goal,
        "goal_met": p99 <= goal,
    }


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(_percentile(values, 50), 3),
        "p99": round(_percentile(values, 99), 3),
        "max": round(max(values), 3),
    }


def _print(r: dict[str, Any]) -> None:
    print(
        f"reclaim latency on {r['backend']}: lease TTL {r['lease_ttl_s']:g} s, reap interval "
        f"{r['reap_interval_s']:g} s, {r['leases']} leases of killed workers "
        f"({r['rounds']} rounds)"
    )
    for key, name in (
        ("expiry_to_reclaimed_s", "expiry -> reclaimed"),
        ("kill_to_reclaimed_s", "kill -> reclaimed"),
    ):
        s = r[key]
        print(f"{name}: p50 {s['p50']:.3f} s, p99 {s['p99']:.3f} s, max {s['max']:.3f} s")
    verdict = "met" if r["goal_met"] else "NOT met"
    print(
        f"goal: p99 kill -> reclaimed <= TTL + 2 reap intervals = {r['goal_p99_s']:g} s: {verdict}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--pg-url", default=DEFAULT_PG_URL)
    p.add_argument("--ttl", type=float, default=3.0, help="lease TTL, seconds (default 3)")
    p.add_argument(
        "--reap-interval",
        type=float,
        default=None,
        help="seconds between reaper passes (default: the worker's, a third of the TTL)",
    )
    p.add_argument("--rounds", type=int, default=10, help="kills (default 10)")
    p.add_argument("--tasks", type=int, default=20, help="tasks held per round (default 20)")
    p.add_argument("--victims", type=int, default=2, help="worker processes killed per round")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--victim"]:
        url, kind, ttl, concurrency = argv[1:5]
        asyncio.run(_victim(url, kind, float(ttl), int(concurrency)))
        return 0
    args = parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except (fm.StoreError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0 if result["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
