"""The key layout's version, and what migrating an older layout rebuilds.

Redis has no DDL: version 1 is the key layout flowmill.lua reads and writes. A change to
that layout gets the next number, aligned with the other backends' migrations.
2: schedules (`sd:<name>` hashes and the `sdn` set; nothing to rewrite from 1).
3: the indexes of the operator's operations (finish times `fin`, kinds per queue
   `rqk:<queue>`, dependents `dn:<task>`, waitpoints per task `wpt:<task>`), rebuilt from
   the tasks when an older layout is migrated.
4: leases say whether their handler started (`lease_started`), one-shot waitpoints
   (`closed`); a task or waitpoint without them reads as started and open.
5: a claim stamps the task with a random lease id (`lease_id`) that every worker write
   names beside the epoch and attempt (see `_leases`); a task claimed without one (by an
   older client) is judged on its epoch. The idempotency keys of a waitpoint's signals
   live in `sik:<waitpoint>` (deleted with its task), no longer all in the `sik` hash:
   migrating an older layout moves them (`split_signal_keys`).
6: wake-up markers, one sorted set per queue (`wm:<queue>`: member `w` when the queue has
   claimable work, `d` at its earliest due time) that waiting workers block on with
   BZPOPMIN; migrating an older layout marks every queue that holds ready tasks
   (`mark_ready_queues`).
"""

from __future__ import annotations

from typing import Any

import msgspec

SCHEMA_VERSION = 6
INDEXED_SINCE = 3
SIGNAL_KEYS_SPLIT_SINCE = 5
MARKERS_SINCE = 6
_REINDEX_PAGE = 1000
_enc = msgspec.msgpack.Encoder()


def _glob(prefix: str) -> str:
    """`prefix` with the characters a SCAN pattern gives a meaning escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)


async def reindex(client: Any, k: str) -> None:
    """Build the indexes a layout before `INDEXED_SINCE` lacks, under the partition prefix
    `k`, page by page (each page one FCALL; running it twice changes nothing)."""
    offset = 0
    while True:
        params = _enc.encode({"offset": offset, "count": _REINDEX_PAGE})
        n = int(await client.fcall("fm_reindex", 1, k, params))
        if n < _REINDEX_PAGE:
            break
        offset += n
    async for key in client.scan_iter(match=_glob(k) + "wp:*", count=1000):
        task: Any = await client.hget(key, "task")
        if task is not None:
            waitpoint = key[len(k.encode()) + 3 :]
            await client.sadd(k + "wpt:" + task.decode(), waitpoint)


async def split_signal_keys(client: Any, k: str) -> int:
    """Move the idempotency keys of a layout before `SIGNAL_KEYS_SPLIT_SINCE` (one hash
    `sik`, fields `<len>:<waitpoint><key>`) to one hash per waitpoint, `sik:<waitpoint>`;
    returns how many moved. Running it again moves nothing."""
    moved = 0
    legacy = k + "sik"
    async for field, _ in client.hscan_iter(legacy, count=_REINDEX_PAGE):
        size, _, rest = field.partition(b":")
        n = int(size)
        waitpoint, key = rest[:n], rest[n:]
        await client.hset(k + "sik:" + waitpoint.decode(), key, "1")
        await client.hdel(legacy, field)
        moved += 1
    return moved


async def mark_ready_queues(client: Any, k: str) -> int:
    """Give every queue that holds ready tasks its wake-up marker (a layout before
    `MARKERS_SINCE` has none); returns how many queues were marked."""
    counts: dict[bytes, bytes] = await client.hgetall(k + "cnt")
    queues = [f[6:].decode() for f, n in counts.items() if f.startswith(b"ready|") and int(n) > 0]
    for queue in queues:
        await client.zadd(k + "wm:" + queue, {"w": 0})
    return len(queues)
