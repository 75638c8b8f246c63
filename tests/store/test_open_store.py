"""`open_store`: the URL's scheme picks the backend's factory from one table."""

from __future__ import annotations

from typing import Any

import pytest

from flowmill.errors import ConfigurationError
from flowmill.store import BACKENDS, open_store
from flowmill.store.contract import Store
from flowmill.store.postgres import PostgresStore
from flowmill.store.sqlite import SQLiteStore


def test_schemes_pick_their_backend() -> None:
    assert isinstance(open_store("sqlite://:memory:"), SQLiteStore)
    assert isinstance(open_store("SQLITE:///jobs.db"), SQLiteStore)
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)


def test_sqlite_urls() -> None:
    store = open_store("sqlite:///rel.db?synchronous=normal")
    assert isinstance(store, SQLiteStore)
    assert (store.path, store.synchronous) == ("rel.db", "NORMAL")
    absolute = open_store("sqlite:////tmp/abs.db")
    assert isinstance(absolute, SQLiteStore) and absolute.path == "/tmp/abs.db"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("nonsense", "bad store URL"),
        ("mysql://x/y", "unknown store URL scheme 'mysql'"),
        ("redis://localhost?durability=sometimes", "durability must be one of"),
        ("sqlite:///jobs.db?synchronus=full", "unknown option 'synchronus'"),
        ("redis://localhost/0?prefx=shop:", "unknown option 'prefx'"),
        ("redis://u:hunter2@localhost/0?decode_responses=1", "unknown option 'decode_responses'"),
        ("sqlite:///jobs.db?synchronous=off", "synchronous must be FULL or NORMAL"),
    ],
)
def test_bad_urls(url: str, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        open_store(url)


def test_a_bad_redis_url_hides_its_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store("redis://u:hunter2@localhost/0?nope=1")
    assert "hunter2" not in str(caught.value)


def test_redis_urls_keep_the_drivers_options() -> None:
    from flowmill.store.redis._conn import parse_url

    settings = parse_url("rediss://h:6380/2?prefix=shop:&socket_timeout=5&ssl_cert_reqs=none")
    assert settings.prefix == "shop:"
    assert settings.driver_url == "rediss://h:6380/2?socket_timeout=5&ssl_cert_reqs=none"


def test_a_backend_joins_with_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, dict[str, Any]]] = []
    memory = SQLiteStore(":memory:")

    def factory(url: str, **options: Any) -> Store:
        made.append((url, options))
        return memory

    monkeypatch.setitem(BACKENDS, "fake", factory)
    assert open_store("fake://somewhere", timeout_s=2.0) is memory
    assert made == [("fake://somewhere", {"timeout_s": 2.0})]
