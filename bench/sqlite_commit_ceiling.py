"""The ceiling of one-by-one submits on this disk: flowmill's own insert, one commit each.

    .venv/bin/python bench/sqlite_commit_ceiling.py [--n 2000]

Runs the SQLite store's insert job (`_insert`) for one task per transaction on a single
thread, with no thread hand-off and no asyncio, under `synchronous=FULL` and `NORMAL`, and
a bare one-row insert+commit for reference. A sequential submitter waits for its own
commit, so under FULL the WAL fsync bounds its rate whatever the engine does around it.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time

from flowmill.store.contract.tasks import TasksInsert
from flowmill.store.sqlite._insert import tasks_insert
from flowmill.store.sqlite._schema import migrate
from flowmill.store.sqlite._threads import Tx
from flowmill.testing.conformance._util import task


def rate(conn: sqlite3.Connection, n: int, one: object) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        if one is None:
            conn.execute("INSERT INTO bare (x) VALUES (?)", (i,))
        else:
            tasks_insert(conn, Tx(), TasksInsert([task()]))
        conn.execute("COMMIT")
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    d = tempfile.mkdtemp(prefix="flowmill-ceiling-")
    try:
        conn = sqlite3.connect(f"{d}/x.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
        conn.execute("CREATE TABLE bare (x INTEGER)")
        for sync in ("FULL", "NORMAL"):
            conn.execute(f"PRAGMA synchronous = {sync}")
            bare = rate(conn, args.n, None)
            ours = rate(conn, args.n, task)
            print(
                f"synchronous={sync}: flowmill insert+commit {ours:,.0f}/s "
                f"({1e6 / ours:.0f} us); bare one-row insert+commit {bare:,.0f}/s"
            )
        conn.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
