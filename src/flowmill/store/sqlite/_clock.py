"""The store's clocks: wall-clock milliseconds for due times, and the lease clock.

Wall-clock fields (created, run_at, due times, ttl) use `wall_ms()`, unless the caller
passed its own `now_ms`. Leases are judged on a clock a wall-clock step cannot move: the
host's boot-time clock (CLOCK_BOOTTIME, else CLOCK_MONOTONIC: one clock for every process
on the host), tagged with the boot id. A lease written under another boot id (before a
reboot, or with an injected time) is expired. An injected `now_ms` (tests drive time) is
its own domain: the tag `None`, times compared as given.
"""

from __future__ import annotations

import functools
import time
import uuid
from pathlib import Path

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
_CLOCK = getattr(time, "CLOCK_BOOTTIME", getattr(time, "CLOCK_MONOTONIC", None))


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def now_or_wall(now_ms: int | None) -> int:
    return now_ms if now_ms is not None else wall_ms()


@functools.cache
def boot_id() -> str:
    """This boot of the host: the kernel's boot id, else one per process (a conservative
    fallback: another process's leases then look expired, never valid too long)."""
    try:
        return "boot:" + BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        return f"proc:{uuid.uuid4()}"


def mono_ms() -> int:
    """Milliseconds on the host's boot-time clock (counts suspend; never steps)."""
    if _CLOCK is None:  # pragma: no cover - every supported platform has one
        return time.monotonic_ns() // 1_000_000
    return time.clock_gettime_ns(_CLOCK) // 1_000_000


def lease_now(now_ms: int | None) -> tuple[str | None, int]:
    """(clock tag, now) to judge and write leases with: the boot clock, or `now_ms`."""
    if now_ms is not None:
        return None, now_ms
    return boot_id(), mono_ms()


def lease_to_wall(expires: int | None, tag: str | None) -> int | None:
    """A lease expiry as wall-clock ms, for display (an injected time is shown as is)."""
    if expires is None or tag is None:
        return expires
    if tag != boot_id():
        return expires  # another boot: expired anyway; shown raw
    return wall_ms() + (expires - mono_ms())
