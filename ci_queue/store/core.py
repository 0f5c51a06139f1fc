"""The ``Store``: typed operations over the key schema of ``ci_queue.store``."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.retry import Retry

from ci_queue import redis_urls
from ci_queue.clock import now_iso
from ci_queue.graph import build_graph, dependents
from ci_queue.pipeline.model import Job, Plan
from ci_queue.priority import Scheduling, job_priority
from ci_queue.routing import job_queue
from ci_queue.store import lua
from ci_queue.trust import Grant, RunTrust

RUN_STATUSES = ("waiting_approval", "queued", "running", "success", "failed", "canceled", "skipped", "error")
# Not planned yet: nothing of the run is in a queue (``waiting_approval``: until a token approves it).
UNPLANNED_RUN = frozenset({"waiting_approval", "queued"})
JOB_STATUSES = ("created", "pending", "running", "success", "failed", "canceled", "skipped", "manual")
TERMINAL_RUN = frozenset({"success", "failed", "canceled", "skipped", "error"})
TERMINAL_JOB = frozenset({"success", "failed", "canceled", "skipped"})
MAX_PLAN_ERROR = 2000  # characters of a planner's failure kept for the run's error
_JOB_FIELDS = ("st", "att", "worker", "exit", "reason", "queue", "started", "finished", "allowed")
_JOB_PROPS = ("name", "spec", "attempts", "artifacts", "tests", *_JOB_FIELDS)  # what a JobState is read from


WAIT_MILLISECONDS = 1000  # how long a durable write waits for its replicas


class StoreError(Exception):
    """A request the state does not allow (unknown run or job, wrong state)."""


@dataclass
class JobState:
    """One job of a run as the API shows it."""

    index: int
    name: str
    stage: str
    status: str
    when: str
    allow_failure: Any
    attempt: int
    worker: str | None
    exit_code: int | None
    failure_reason: str | None
    queue: str | None
    started_at: str | None
    finished_at: str | None
    attempts: list[dict[str, Any]]
    spec: dict[str, Any]
    artifacts: dict[str, Any] | None = None  # the newest artifacts record (``ci_queue.store.artifacts``)
    test_summary: dict[str, Any] | None = None  # from the newest ``reports:junit`` upload

    def to_dict(self) -> dict[str, Any]:
        steps = self.attempts[-1].get("steps", []) if self.attempts else []
        artifacts = None
        if self.artifacts:
            artifacts = {k: self.artifacts.get(k) for k in ("attempt", "name", "size", "files", "expire_at",
                                                           "expired")}
        return {
            "name": self.name, "stage": self.stage, "status": self.status, "when": self.when,
            "allow_failure": self.allow_failure, "attempt": self.attempt, "worker": self.worker,
            "exit_code": self.exit_code, "failure_reason": self.failure_reason, "queue": self.queue,
            "started_at": self.started_at, "finished_at": self.finished_at, "attempts": self.attempts,
            "steps": steps, "artifacts": artifacts, "test_summary": self.test_summary,
            "secrets": list(self.spec.get("secrets") or []),
            "refused_secrets": list(self.spec.get("refused_secrets") or []),
        }


@dataclass
class RunRecord:
    """A run: what triggered it and where it stands."""

    id: str
    status: str
    repo: str
    ref: str
    sha: str
    event: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    clone_url: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    jobs: list[JobState] = field(default_factory=list)
    uses_artifacts: bool = False  # a job of the plan has `artifacts:` (its workers talk to the web app)
    # the trusted facts, set by the control plane when the run was made (``ci_queue.trust``)
    protected: bool = False  # CI_COMMIT_REF_PROTECTED: a protected branch or tag of a registered repository
    fork: bool = False  # a merge request from another project: no secrets, no protected caches
    registered: bool = False  # a repository of the registry (else: an API run of any clone URL)
    protected_workers_only: bool = False  # its protected jobs go to `ci-queue worker --protected` hosts only
    grants: tuple[Grant, ...] = ()  # the secrets its jobs may have
    approved_by: str | None = None  # who let a fork's run wait no longer (`waiting_approval` -> `queued`)
    approved_at: str | None = None
    priority: int = 0  # its jobs' priority unless a job sets CIQ_PRIORITY (``Scheduling``)

    @property
    def trust(self) -> RunTrust:
        return RunTrust(protected=self.protected, fork=self.fork, registered=self.registered,
                        protected_workers_only=self.protected_workers_only, grants=self.grants)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status, "repo": self.repo, "ref": self.ref, "sha": self.sha,
            "event": self.event, "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "error": self.error, "protected": self.protected, "fork": self.fork,
            "approved_by": self.approved_by, "approved_at": self.approved_at, "priority": self.priority,
            "jobs": [job.to_dict() for job in self.jobs],
        }


@dataclass(frozen=True)
class Once:
    """A key written together with a new run, only if absent (``Store.create_run_once``): its
    value (the first answer, for a repeat to return) and its time to live in seconds."""

    key: str
    value: str
    ttl: int


@dataclass(frozen=True)
class Alongside:
    """Writes of the request that makes a run, done in the run's own script (``Store.create_run``,
    ``create_run_once``) so that the request pays one Redis round trip for all of them instead of
    one each: ``entry`` (field/value pairs) is appended to the stream ``stream`` (capped at about
    ``maxlen``) when the run is recorded, never without it (a webhook's audit record); ``counts``
    (hash key, field, amount) are added whatever the outcome, a repeat included (the request is
    answered either way: its metrics)."""

    stream: str = ""
    maxlen: int = 0
    entry: tuple[tuple[str, str], ...] = ()
    counts: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True)
class Created:
    """What ``Store.create_run_once`` did: ``new`` when it made the run ``run_id``; else the key
    existed and ``first`` is the value stored with it (``run_id`` is then None). ``entry``: the
    stream id of ``Alongside.entry`` when it was written."""

    run_id: str | None
    first: str
    new: bool
    entry: str = ""


@dataclass(frozen=True)
class RetryResult:
    """What ``Store.retry_run`` did: the run's status now, the jobs retried, the jobs ready now."""

    status: str
    retried: list[int]
    ready: list[int]


@dataclass(frozen=True)
class Unplanned:
    """A run nobody is planning: how many planners took it so far, and why the last one failed."""

    run_id: str
    attempts: int
    error: str | None


@dataclass(frozen=True)
class Transition:
    """What a state-changing script answered: a status and the jobs that became ready."""

    status: str
    ready: list[int]
    run_status: str | None = None


def _new_record(run_id: str, *, repo: str, ref: str, sha: str, event: str, clone_url: str | None,
                variables: dict[str, str] | None, context: dict[str, Any] | None, trust: RunTrust | None,
                status: str, scheduling: Scheduling | None = None) -> dict[str, str]:
    """The hash of a run just triggered (``P run:<id>``), as stored: its trusted facts with it, in
    the same write (a run never exists without them)."""
    if status not in UNPLANNED_RUN:
        raise ValueError(f"a new run is queued or waiting_approval, not {status!r}")
    trust = trust or RunTrust()
    scheduling = scheduling or Scheduling()
    return {"id": run_id, "status": status, "repo": repo, "ref": ref, "sha": sha, "event": event,
            "created_at": now_iso(), "clone_url": clone_url or "",
            "variables": json.dumps(variables or {}), "context": json.dumps(context or {}),
            "protected": _flag(trust.protected), "fork": _flag(trust.fork), "registered": _flag(trust.registered),
            "protected_workers_only": _flag(trust.protected_workers_only),
            "grants": json.dumps([grant.to_dict() for grant in trust.grants]),
            "priority": str(scheduling.priority),
            "max_jobs": "" if scheduling.max_jobs is None else str(scheduling.max_jobs)}


def _admission_fields(i: int, job: Job) -> dict[str, str]:
    """What ``admission_lua.HOLD_ADMIT`` reads of a planned job, so that it can hold, order and
    admit jobs of any run without their specs: its queue, how it waits (``1``: held for a slot;
    ``rg``: in its resource group's line; ``delay``: a ``when: delayed`` job's first attempt is
    sent with its countdown), its timeout (for the time limits) and its own ``CIQ_PRIORITY``."""
    kind = "rg" if job.resource_group else "delay" if job.when == "delayed" and job.start_in else "1"
    fields = {f"n{i}.queue": job_queue(job.tags, job.route), f"n{i}.hold": kind,
              f"n{i}.tmo": str(job.timeout or "")}
    priority = job_priority(job.variables)
    if priority is not None:
        fields[f"n{i}.prio"] = str(priority)
    return fields


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _opt(value: str | None) -> str | None:
    return value if value not in (None, "") else None


class Store:
    """All reads and writes of run state. Thread-safe (redis-py pools connections)."""

    def __init__(self, client: redis.Redis, prefix: str = "ciq:", retention_seconds: float = 30 * 86400,
                 wait_replicas: int = 0) -> None:
        self.r = client
        self.prefix = prefix
        self.retention = int(retention_seconds)
        self.wait_replicas = wait_replicas
        self._warned_replicas = float("-inf")
        self._scripts = {name: client.register_script(getattr(lua, name)) for name in
                         ("CREATE_RUN", "APPROVE_RUN", "START_RUN", "BEGIN_JOB", "FINISH_JOB", "REQUEUE_JOB",
                          "PLAY_JOB", "CANCEL_RUN", "CANCEL_JOBS", "RETRY_RUN", "RENEW_LEASE", "EXTEND_LEASES",
                          "MARK_QUEUED", "HOLD", "RELEASE", "SET_IF_CURRENT")}

    @classmethod
    def from_url(cls, url: str, prefix: str = "ciq:", retention_seconds: float = 30 * 86400,
                 socket_timeout: float = 5.0, access: redis_urls.Access | None = None, wait_replicas: int = 0
                 ) -> Store:
        """A store on the Redis at ``url``; every connect and read gives up after ``socket_timeout``
        seconds, so a frozen Redis costs a request that long, not forever. No blind retries: a
        write whose reply was lost may have run, and sending it again would run it twice (a log
        line, a counter); what must survive a lost reply is made safe to repeat instead."""
        client = redis_urls.client(url, access, decode_responses=True, socket_timeout=socket_timeout,
                                   socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 0))
        return cls(client, prefix, retention_seconds, wait_replicas)

    # -- key names -------------------------------------------------------------------------------
    def _run(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def _state(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}:state"

    def _names(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}:names"

    def _log(self, run_id: str, index: int) -> str:
        return f"{self.prefix}run:{run_id}:log:{index}"

    def _index(self, kind: str = "", value: str = "") -> str:
        return f"{self.prefix}runs" + (f":{kind}:{value}" if kind else "")

    @property
    def leases_key(self) -> str:
        return f"{self.prefix}leases"

    @property
    def queued_key(self) -> str:
        return f"{self.prefix}queued"

    def _keys(self, run_id: str) -> list[str]:
        return [self._run(run_id), self._state(run_id)]

    def hold(self, key: str, owner: str, ttl: float) -> str:
        """Take ``key`` for ``owner`` for ``ttl`` seconds if free, or renew it if ``owner`` holds
        it; answers the holder (``owner`` when it worked)."""
        return str(self._scripts["HOLD"](keys=[key], args=[owner, max(1, int(ttl * 1000))]))

    def let_go(self, key: str, owner: str) -> None:
        """Drop ``key`` if ``owner`` holds it (never someone else's)."""
        self._scripts["RELEASE"](keys=[key], args=[owner])

    def _durable(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script whose effect must survive a failover (a job's start, end or retry): with
        ``wait_replicas``, the answer comes once that many replicas have the write (``WAIT`` on the
        same connection, in the same round trip), so a promoted replica does not forget a job end
        the worker was told is stored. When the replicas do not answer within ``WAIT_MILLISECONDS``
        (none is left to promote, e.g. right after a failover) it goes on, and says so."""
        if not self.wait_replicas:
            return self._scripts[script](keys=keys, args=args)
        pipe = self.r.pipeline(transaction=False)
        self._scripts[script](keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.wait_replicas, WAIT_MILLISECONDS)
        result, replicas = pipe.execute()
        if int(replicas) < self.wait_replicas and time.monotonic() - self._warned_replicas > 60:
            # no replica to fail over to either (after a failover, until one is back): go on
            self._warned_replicas = time.monotonic()
            logger.warning("only {} of {} Redis replicas acknowledged a job's start or end within {} ms",
                           replicas, self.wait_replicas, WAIT_MILLISECONDS)
        return result

    def now(self) -> float:
        """Now by Redis's clock (``TIME``): the one clock of every lease, queue and planning
        deadline, whatever the clocks of the hosts say."""
        seconds, micros = self.r.time()
        return seconds + micros / 1_000_000

    def delivery_key(self, provider: str, delivery: str) -> str:
        """Where the first answer to a webhook delivery is kept (``P delivery:<provider>:<id>``)."""
        return f"{self.prefix}delivery:{provider}:{delivery}"

    def idempotency_key(self, scope: str, key: str) -> str:
        """Where an ``Idempotency-Key`` of the API is kept (``P idem:<scope>:<sha256 of the key>``);
        hashed, so a client's key of any length and alphabet makes one safe key name."""
        return f"{self.prefix}idem:{scope}:{hashlib.sha256(key.encode()).hexdigest()}"

    # -- runs ------------------------------------------------------------------------------------
    @staticmethod
    def new_run_id() -> str:
        """A fresh run id, chosen before the run is written so that an answer can name it even
        when the write's outcome is unknown (a timeout)."""
        return uuid.uuid4().hex[:16]

    def create_run(self, *, repo: str, ref: str, sha: str = "", event: str = "push", clone_url: str | None = None,
                   variables: dict[str, str] | None = None, context: dict[str, Any] | None = None,
                   run_id: str | None = None, trust: RunTrust | None = None, status: str = "queued",
                   scheduling: Scheduling | None = None) -> str:
        """Record a new run as ``queued`` (or ``waiting_approval``) with its trusted facts and index
        it, in one atomic step; returns its id. The same write arriving twice (sent again after a
        lost reply) leaves the run as it is."""
        record = _new_record(run_id or self.new_run_id(), repo=repo, ref=ref, sha=sha, event=event,
                             clone_url=clone_url, variables=variables, context=context, trust=trust, status=status,
                             scheduling=scheduling)
        self._write_run(record, None, None)
        return record["id"]

    def create_run_once(self, once: Once | None, *, repo: str, ref: str, sha: str = "", event: str = "push",
                        clone_url: str | None = None, variables: dict[str, str] | None = None,
                        context: dict[str, Any] | None = None, run_id: str | None = None,
                        trust: RunTrust | None = None, status: str = "queued",
                        scheduling: Scheduling | None = None, alongside: Alongside | None = None) -> Created:
        """Record a new run unless ``once.key`` exists: the key (holding ``once.value``), the
        whole run and ``alongside`` are written in the same atomic step, so a retried request (an
        API call with an ``Idempotency-Key``, a redelivered webhook) finds either both or neither,
        never a run without its key or a key without its run. A repeat gets the first value back.
        ``once`` None: a request that has no such key (a delivery without an id), still with
        ``alongside``."""
        record = _new_record(run_id or self.new_run_id(), repo=repo, ref=ref, sha=sha, event=event,
                             clone_url=clone_url, variables=variables, context=context, trust=trust, status=status,
                             scheduling=scheduling)
        return self._write_run(record, once, alongside)

    def _write_run(self, record: dict[str, str], once: Once | None, alongside: Alongside | None) -> Created:
        """``CREATE_RUN``: the record, its four index entries, ``once`` and ``alongside``, in one script."""
        run_id = record["id"]
        alongside = alongside or Alongside()
        keys = [self._run(run_id), *self._index_keys(record["repo"], record["ref"], record["status"])]
        # the record as one JSON argument (kept as text, ensure_ascii=False: a string Redis cannot
        # hold fails here as it did field by field); cjson gives its strings back byte for byte
        args: list[Any] = [run_id, "", self.retention + 86400, "", 0, "", alongside.maxlen,
                           json.dumps([[name, amount] for _, name, amount in alongside.counts]),
                           json.dumps(record, ensure_ascii=False)]
        if once is not None:
            keys.append(once.key)
            args[3:5] = [once.value, once.ttl]
        if alongside.stream:
            keys.append(alongside.stream)
            args[5] = json.dumps([text for pair in alongside.entry for text in pair])
        keys += [key for key, _, _ in alongside.counts]
        new, first, entry = self._scripts["CREATE_RUN"](keys=keys, args=args)
        return Created(run_id if new else None, first or "", bool(new), entry or "")

    def _index_keys(self, repo: str, ref: str, status: str) -> list[str]:
        return [self._index(), self._index("repo", repo), self._index("ref", f"{repo}:{ref}"),
                self._index("status", status)]

    def _reindex_status(self, run_id: str, old: str, new: str, pipe: Any) -> None:
        score = self.r.zscore(self._index(), run_id) or time.time()
        pipe.zrem(self._index("status", old), run_id)
        pipe.zadd(self._index("status", new), {run_id: score})
        pipe.expire(self._index("status", new), self.retention + 86400)

    def set_plan(self, run_id: str, plan: Plan, sha: str | None = None) -> list[int]:
        """Persist the planned jobs and their graph, then decide the first wave; returns it."""
        nodes = build_graph(plan)
        reverse = dependents(nodes)
        state: dict[str, str] = {"c.active": "0", "c.failed": "0", "c.blocked": "0"}
        names: dict[str, int] = {}
        for node in nodes:
            i = node.index
            state.update({f"n{i}.kind": node.kind, f"n{i}.rem": str(len(node.preds)), f"n{i}.fp": "0",
                          f"n{i}.np": "0", f"n{i}.deps": ",".join(map(str, reverse[i])), f"n{i}.st": "created"})
            if node.is_job:
                job = plan.jobs[i]
                names[job.name] = i
                state.update({f"n{i}.name": job.name, f"n{i}.when": job.when, f"n{i}.att": "1",
                              f"n{i}.needs": "1" if node.uses_needs else "0",
                              f"n{i}.om": "1" if node.optional_manual else "0",
                              f"n{i}.spec": json.dumps(job.to_dict()), f"n{i}.attempts": "[]",
                              **_admission_fields(i, job)})
        pipe = self.r.pipeline()
        pipe.hset(self._state(run_id), mapping=state)
        if names:
            pipe.hset(self._names(run_id), mapping=names)
        fields = {"node_count": len(nodes), "job_count": len(plan.jobs), "stages": json.dumps(plan.stages),
                  "pipeline_variables": json.dumps(plan.variables), "name": plan.name or "",
                  "uses_artifacts": "1" if any(job.artifacts for job in plan.jobs) else "0",
                  "interruptible": "1" if any(job.interruptible for job in plan.jobs) else "0"}
        if sha:
            fields["sha"] = sha
        pipe.hset(self._run(run_id), mapping=fields)
        pipe.execute()
        result = self._scripts["START_RUN"](keys=self._keys(run_id), args=[now_iso()])
        self._after_status_change(run_id, "queued", result[0])
        return [int(i) for i in result[1:]]

    def fail_run(self, run_id: str, error: str, status: str = "failed") -> None:
        """End a run that could not be planned (``error`` says why, e.g. FILE:LINE:COL lines)."""
        old = self.r.hget(self._run(run_id), "status")
        if old in TERMINAL_RUN:
            return
        self.r.hset(self._run(run_id), mapping={"status": status, "error": error, "finished_at": now_iso()})
        self._after_status_change(run_id, old or "queued", status)

    def _after_status_change(self, run_id: str, old: str, new: str) -> None:
        if old == new:
            return
        pipe = self.r.pipeline()
        self._reindex_status(run_id, old, new, pipe)
        if new in TERMINAL_RUN:
            for key in [*self._keys(run_id), self._names(run_id)]:
                pipe.expire(key, self.retention)
            count = int(self.r.hget(self._run(run_id), "job_count") or 0)
            for i in range(count):
                pipe.expire(self._log(run_id, i), self.retention)
        pipe.execute()

    def stages(self, run_id: str) -> list[str]:
        """The planned stages of the run, in order."""
        return json.loads(self.r.hget(self._run(run_id), "stages") or "[]")

    def claim_planning(self, run_id: str, owner: str, ttl: int = 120) -> bool:
        """Only one planner plans a run. The claim is re-entrant: its ``owner`` (the Celery task
        id, which a retry keeps) takes it again and renews it; it expires so that a crashed
        planner is replaced."""
        return self.hold(f"{self._run(run_id)}:planning", owner, ttl) == owner

    def release_planning(self, run_id: str, owner: str) -> None:
        """Drop the claim if ``owner`` still holds it (never someone else's)."""
        self.let_go(f"{self._run(run_id)}:planning", owner)

    def note_plan_attempt(self, run_id: str) -> int:
        """Count one more planner that took the run; returns the count (``plan_attempts``)."""
        return int(self.r.hincrby(self._run(run_id), "plan_attempts", 1))

    def note_plan_error(self, run_id: str, reason: str) -> None:
        """Keep why the last planning attempt failed, for the run's error if none succeeds."""
        self.r.hset(self._run(run_id), "plan_error", reason[:MAX_PLAN_ERROR])

    def note_replan(self, run_id: str, now: float | None = None) -> None:
        """The sweeper sent the run to planning again now (``unplanned`` waits before the next)."""
        self.r.hset(self._run(run_id), "plan_sent", repr(now or self.now()))

    def unplanned(self, older_than: float, now: float | None = None, limit: int = 100) -> list[Unplanned]:
        """Runs still ``queued`` after ``older_than`` seconds with nobody planning them, and not
        sent to planning again within ``older_than`` seconds either (one message per period, even
        while no planner is there to take it)."""
        now = now or self.now()
        candidates = self.r.zrangebyscore(self._index("status", "queued"), "-inf", now - older_than,
                                          start=0, num=limit)
        pipe = self.r.pipeline(transaction=False)
        for run_id in candidates:
            pipe.hmget(self._run(run_id), ["status", "plan_sent", "plan_attempts", "plan_error"])
            pipe.exists(f"{self._run(run_id)}:planning")
        answers = pipe.execute()
        found = []
        for k, run_id in enumerate(candidates):
            (status, sent, attempts, error), claimed = answers[2 * k], answers[2 * k + 1]
            if status == "queued" and not claimed and float(sent or 0) <= now - older_than:
                found.append(Unplanned(run_id, int(attempts or 0), error or None))
        return found

    def run_status(self, run_id: str) -> str | None:
        return self.r.hget(self._run(run_id), "status")

    def is_canceling(self, run_id: str, index: int | None = None) -> bool:
        """Was the run canceled (or, with ``index``, that one job)? Polled by running jobs."""
        if index is None:
            return self.r.hget(self._run(run_id), "canceling") == "1"
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self._run(run_id), "canceling")
        pipe.hget(self._state(run_id), f"n{index}.cancel")
        return "1" in pipe.execute()

    def get_run(self, run_id: str, with_jobs: bool = True) -> RunRecord | None:
        pipe = self.r.pipeline()
        pipe.hgetall(self._run(run_id))
        if with_jobs:
            pipe.hgetall(self._state(run_id))
        results = pipe.execute()
        raw = results[0]
        if not raw:
            return None
        record = self._run_record(raw)
        if with_jobs:
            state = results[1]
            count = int(raw.get("job_count") or 0)
            record.jobs = [self._job_from_state(state, i) for i in range(count)]
        return record

    def job_start(self, run_id: str, index: int) -> tuple[JobState | None, RunRecord | None, dict[str, str]]:
        """What a worker reads to start a job, in one round trip: the job, its run (without the
        other jobs) and the plan's pipeline variables."""
        pipe = self.r.pipeline(transaction=False)
        fields = self._job_fields([index])
        pipe.hmget(self._state(run_id), fields)
        pipe.hgetall(self._run(run_id))
        values, raw = pipe.execute()
        if not raw:
            return self._jobs_from_values([index], fields, values)[0], None, {}
        return (self._jobs_from_values([index], fields, values)[0], self._run_record(raw),
                json.loads(raw.get("pipeline_variables") or "{}"))

    def _run_record(self, raw: dict[str, str]) -> RunRecord:
        return RunRecord(
            id=raw["id"], status=raw.get("status", "queued"), repo=raw.get("repo", ""), ref=raw.get("ref", ""),
            sha=raw.get("sha", ""), event=raw.get("event", ""), created_at=raw.get("created_at", ""),
            started_at=_opt(raw.get("started_at")), finished_at=_opt(raw.get("finished_at")),
            error=_opt(raw.get("error")), clone_url=_opt(raw.get("clone_url")),
            variables=json.loads(raw.get("variables") or "{}"), context=json.loads(raw.get("context") or "{}"),
            uses_artifacts=raw.get("uses_artifacts") == "1",
            protected=raw.get("protected") == "1", fork=raw.get("fork") == "1", registered=raw.get("registered") == "1",
            protected_workers_only=raw.get("protected_workers_only") == "1",
            grants=tuple(Grant.from_dict(g) for g in json.loads(raw.get("grants") or "[]")),
            approved_by=_opt(raw.get("approved_by")), approved_at=_opt(raw.get("approved_at")),
            priority=int(raw.get("priority") or 0),
        )

    @staticmethod
    def _job_from_state(state: dict[str, str], i: int) -> JobState:
        def f(prop: str) -> str | None:
            return _opt(state.get(f"n{i}.{prop}"))

        spec = json.loads(f("spec") or "{}")
        exit_code = f("exit")
        return JobState(
            index=i, name=f("name") or "", stage=spec.get("stage", ""), status=f("st") or "created",
            when=spec.get("when", "on_success"), allow_failure=spec.get("allow_failure", False),
            attempt=int(f("att") or 1), worker=f("worker"), exit_code=int(exit_code) if exit_code else None,
            failure_reason=f("reason"), queue=f("queue"), started_at=f("started"), finished_at=f("finished"),
            attempts=json.loads(f("attempts") or "[]"), spec=spec,
            artifacts=json.loads(f("artifacts") or "null"), test_summary=json.loads(f("tests") or "null"),
        )

    def job(self, run_id: str, index: int) -> JobState | None:
        return self.jobs(run_id, [index])[0]

    def jobs(self, run_id: str, indexes: list[int]) -> list[JobState | None]:
        """Several jobs of a run in one round trip (None for an index the run does not have)."""
        fields = self._job_fields(indexes)
        values = self.r.hmget(self._state(run_id), fields) if fields else []
        return self._jobs_from_values(indexes, fields, values)

    @staticmethod
    def _job_fields(indexes: list[int]) -> list[str]:
        return [f"n{i}.{p}" for i in indexes for p in _JOB_PROPS]

    def _jobs_from_values(self, indexes: list[int], fields: list[str],
                          values: list[str | None]) -> list[JobState | None]:
        props = _JOB_PROPS
        found: list[JobState | None] = []
        for k, index in enumerate(indexes):
            chunk = dict(zip(fields[k * len(props):(k + 1) * len(props)],
                             values[k * len(props):(k + 1) * len(props)], strict=True))
            if chunk[f"n{index}.name"] is None:
                found.append(None)
            else:
                found.append(self._job_from_state({f: v for f, v in chunk.items() if v is not None}, index))
        return found

    def job_index(self, run_id: str, name: str) -> int | None:
        value = self.r.hget(self._names(run_id), name)
        return int(value) if value is not None else None

    def list_runs(self, *, repo: str | None = None, ref: str | None = None, status: str | None = None,
                  cursor: float | None = None, limit: int = 20) -> tuple[list[RunRecord], float | None]:
        """Runs newest first, filtered by one index; ``cursor`` continues a previous page."""
        if status:
            key = self._index("status", status)
        elif repo and ref:
            key = self._index("ref", f"{repo}:{ref}")
        elif repo:
            key = self._index("repo", repo)
        else:
            key = self._index()
        high: float | str = f"({cursor}" if cursor is not None else "+inf"
        entries = self.r.zrevrangebyscore(key, high, "-inf", start=0, num=limit + 1, withscores=True)
        runs = []
        for run_id, _ in entries[:limit]:
            record = self.get_run(run_id, with_jobs=False)
            if record and (not repo or record.repo == repo) and (not ref or record.ref == ref):
                runs.append(record)
        next_cursor = entries[limit - 1][1] if len(entries) > limit else None
        return runs, next_cursor

    # -- job transitions (fenced by attempt) ---------------------------------------------------------
    def begin_job(self, run_id: str, index: int, attempt: int, worker: str, lease_seconds: float,
                  token: str = "") -> Transition:
        """The worker starts an attempt and takes its lease: ``ok``, ``stale`` (drop the message)
        or ``canceled``. Calling again with the same ``token`` (the answer was lost with the
        connection) answers ``ok`` again."""
        token = token or uuid.uuid4().hex
        member = f"{run_id}|{index}|{attempt}"
        result = self._durable("BEGIN_JOB", keys=[*self._keys(run_id), self.leases_key, self.queued_key],
                                            args=[index, attempt, worker, now_iso(), lease_seconds, token])
        if result[0] == "ok":
            return Transition("ok", [])
        if result[0] == "canceled":
            self._after_status_change(run_id, "running", result[1])
            self.r.zrem(self.queued_key, member)
            return Transition("canceled", [], result[1])
        return Transition("stale", [])

    def renew_lease(self, run_id: str, index: int, attempt: int, lease_seconds: float) -> bool:
        """Extend a running attempt's lease (Redis's clock); False when the attempt no longer
        holds one."""
        return bool(self._scripts["RENEW_LEASE"](keys=[self.leases_key],
                                                 args=[f"{run_id}|{index}|{attempt}", lease_seconds]))

    def extend_leases(self, lease_seconds: float) -> int:
        """Give every running attempt at least ``lease_seconds`` from now to renew (after Redis was
        away, nobody could renew); returns how many leases were extended."""
        return int(self._scripts["EXTEND_LEASES"](keys=[self.leases_key], args=[lease_seconds]))

    def finish_job(self, run_id: str, index: int, attempt: int, status: str, *, allowed: bool = False,
                   fields: dict[str, Any] | None = None, attempt_record: dict[str, Any] | None = None) -> Transition:
        """Record the final result of an attempt and run the barrier; returns the jobs now ready."""
        old = self.r.hget(self._run(run_id), "status") or "running"
        result = self._durable("FINISH_JOB",
            keys=self._keys(run_id),
            args=[index, attempt, status, "1" if allowed else "0",
                  json.dumps({k: v for k, v in (fields or {}).items() if v is not None}),
                  json.dumps(attempt_record) if attempt_record else "", now_iso()])
        if result[0] == "stale":
            return Transition("stale", [])
        member = f"{run_id}|{index}|{attempt}"
        pipe = self.r.pipeline()
        pipe.zrem(self.leases_key, member)
        pipe.zrem(self.queued_key, member)
        pipe.execute()
        self._after_status_change(run_id, old, result[0])
        return Transition("ok", [int(i) for i in result[1:]], result[0])

    def requeue_job(self, run_id: str, index: int, attempt: int, attempt_record: dict[str, Any]) -> int | None:
        """Start the next attempt of a job (retry); returns its number, None if not allowed."""
        result = self._durable("REQUEUE_JOB", keys=self._keys(run_id),
                                              args=[index, attempt, json.dumps(attempt_record), now_iso()])
        if result[0] != "ok":
            return None
        self.r.zrem(self.leases_key, f"{run_id}|{index}|{attempt}")
        return int(result[1])

    def trim_indexes(self, now: float | None = None) -> int:
        """Drop index entries of runs older than the retention (their keys have expired)."""
        cutoff = (now or self.now()) - self.retention
        removed = 0
        for key in self.r.scan_iter(f"{self._index()}*", count=1000):
            if self.r.type(key) == "zset":
                removed += self.r.zremrangebyscore(key, "-inf", cutoff)
        return removed

    @property
    def unsent_key(self) -> str:
        return f"{self.prefix}unsent"

    def mark_queued(self, attempts: list[tuple[str, int, int, str]], queue_timeout: float) -> None:
        """Remember that messages for these attempts ``(run, index, attempt, queue)`` are in their
        queues (for stuck detection); they are no longer "unsent" (the scripts note every job they
        make pending as unsent). One round trip for a whole wave."""
        if not attempts:
            return
        pipe = self.r.pipeline()
        for run_id, index, _, queue in attempts:
            pipe.hset(self._state(run_id), f"n{index}.queue", queue)
        members = [f"{run_id}|{index}|{attempt}" for run_id, index, attempt, _ in attempts]
        self._scripts["MARK_QUEUED"](keys=[self.queued_key, self.unsent_key], args=[queue_timeout, *members],
                                     client=pipe)
        pipe.execute()

    def mark_unsent(self, attempts: list[tuple[str, int, int, str]]) -> None:
        """Undo ``mark_queued`` for a wave whose messages could not be published: unsent again,
        so the sweeper sends them (instead of their waiting for the stuck timeout)."""
        if not attempts:
            return
        now = self.now()  # the sweeper compares it with Redis's clock
        pipe = self.r.pipeline()
        for run_id, index, attempt, _ in attempts:
            member = f"{run_id}|{index}|{attempt}"
            pipe.zrem(self.queued_key, member)
            pipe.zadd(self.unsent_key, {member: now})
        pipe.execute()

    def waiting_for_a_group(self, run_id: str, index: int, attempt: int) -> None:
        """The attempt waits in a resource group's line: it is not unsent, nothing is lost."""
        self.r.zrem(self.unsent_key, f"{run_id}|{index}|{attempt}")

    def play_job(self, run_id: str, index: int) -> int:
        """Start a manual job; returns the attempt to dispatch. Raises StoreError otherwise."""
        old = self.r.hget(self._run(run_id), "status")
        result = self._scripts["PLAY_JOB"](keys=self._keys(run_id), args=[index, now_iso()])
        if result[0] != "ok":
            raise StoreError(f"job is {result[1] if len(result) > 1 else result[0]}, not manual")
        if old in TERMINAL_RUN:  # a finished run lives again: back in the running index, no expiry
            self._after_status_change(run_id, old, "running")
            count = int(self.r.hget(self._run(run_id), "job_count") or 0)
            pipe = self.r.pipeline()
            for key in [*self._keys(run_id), self._names(run_id), *(self._log(run_id, i) for i in range(count))]:
                pipe.persist(key)
            pipe.execute()
        return int(result[1])

    def approve_run(self, run_id: str, by: str) -> None:
        """Let a run that waits for approval (a fork's merge request) go on: it becomes ``queued``
        with ``approved_by`` / ``approved_at``, in one atomic step, so two approvals (or an
        approval racing a cancel) change it once. The caller sends it to planning. Raises
        StoreError when the run does not exist or does not wait."""
        result = self._scripts["APPROVE_RUN"](
            keys=[self._run(run_id), self._index("status", "waiting_approval"), self._index("status", "queued"),
                  self._index()],
            args=[by, now_iso(), self.retention + 86400])
        if result == "missing":
            raise StoreError(f"no run {run_id}")
        if result != "approved":
            raise StoreError(f"run {run_id} is {result}, not waiting for approval")

    def cancel_run(self, run_id: str) -> tuple[str, list[int]]:
        """Cancel a run; returns its status and the indexes of jobs still running."""
        old = self.r.hget(self._run(run_id), "status")
        if old is None:
            raise StoreError(f"no run {run_id}")
        count = int(self.r.hget(self._run(run_id), "job_count") or 0)
        if old in UNPLANNED_RUN:
            self.r.hset(self._run(run_id), "canceling", "1")
            self.fail_run(run_id, "canceled before it was planned", status="canceled")
            return "canceled", []
        result = self._scripts["CANCEL_RUN"](keys=self._keys(run_id), args=[now_iso(), count])
        self._after_status_change(run_id, old, result[0])
        return result[0], [int(i) for i in result[1:]]

    def retry_run(self, run_id: str) -> RetryResult:
        """GitLab's "retry failed jobs": every failed or canceled job runs again as a new attempt
        (its earlier attempts kept), what depends on it and has not run is decided again, jobs that
        succeeded keep their result; the run is ``running`` again and kept (no TTL). Returns the
        jobs retried and the jobs ready now (to dispatch). Raises StoreError when there is nothing
        to retry, the run is still queued or still being canceled, or it does not exist."""
        raw = self.r.hmget(self._run(run_id), ["status", "stages", "job_count"])
        if raw[0] is None:
            raise StoreError(f"no run {run_id}")
        if raw[0] in UNPLANNED_RUN:
            raise StoreError(f"run {run_id} has not been planned yet ({raw[0]}), nothing to retry")
        if raw[2] is None:  # ended before it had jobs: an invalid pipeline file, no pipeline, a checkout error
            raise StoreError(f"run {run_id} is {raw[0]} without jobs, nothing to retry")
        job_count = int(raw[2])
        specs = self.r.hmget(self._state(run_id), [f"n{i}.spec" for i in range(job_count)]) if job_count else []
        plan = Plan(stages=json.loads(raw[1] or "[]"), jobs=[Job.from_dict(json.loads(s or "{}")) for s in specs])
        nodes = build_graph(plan)
        reverse = dependents(nodes)
        graph = {"preds": [node.preds for node in nodes], "deps": [reverse[node.index] for node in nodes]}
        keys = [*self._keys(run_id), self._names(run_id), *(self._log(run_id, i) for i in range(job_count))]
        result = self._scripts["RETRY_RUN"](keys=keys, args=[now_iso(), json.dumps(graph)])
        messages = {
            "missing": f"no run {run_id}",
            "queued": f"run {run_id} has not been planned yet, nothing to retry",
            "canceling": f"run {run_id} is still being canceled; retry it once its jobs stopped",
            "nothing": f"run {run_id} has no failed or canceled job to retry",
            "graph": f"run {run_id}: its stored graph does not match its jobs",
        }
        if result[0] in messages and len(result) == 1:
            raise StoreError(messages[result[0]])
        old, new, count = result[0], result[1], int(result[2])
        retried = [int(i) for i in result[3:3 + count]]
        ready = [int(i) for i in result[3 + count:]]
        if old != new:
            pipe = self.r.pipeline()
            self._reindex_status(run_id, old, new, pipe)
            pipe.execute()
        if new in TERMINAL_RUN:  # settled at once (e.g. only optional manual jobs to play again)
            pipe = self.r.pipeline()
            for key in keys:
                pipe.expire(key, self.retention)
            pipe.execute()
        return RetryResult(new, retried, ready)

    def _handback_key(self, instance: str) -> str:
        return f"{self.prefix}worker:{instance}:handback"

    def request_handback(self, instance: str, ttl: int = 3600) -> None:
        """Ask every job running in the worker process ``instance`` (its instance id, never its
        name: a restarted worker of the same name must not inherit the flag) to stop and be
        handed back (the worker is shutting down and its grace is over)."""
        self.r.set(self._handback_key(instance), "1", ex=ttl)

    def stop_requested(self, run_id: str, index: int, instance: str) -> tuple[bool, bool]:
        """(canceled, hand back): what a running job polls, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self._run(run_id), "canceling")
        pipe.hget(self._state(run_id), f"n{index}.cancel")
        pipe.exists(self._handback_key(instance))
        run_flag, job_flag, handback = pipe.execute()
        return "1" in (run_flag, job_flag), bool(handback)

    def cancel_jobs(self, run_id: str, indexes: list[int]) -> tuple[str, list[int]]:
        """Cancel some jobs of a run (not the run); returns its status and the jobs still running."""
        if not indexes:
            return self.run_status(run_id) or "", []
        old = self.r.hget(self._run(run_id), "status") or "running"
        result = self._scripts["CANCEL_JOBS"](keys=self._keys(run_id), args=[now_iso(), *indexes])
        self._after_status_change(run_id, old, result[0])
        return result[0], [int(i) for i in result[1:]]

    def superseded(self, run_id: str) -> list[str]:
        """Older runs of the same repository and ref that are still going and have an
        ``interruptible`` job (for auto-cancel): a busy ref's planner reads only those whole."""
        raw = self.r.hmget(self._run(run_id), ["repo", "ref"])
        if raw[0] is None:
            return []
        key = self._index("ref", f"{raw[0]}:{raw[1]}")
        score = self.r.zscore(key, run_id)
        if score is None:
            return []
        older = self.r.zrevrangebyscore(key, f"({score}", "-inf", start=0, num=50)
        pipe = self.r.pipeline(transaction=False)
        for other in older:
            pipe.hmget(self._run(other), ["status", "interruptible"])
        return [other for other, (status, interruptible) in zip(older, pipe.execute(), strict=True)
                if status == "running" and interruptible != "0"]  # unset: planned before the flag existed

    # -- logs ----------------------------------------------------------------------------------------
    def append_log(self, run_id: str, index: int, lines: list[dict[str, Any]], maxlen: int = 200_000) -> None:
        """Append log lines (dicts of the job log's fields) in one round trip."""
        if not lines:
            return
        pipe = self.r.pipeline(transaction=False)
        key = self._log(run_id, index)
        for line in lines:
            pipe.xadd(key, {k: str(v) for k, v in line.items()}, maxlen=maxlen, approximate=True)
        pipe.execute()

    def read_log(self, run_id: str, index: int, after: str = "-", count: int = 10_000) -> list[tuple[str, dict]]:
        """Log entries after stream id ``after`` (exclusive; ``-`` from the start). Read from the
        start, a log whose head the stream's cap (``CIQ_LOG_STREAM_MAXLEN``) trimmed begins with a
        line that says so, where it was cut."""
        start = "-" if after == "-" else f"({after}"
        entries = self.r.xrange(self._log(run_id, index), start, "+", count=count)
        if after == "-" and entries:
            first = entries[0][1]
            dropped = int(first.get("n") or 1) - 1
            if dropped > 0:
                marker = {**first, "n": "0", "stream": "system",
                          "text": f"[ci-queue] the first {dropped} lines of this log were dropped: a job log keeps "
                                  "its last lines only (CIQ_LOG_STREAM_MAXLEN)"}
                entries = [("0-1", marker), *entries]
        return entries

    # -- sweeper queries ---------------------------------------------------------------------------------
    def expired(self, key: str, now: float | None = None, limit: int = 100) -> list[tuple[str, int, int]]:
        """Members of the lease or queue set whose deadline passed: (run, index, attempt)."""
        members = self.r.zrangebyscore(key, "-inf", now or self.now(), start=0, num=limit)
        result = []
        for member in members:
            run_id, index, attempt = member.rsplit("|", 2)
            result.append((run_id, int(index), int(attempt)))
        return result

    def forget(self, key: str, run_id: str, index: int, attempt: int) -> None:
        self.r.zrem(key, f"{run_id}|{index}|{attempt}")


def store_from_settings(settings: Any) -> Store:
    """The store the settings point at: ``CIQ_STATE_URL``, else the broker's Redis."""
    url = settings.state_url or settings.redis_url or "redis://127.0.0.1:6379/0"
    return Store.from_url(url, settings.key_prefix, settings.retention_days * 86400,
                          socket_timeout=settings.redis_socket_timeout,
                          access=redis_urls.Access.from_settings(settings),
                          wait_replicas=settings.redis_wait_replicas)
