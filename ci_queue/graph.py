"""The dependency graph of a run: what must finish before each job may start.

Stage order is expressed with one *stage node* per stage boundary instead of edges from every
job of a stage to every job of the next (O(n) edges, not O(n^2)): the stage node of stage k
waits for every job of stage k-1 and for the stage node of k-1, and the jobs of stage k without
``needs`` wait for it. A job with ``needs`` waits for exactly the jobs it needs (``needs: []``:
nothing). The barrier in the store walks this graph; nothing else does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ci_queue.pipeline.model import Plan


@dataclass
class Node:
    """A job (index < number of jobs) or a stage boundary."""

    index: int
    kind: str  # "job" | "stage"
    name: str
    preds: list[int] = field(default_factory=list)
    when: str = "on_success"
    uses_needs: bool = False
    optional_manual: bool = False  # `when: manual` that may fail: does not hold later stages back

    @property
    def is_job(self) -> bool:
        return self.kind == "job"


def build_graph(plan: Plan) -> list[Node]:
    """Nodes for ``plan``: its jobs first (same indexes as ``plan.jobs``), then stage nodes."""
    nodes = [
        Node(i, "job", job.name, when=job.when, uses_needs=job.needs is not None,
             optional_manual=job.when == "manual" and job.allow_failure)
        for i, job in enumerate(plan.jobs)
    ]
    index = {job.name: i for i, job in enumerate(plan.jobs)}
    stage_node: dict[str, int] = {}
    previous_stage: str | None = None
    for stage in plan.stages:
        if previous_stage is not None:
            node = Node(len(nodes), "stage", stage)
            node.preds = [i for i, job in enumerate(plan.jobs) if job.stage == previous_stage]
            if previous_stage in stage_node:
                node.preds.append(stage_node[previous_stage])
            stage_node[stage] = node.index
            nodes.append(node)
        previous_stage = stage
    for i, job in enumerate(plan.jobs):
        if job.needs is not None:
            nodes[i].preds = [index[need.job] for need in job.needs if need.job in index]
        elif job.stage in stage_node:
            nodes[i].preds = [stage_node[job.stage]]
    return nodes


def dependents(nodes: list[Node]) -> dict[int, list[int]]:
    """The reverse edges: for each node, the nodes that wait for it."""
    result: dict[int, list[int]] = {node.index: [] for node in nodes}
    for node in nodes:
        for pred in node.preds:
            result[pred].append(node.index)
    return result
