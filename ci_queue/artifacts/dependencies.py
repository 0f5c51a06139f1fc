"""Whose artifacts a job fetches before it runs: GitLab's ``Ci::BuildDependencies#local``.

GitLab (``app/models/ci/build_dependencies.rb``) starts from the pipeline's latest builds, then:

1. ``dependencies: []`` -> nothing at all (``no_local_dependencies_specified?``), whatever the
   job ``needs``;
2. a job with ``needs`` (even ``needs: []``: its scheduling type is then ``dag``) -> the needed
   jobs whose ``needs:artifacts`` is not false (``needs.artifacts``), whatever their stage;
   otherwise -> every job of an earlier stage (``before_stage(stage_idx)``);
3. a non-empty ``dependencies`` list narrows that to the jobs it names (``from_dependencies``:
   an intersection; a name the first step did not select is not added back).

Only ``Ci::Build`` records count (``model_class``): trigger jobs (bridges) never have artifacts,
so they are never sources, and a trigger job fetches nothing itself.

Order: GitLab's query has no ORDER BY, so the API hands the runner the dependencies in the
order PostgreSQL returns the rows, in practice job-creation order, which is stage order and then
the order of the jobs in the file (with ``parallel`` instances in expansion order). That is the
order the runner downloads and extracts them in, so when two sources hold the same path, the
later one wins. We return that order explicitly: stage order, then the order of ``jobs``.
"""

from __future__ import annotations

from ci_queue.pipeline.model import Job


def artifact_sources(job: Job, jobs: list[Job], stages: list[str]) -> list[str]:
    """The names of the jobs whose artifacts ``job`` fetches, in download order.

    ``jobs`` are every planned job of the run (``Plan.jobs``), ``stages`` the stage order
    (``Plan.stages``); names are the planned ones (``build 1/2``, ``build: [linux]``), which is
    what the planner resolved ``needs`` and ``dependencies`` to.
    """
    if not job.runnable or job.dependencies == []:
        return []
    order = {stage: i for i, stage in enumerate(stages)}
    if job.stage not in order:
        raise ValueError(f"job `{job.name}` is in stage `{job.stage}`, which is not in {stages}")
    if job.needs is not None:
        selected = {need.job for need in job.needs if need.artifacts}
        candidates = [other for other in jobs if other.name in selected]
    else:
        candidates = [other for other in jobs if order.get(other.stage, len(order)) < order[job.stage]]
    if job.dependencies:
        named = set(job.dependencies)
        candidates = [other for other in candidates if other.name in named]
    position = {id(other): i for i, other in enumerate(jobs)}
    candidates.sort(key=lambda other: (order.get(other.stage, len(order)), position[id(other)]))
    return [other.name for other in candidates if other.runnable and other.name != job.name]
