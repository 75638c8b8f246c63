"""The PostgreSQL store: psycopg 3 (async) with a pool, SKIP LOCKED claims, LISTEN/NOTIFY.

Every hot operation is one statement in autocommit mode (one transaction, one round
trip), including the join of a batch of finished children with their parents and a batch
of concurrent spawns. Operator calls, keyed inserts and the rarer tree work (fail-fast,
cascades, wait_children, TTL expiry of children; `_tree`) lock what they read inside an
explicit transaction. Times are judged on the database clock unless `now_ms` is given.
"""

from ._store import DEFAULT_SCHEMA, PostgresStore

__all__ = ["DEFAULT_SCHEMA", "PostgresStore"]
