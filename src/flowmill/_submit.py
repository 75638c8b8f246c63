"""The one way tasks get in: submits and spawns build their rows and store them here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._handle import TaskHandle
from ._rows import Common, Opts, check_key, check_on_duplicate
from ._runtime import Runtime
from ._task import TaskDef
from ._task import by_name as by_name_def
from .errors import ConfigurationError
from .store.contract.tasks import LeaseRef, OnDuplicate, TasksInsert


async def insert_tasks(
    rt: Runtime,
    task: TaskDef | str,
    payloads: Sequence[Any],
    *,
    keys: Sequence[str | None] | None = None,
    child_keys: Sequence[str | None] | None = None,
    on_duplicate: OnDuplicate = "skip",
    opts: Opts,
    fence: LeaseRef | None = None,
    by_name: bool = False,
) -> list[TaskHandle[Any]]:
    """Validate everything, then store the tasks in one transaction; their handles.

    With `by_name`, a task name no handler is registered for is stored as plain JSON with
    the default options (see `_task.by_name`); otherwise it is `UnknownTask`.
    """
    if by_name and isinstance(task, str) and task not in rt.registry:
        tdef = by_name_def(task, rt.max_payload_bytes)
    else:
        tdef = rt.resolve_task(task)
    check_on_duplicate(on_duplicate)
    common = Common.build(tdef, opts)
    for what, given in (("keys", keys), ("child keys", child_keys)):
        if given is not None and len(given) != len(payloads):
            raise ConfigurationError(f"{len(given)} {what} for {len(payloads)} payloads")
    encode = tdef.payload.encode
    news = common.tasks(
        tdef,
        [encode(p) for p in payloads],
        None if keys is None else [check_key(k) for k in keys],
        None if child_keys is None else [check_key(k) for k in child_keys],
    )
    if common.budget_id is not None:
        await rt.require_budget(common.budget_id)
    await rt.open()
    outs = await rt.store.tasks_insert(TasksInsert(news, on_duplicate, rt.clock.store_now(), fence))
    return [TaskHandle(o.id, rt, tdef.name, o.status) for o in outs]


def upstream_ids(given: Sequence[TaskHandle[Any] | str]) -> tuple[str, ...]:
    """The task ids of a `depends_on` given as handles or ids."""
    if isinstance(given, str | TaskHandle):
        given = [given]
    out = []
    for g in given:
        task_id = g.id if isinstance(g, TaskHandle) else g
        if not isinstance(task_id, str) or not task_id:
            raise ConfigurationError(f"depends_on takes task handles or ids, got {g!r}")
        out.append(task_id)
    return tuple(out)
