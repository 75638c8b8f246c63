"""The leases this store's claims hold, each with the random lease id its claim minted.

A claim stamps the task with (attempt, epoch, lease id), and every worker write names its
lease as all three: an epoch alone can repeat when a failover loses the write of a claim
and the task is claimed again at the same epoch. The contract's references
(`LeaseRef`, `Finish`, ...) carry the task id and the epoch only, so the lease id stays
here, private to the store that claimed: a write for a lease this store holds at that
epoch names it; a reference this store never claimed (made by hand) names none and is
judged on the epoch, as the other backends judge it.

Lua has no good randomness: the client mints the ids (`seed()`, one per claim call; the
function appends the row's position).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any


class HeldLeases:
    """task id -> (epoch, attempt, lease id) of the leases this store's claims took.

    A lease that ended (finished, parked, lost) is kept a while among the `ENDED` most
    recent, so a late write of its holder (a repeated finish, a renewal racing the
    finish) still names it and is judged by it, instead of by the epoch alone.
    """

    ENDED = 4096

    def __init__(self) -> None:
        self._held: dict[str, tuple[int, int, str]] = {}
        self._ended: OrderedDict[tuple[str, int], tuple[int, str]] = OrderedDict()

    def __len__(self) -> int:
        """How many leases are held (the ended ones kept for late writes not counted)."""
        return len(self._held)

    @staticmethod
    def seed() -> str:
        """A fresh random prefix for the lease ids of one claim call."""
        return os.urandom(12).hex()

    def took(self, task_id: str, epoch: int, attempt: int, lease_id: str) -> None:
        earlier = self._held.get(task_id)
        if earlier is not None:
            self._end(task_id, earlier)
        self._held[task_id] = (epoch, attempt, lease_id)

    def lease(self, task_id: str, epoch: int) -> list[Any] | None:
        """`[attempt, lease id]` of this store's lease on `task_id` at `epoch`, or None."""
        held = self._held.get(task_id)
        if held is not None and held[0] == epoch:
            return [held[1], held[2]]
        ended = self._ended.get((task_id, epoch))
        return None if ended is None else [ended[0], ended[1]]

    def name(self, params: dict[str, Any], task_id: str, epoch: int) -> dict[str, Any]:
        """`params` with this store's lease at `epoch` named under `lease`, if it has one."""
        lease = self.lease(task_id, epoch)
        if lease is not None:
            params["lease"] = lease
        return params

    def drop(self, task_id: str, epoch: int) -> None:
        """The lease held at `epoch` ended (or was lost): no longer held."""
        held = self._held.get(task_id)
        if held is not None and held[0] == epoch:
            del self._held[task_id]
            self._end(task_id, held)

    def _end(self, task_id: str, held: tuple[int, int, str]) -> None:
        self._ended[(task_id, held[0])] = (held[1], held[2])
        if len(self._ended) > self.ENDED:
            self._ended.popitem(last=False)
