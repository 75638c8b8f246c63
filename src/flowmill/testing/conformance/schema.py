"""Conformance: `capabilities`, `schema_version` and `migrate` on an open store."""

from __future__ import annotations

from ...store.contract import Capabilities, MigrateResult, Store


class SchemaVersionConformance:
    async def test_an_open_store_has_a_schema_version(self, store: Store) -> None:
        version = await store.schema_version()
        assert isinstance(version, int) and version >= 1

    async def test_capabilities_are_set(self, store: Store) -> None:
        assert isinstance(store.capabilities, Capabilities)


class MigrateConformance:
    async def test_migrating_an_up_to_date_store_changes_nothing(self, store: Store) -> None:
        version = await store.schema_version()
        assert version is not None
        assert await store.migrate() == MigrateResult(version, version)
        assert await store.schema_version() == version
