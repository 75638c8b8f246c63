"""Partitions of the key space: which hash tag holds a task (groundwork of issue 14).

A store of N partitions keeps its keys under N hash tags, `<prefix>{fm:<p>}:` for p in
0..N-1, each one cluster slot. A task lives in partition `id_tag(id) % N`, a pure function
of its id that every client computes alone (`flowmill._rows.id_tag`: the id's last 4 hex
digits, which the engine mints so that children share their parent's, workflow nodes
their run's, and a task with a dedup key a tag drawn from its kind and key).

This build still keeps every key in partition 0: the count is parsed, checked and stamped
in partition 0's meta hash, and a count above 1 is refused (`check_count`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..._rows import id_tag, key_tag
from ...errors import ConfigurationError
from ..contract.tasks import NewTask

MAX_PARTITIONS = 256
# The count a store runs with until partitioning lands; a cluster store stamped with it
# keeps working when the default for clusters changes (an open without `partitions=`
# adopts the stamped count).
DEFAULT_PARTITIONS = 1
SUPPORTED_PARTITIONS = 1


def parse_count(value: str) -> int:
    """The `partitions=` parameter of a Redis URL: an integer 1..256."""
    n = int(value) if value.isascii() and value.isdigit() else 0
    if not 1 <= n <= MAX_PARTITIONS:
        raise ConfigurationError(
            f"partitions must be an integer from 1 to {MAX_PARTITIONS}, got {value!r}"
        )
    return n


def check_count(n: int, where: str) -> None:
    """Refuse a count this build cannot serve (a ConfigurationError, never a store that
    writes some keys in one layout and reads them in another)."""
    if n > SUPPORTED_PARTITIONS:
        raise ConfigurationError(
            f"{where}: partitions={n} is not available in this flowmill yet (it keeps every "
            f"key in one partition); open the store with partitions=1"
        )


def check_stamp(stamped: int, asked: int | None, where: str) -> int:
    """The count a store opens with: the stamped one, which an explicit `partitions=`
    must match (moving tasks between partitions is not done by an open)."""
    if asked is not None and asked != stamped:
        raise ConfigurationError(
            f"{where}: the store was created with partitions={stamped}, and the URL asks "
            f"for partitions={asked}; drop `partitions=` from the URL to use {stamped}"
        )
    return stamped


def prefix_of(prefix: str, partition: int) -> str:
    """The key prefix of one partition: `<prefix>{fm:<partition>}:`."""
    return f"{prefix}{{fm:{partition}}}:"


def partition_of(task_id: str, n: int) -> int:
    """The partition that holds a task in a store of `n` partitions."""
    return id_tag(task_id) % n


def key_partition(kind: str, key: str, n: int) -> int:
    """The partition whose dedup index holds a (kind, dedup key) of a top-level task."""
    return key_tag(kind, key) % n


def misplaced(tasks: Sequence[NewTask], n: int) -> str | None:
    """Why one of `tasks` cannot live where its id puts it in a store of `n` partitions
    (None when every one can): a child must share its parent's partition, a workflow node
    its run's, a top-level task with a dedup key its key's partition. Ids minted by the
    engine always fit; a hand-made id may not."""
    if n == 1:
        return None
    for t in tasks:
        p = partition_of(t.id, n)
        if t.parent_id is not None:
            if p != partition_of(t.parent_id, n):
                return (
                    f"task {t.id!r} is in partition {p} and its parent {t.parent_id!r} in "
                    f"{partition_of(t.parent_id, n)}: give a child the last 4 hex digits of "
                    f"its parent's id (flowmill._rows.new_task_ids(near=parent))"
                )
        elif t.workflow_id is not None:
            if p != partition_of(t.workflow_id, n):
                return (
                    f"task {t.id!r} is in partition {p} and its workflow run "
                    f"{t.workflow_id!r} in {partition_of(t.workflow_id, n)}"
                )
        elif t.dedup_key is not None and p != key_partition(t.kind, t.dedup_key, n):
            return (
                f"task {t.id!r} is in partition {p} and its dedup key {t.dedup_key!r} in "
                f"{key_partition(t.kind, t.dedup_key, n)}: end its id in the 4 hex digits "
                f"of flowmill._rows.key_tag(kind, key)"
            )
    return None
