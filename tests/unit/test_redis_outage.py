"""The Redis store rides out a server that is down: what it sends again, and what it logs."""

from __future__ import annotations

import pytest
from redis import exceptions as rx

from flowmill.errors import StoreUnavailable
from flowmill.store.redis._conn import translate
from flowmill.store.redis._outage import Outage, not_sent


def _refused() -> rx.ConnectionError:
    exc = rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connect call failed.")
    exc.__cause__ = ConnectionRefusedError(111, "refused")
    return exc


def _unavailable(exc: BaseException) -> StoreUnavailable:
    err = translate(exc, "fm_claim")
    assert isinstance(err, StoreUnavailable)
    err.__cause__ = exc
    return err


def test_only_commands_that_never_ran_are_sent_again() -> None:
    assert not_sent(_refused())
    assert not_sent(rx.BusyLoadingError("LOADING Redis is loading the dataset in memory"))
    assert not_sent(rx.TimeoutError("Timeout connecting to server"))
    # the server died under a sent command: it may have run
    assert not not_sent(rx.ConnectionError("Connection closed by server."))
    reset = rx.ConnectionError("Error while reading from 127.0.0.1:1 : (104, 'reset')")
    reset.__cause__ = ConnectionResetError(104, "reset")
    assert not not_sent(reset)
    assert not not_sent(rx.TimeoutError("Timeout reading from socket"))
    assert not not_sent(rx.ResponseError("WRONGTYPE"))
    assert not not_sent(None)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_an_outage_is_waited_for_and_logged_twice(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    outage = Outage("Redis at redis://h", 30.0, clock=clock, sleep=clock.sleep)
    failures = [_unavailable(_refused()) for _ in range(6)]

    async def call() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    assert await outage.ride(call) == "ok"
    assert await outage.ride(call) == "ok"
    assert len(clock.slept) == 6
    assert clock.slept[-1] > clock.slept[0]  # backoff grows
    assert outage.down_since is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "Redis at redis://h is unreachable (connection refused)" in lines[0]
    assert "Redis at redis://h is reachable again after" in lines[1]


async def test_a_call_the_server_died_under_is_not_sent_again() -> None:
    clock = _Clock()
    outage = Outage("Redis at redis://h", 30.0, clock=clock, sleep=clock.sleep)
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise _unavailable(rx.ConnectionError("Connection closed by server."))

    with pytest.raises(StoreUnavailable, match="Connection closed by server"):
        await outage.ride(call)
    assert calls == 1 and clock.slept == []


async def test_patience_runs_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    outage = Outage("Redis at redis://h", 5.0, clock=clock, sleep=clock.sleep)

    async def call() -> str:
        raise _unavailable(_refused())

    with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
        await outage.ride(call)
    assert 5.0 <= clock.now - 100.0 < 5.0 + 1.5  # gave up once the patience had passed
    assert outage.down_since is not None  # still down: the next success logs the end
    assert len(caplog.records) == 1
