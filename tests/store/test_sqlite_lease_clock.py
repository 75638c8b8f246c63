"""The SQLite lease clock: the host's boot-time clock, tagged with the boot id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowmill.store.contract.tasks import LeasesExpired, NewTask, TasksClaim, TasksInsert
from flowmill.store.sqlite import SQLiteStore, _clock


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "lease.db"))
    await s.open()
    yield s
    await s.close()


async def _claimed(store: SQLiteStore) -> str:
    await store.tasks_insert(TasksInsert([NewTask("t1", "job", b"null")]))
    (row,) = await store.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 60_000))
    return row.id


async def test_a_lease_written_before_a_reboot_is_expired(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = await _claimed(store)
    assert await store.leases_expired(LeasesExpired()) == []
    # After a reboot the boot-time clock restarts near zero: the boot id tells them apart.
    monkeypatch.setattr(_clock, "boot_id", lambda: "boot:another-boot")
    monkeypatch.setattr(_clock, "mono_ms", lambda: 5)
    (lease,) = await store.leases_expired(LeasesExpired())
    assert lease.task_id == task_id


async def test_the_lease_expiry_shown_is_wall_clock(store: SQLiteStore) -> None:
    task_id = await _claimed(store)
    rec = await store.task_get(task_id)
    assert rec is not None and rec.lease_expires_at_ms is not None
    assert abs(rec.lease_expires_at_ms - (_clock.wall_ms() + 60_000)) < 5_000
