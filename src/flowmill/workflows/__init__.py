"""DAG workflows: the builder (`app.workflow(name)`), stored runs, and `when=` conditions."""

from ._builder import Node, Workflow, fan_out_in, pipeline
from ._runs import NodeStatus, RunState, WorkflowResult, WorkflowRun, WorkflowStatus
from ._when import Upstream

__all__ = [
    "Node",
    "NodeStatus",
    "RunState",
    "Upstream",
    "Workflow",
    "WorkflowResult",
    "WorkflowRun",
    "WorkflowStatus",
    "fan_out_in",
    "pipeline",
]
