"""Lease renewal, shared by the worker and the claimer: health, loss, cancel requests."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._context import CancelToken
from ..errors import StoreError
from ..store.contract import Store
from ..store.contract.tasks import LeaseRef, LeasesRenew
from ._outcome import STOP_LEASE_LOST, STOP_LEASE_UNHEALTHY, STOP_OPERATOR

log = logging.getLogger("flowmill.leases")

UNHEALTHY_AFTER = 3  # consecutive failed renewals before an attempt is told to stop


@dataclass(slots=True)
class HeldLease:
    """One held lease: its fence, the attempt's stop token, and its renewal health."""

    ref: LeaseRef
    token: CancelToken = field(default_factory=CancelToken)
    failures: int = 0

    @property
    def healthy(self) -> bool:
        return self.failures < UNHEALTHY_AFTER and not self.token.is_set


@dataclass(slots=True)
class RenewTally:
    """How many leases this renewal newly found unhealthy, or lost."""

    unhealthy: int = 0
    lost: int = 0


async def renew(
    store: Store, leases: Sequence[HeldLease], ttl_ms: int, now_ms: int | None
) -> RenewTally:
    """Renew `leases` in one call and fire the token of each attempt that must stop.

    A failed call counts against every lease; the third failure in a row makes the lease
    unhealthy. A lease the store no longer holds is lost; a cancel request is passed on.
    """
    tally = RenewTally()
    if not leases:
        return tally
    try:
        outcomes = await store.leases_renew(LeasesRenew([h.ref for h in leases], ttl_ms, now_ms))
    except StoreError as exc:
        log.warning("lease renewal failed: %s", exc)
        for h in leases:
            h.failures += 1
            if h.failures >= UNHEALTHY_AFTER and not h.token.is_set:
                tally.unhealthy += 1
                h.token.fire(STOP_LEASE_UNHEALTHY)
        return tally
    for h, out in zip(leases, outcomes, strict=True):
        h.failures = 0
        if not out.held:
            if not h.token.is_set:
                tally.lost += 1
            h.token.fire(STOP_LEASE_LOST)
        elif out.cancel_requested:
            h.token.fire(STOP_OPERATOR)
    return tally
