"""Settings of ci-queue, read once from ``CIQ_*`` environment variables.

Every tunable of the system lives here, with a safe default, so that an operator finds all of
them in one place (the README lists them) and code never reads ``os.environ`` on its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache

PREFIX = "CIQ_"
DOCKER_MIN_MEMORY = 6 * 1024 * 1024  # the smallest memory limit Docker accepts


class SettingsError(ValueError):
    """A ``CIQ_*`` variable holds a value of the wrong kind."""


@dataclass(frozen=True)
class Settings:
    """All configuration; field ``x_y`` is read from ``CIQ_X_Y``."""

    log_format: str = "auto"  # auto (human on a terminal, JSON otherwise) | human | json
    log_level: str = "INFO"
    pipeline_max_bytes: int = 4 * 1024 * 1024  # larger pipeline files are refused
    default_branch: str = "main"  # used when an event does not say which branch is the default

    # -- the engine: broker, state, leases ------------------------------------------------------
    redis_url: str = ""  # broker; empty: the standalone mode starts a local Redis
    state_url: str = ""  # run / job / log state; empty: the broker's Redis
    key_prefix: str = "ciq:"  # every state key starts with it (tests use their own)
    redis_sentinel_master: str = "mymaster"  # the primary's name, for sentinel:// URLs
    redis_sentinel_password: str = ""  # the Sentinels' own password (the primary's is the URL's)
    redis_tls_ca: str = ""  # rediss://: CA file (PEM) the server's certificate is checked against; empty: the system's
    redis_tls_cert: str = ""  # rediss://: client certificate (PEM), when the server asks for one
    redis_tls_key: str = ""  # rediss://: its private key (PEM); empty: in CIQ_REDIS_TLS_CERT
    redis_wait_replicas: int = 0  # job starts and ends wait until this many replicas have them (WAIT)
    redis_socket_timeout: float = 5.0  # connect / read timeout of the state client and the web app's broker
    retention_days: float = 30.0  # finished runs and their logs expire after this
    job_lease_seconds: int = 60  # a running job's worker renews its lease; lapsed: re-queued
    queue_timeout_seconds: int = 3600  # a job no worker takes for this long fails as `stuck`
    system_failure_retries: int = 2  # new attempts after a lost worker (runner_system_failure)
    log_stream_maxlen: int = 200_000  # lines kept per job log stream (capped)
    max_job_timeout: int = 24 * 3600  # longest `timeout:` a job may ask for (sizes the visibility timeout)
    shutdown_grace_seconds: int = 300  # a stopping worker lets running jobs finish this long
    auto_cancel: bool = True  # a newer run of a ref cancels the interruptible jobs of older ones
    state_outage_seconds: int = 600  # a worker retries recording a job's end this long while Redis is away

    # -- webhooks -----------------------------------------------------------------------------
    repos_file: str = ""  # the repository registry; empty: configs/repos.yml (CIQ_REPOS_FILE)
    max_webhook_bytes: int = 25 * 1024 * 1024  # larger deliveries get 413 (GitHub's maximum payload)

    # -- the web app and the API ----------------------------------------------------------------
    api_tokens: str = ""  # comma-separated bearer tokens for /api/v1 (full power: every scope)
    tokens_file: str = ""  # scoped tokens: names, scopes, repositories and SHA-256 hashes (ci-queue token create)
    audit_maxlen: int = 100_000  # records the audit stream keeps (XADD MAXLEN ~)
    allow_local_repos: bool = False  # file:// URLs and paths as clone URLs (standalone: on; serve: off)
    clone_allow_hosts: str = ""  # comma list of names (globs), addresses, CIDRs a clone URL may reach
    public_url: str = ""  # how users reach the web app (links in statuses); empty: the request's
    server_url: str = "http://127.0.0.1:8080"  # where the CLI client and the workers find the web app
    api_token: str = ""  # the CLI client's token (CIQ_API_TOKEN); else the stored one
    secret_key: str = ""  # signs the web pages' session cookie; empty: one stored in $XDG_CONFIG_HOME/ci-queue/
    public_read: bool = False  # anonymous visitors may read runs, logs and the farm (never act)

    # -- reporting back: commit statuses and chat (ci_queue/reporters) ---------------------------
    github_api_url: str = "https://api.github.com"  # GitHub Enterprise: https://HOST/api/v3
    gitlab_api_url: str = "https://gitlab.com/api/v4"  # self-hosted GitLab: https://HOST/api/v4
    gitea_api_url: str = ""  # e.g. https://HOST/api/v1; required for Gitea repositories
    slack_webhook_url: str = ""  # Slack-compatible incoming webhook; empty: no chat notifications
    status_context_prefix: str = "ci-queue"  # commit status contexts: <prefix>/pipeline, <prefix>/<job>

    # -- executing jobs on a build host (workers/) ----------------------------------------------
    executor: str = "auto"  # auto (docker when the job has an image) | shell | docker
    default_job_timeout: int = 3600  # seconds, for jobs without `timeout:`
    after_script_timeout: int = 300  # seconds; after_script has its own budget, as in GitLab
    kill_grace_seconds: float = 10.0  # SIGTERM, then SIGKILL this much later
    max_log_bytes: int = 4 * 1024 * 1024  # per job log; the rest is drained, not stored
    workspace_dir: str = ""  # per-job workspaces; empty: <temp dir>/ci-queue/workspaces
    keep_workspaces: bool = False  # keep a job's workspace after it ends (debugging)
    git_cache_dir: str = ""  # bare mirrors shared by the jobs of a host; empty: <temp dir>/ci-queue/git
    docker_network: str = "bridge"  # network mode of job containers (tests use none or host)
    # hardening of every container of a job, services included (workers/runners/container_policy.py)
    docker_privileged: bool = False  # privileged containers (Docker-in-Docker): root on the host; trusted jobs only
    docker_pids_limit: int = 4096  # processes and threads per container; 0: no limit
    docker_memory: str = ""  # memory per container (512m, 2g); swap cannot add to it; empty: no limit
    docker_cpus: float = 0.0  # CPUs per container (1.5); 0: no limit
    docker_volumes: str = ""  # GitLab's `volumes`, comma-separated; the engine's socket is always refused
    service_wait_seconds: int = 30  # how long a job waits for each of its `services:` to listen (0: not at all)
    secrets_file: str = ""  # KEY=VALUE lines; jobs name the secrets they need (and must be granted)
    worker_protected: bool = False  # `ci-queue worker --protected`: only protected refs of registered repos
    shell_allow_forks: bool = False  # the shell executor runs merge requests from forks too (off: refused)
    # shell jobs run as these unprivileged users (names, `ciq-job{1..4}`), one job per user at a
    # time; the worker must be root. Empty: as the worker's own user (workers/jobusers.py)
    shell_user: str = ""
    cache_dir: str = ""  # a host's local copies of caches; empty: <temp dir>/ci-queue/cache
    cache_local_bytes: int = 10 * 1024**3  # the local cache copies a host keeps at most (oldest go first)

    # -- artifacts and caches: the object store (ci_queue/objects; only the web app uses it) -----
    artifacts_url: str = ""  # file:///dir or s3://bucket/prefix; empty: `serve` names a directory at start
    s3_endpoint_url: str = ""  # MinIO, Ceph RGW...; empty: AWS's (or AWS_ENDPOINT_URL)
    s3_region: str = ""  # empty: boto3's default (AWS_DEFAULT_REGION, ~/.aws/config)
    max_artifact_bytes: int = 1024**3  # per job; over it the job fails with `artifacts_too_large`
    artifacts_expire_in: str = "30 days"  # `artifacts:expire_in` of jobs that do not say
    cache_expire_in: str = "14 days"  # a cache nobody pushed or pulled for this long is removed

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, type(f.default))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse values that would only fail later, far from their cause."""
        if self.log_format not in ("auto", "human", "json"):
            raise SettingsError(f"CIQ_LOG_FORMAT must be auto, human or json, not {self.log_format!r}")
        if self.pipeline_max_bytes <= 0:
            raise SettingsError("CIQ_PIPELINE_MAX_BYTES must be positive")
        if self.executor not in ("auto", "shell", "docker"):
            raise SettingsError(f"CIQ_EXECUTOR must be auto, shell or docker, not {self.executor!r}")
        for name in ("default_job_timeout", "after_script_timeout", "max_log_bytes", "redis_socket_timeout",
                     "max_artifact_bytes", "audit_maxlen"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be positive")
        for name in ("redis_tls_ca", "redis_tls_cert", "redis_tls_key"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):  # else every connection fails with a vaguer OSError
                raise SettingsError(f"{PREFIX}{name.upper()}: no such file: {path}")
        if self.redis_tls_key and not self.redis_tls_cert:
            raise SettingsError("CIQ_REDIS_TLS_KEY is the key of CIQ_REDIS_TLS_CERT, which is not set")
        from ci_queue.clone_policy import parse_allow_list
        from ci_queue.pipeline.durations import parse_duration

        try:
            parse_allow_list(self.clone_allow_hosts)
        except ValueError as exc:
            raise SettingsError(f"CIQ_CLONE_ALLOW_HOSTS: {exc}") from None

        self._check_docker_limits()
        for name in ("artifacts_expire_in", "cache_expire_in"):
            try:
                parse_duration(getattr(self, name))
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}{name.upper()}: {exc}") from None


    def _check_docker_limits(self) -> None:
        from ci_queue.sizes import parse_size

        if self.docker_memory.strip():
            try:
                memory = parse_size(self.docker_memory)
            except ValueError as exc:
                raise SettingsError(f"CIQ_DOCKER_MEMORY: {exc}") from None
            if memory < DOCKER_MIN_MEMORY:
                raise SettingsError("CIQ_DOCKER_MEMORY must be at least 6m (Docker's minimum), or empty for no limit")
        if self.docker_cpus < 0:
            raise SettingsError("CIQ_DOCKER_CPUS must be positive, or 0 for no limit")
        if self.docker_pids_limit < 0:
            raise SettingsError("CIQ_DOCKER_PIDS_LIMIT must be positive, or 0 for no limit")


def _convert(name: str, raw: str, kind: type) -> object:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{PREFIX}{name.upper()} must be a boolean (1/0, true/false), not {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{PREFIX}{name.upper()} must be a number, not {raw!r}") from None
    return raw


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()
