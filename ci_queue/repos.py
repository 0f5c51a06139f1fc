"""The registry of repositories this farm builds: ``configs/repos.yml`` (path: ``CIQ_REPOS_FILE``).

Only registered repositories are built; a hook for any other one gets a 404 and leaves nothing
behind. The file is validated once, at start, and every problem is reported as
``FILE:LINE:COL: message`` (all of them at once)::

    repositories:
      - name: octo-org/hello            # as the forge names it (GitLab: group/sub/project)
        provider: github                # github | gitlab | gitea | generic
        clone_url: file:///srv/git/hello.git   # optional; default: the payload's
        pipeline: .ci-queue.yml         # optional; default: .ci-queue.yml, else .gitlab-ci.yml
        secret_env: CIQ_GITHUB_SECRET   # optional; default per provider (below)
        status_token_env: CIQ_GITHUB_TOKEN     # optional; default per provider (below)
        notify: on_failure              # optional: always | on_failure | on_change | never
        default_branch: main            # optional; used when the payload does not say
        status_api_url: https://git.example.org/api/v1   # optional; default CIQ_<PROVIDER>_API_URL
        protected_branches: [main, "release/*"]   # optional; default: the default branch
        protected_tags: ["v*"]          # optional; default: none
        fork_pull_requests: approve     # optional: run | approve (default) | never
        protected_workers_only: false   # optional: protected jobs only on `worker --protected` hosts
        priority: 0                     # optional: its runs' priority, higher first (-1000..1000)
        tag_priority: 10                # optional: the priority of its tags' runs (default: priority)
        max_concurrent_jobs: 20         # optional: its jobs admitted or running at once (default:
                                        #   CIQ_MAX_JOBS_PER_REPO; 0: no limit)
        secrets:                        # optional: the secret names its jobs may have
          - LINT_TOKEN                  # any run but a fork's, any job
          - {name: DEPLOY_TOKEN, protected: true, environments: [production, "review/*"]}

    defaults:                           # optional: for every repository (and, for `secrets`, for
      secrets: [SHARED_READ_TOKEN]      # runs of unregistered clone URLs too); a repository's own
      fork_pull_requests: approve       # keys win, its `secrets` add to (and override by name) these

What the trust keys mean, and who decides what, is in ``ci_queue.trust`` and docs/DESIGN.md
("Trust"); the scheduling keys (``priority``, ``tag_priority``, ``max_concurrent_jobs``, which
``defaults:`` may set too) in ``ci_queue.store.admission`` and docs/DESIGN.md ("Scheduling: fair
share, priorities, limits"). A run of a clone URL that is no registered repository's (the API)
is never protected and gets only the secrets of ``defaults:``.

Secrets never live in this file: it names the environment variables that hold them, read when
a request comes (so a rotated secret needs a restart of nothing but the environment). Defaults:

=========  =====================  =========================
provider   secret_env             status_token_env
=========  =====================  =========================
github     CIQ_GITHUB_SECRET      CIQ_GITHUB_TOKEN
gitlab     CIQ_GITLAB_TOKEN       CIQ_GITLAB_API_TOKEN
gitea      CIQ_GITEA_SECRET       CIQ_GITEA_TOKEN
generic    CIQ_GENERIC_SECRET     (none: no status API)
=========  =====================  =========================

``CIQ_GITLAB_TOKEN`` is GitLab's webhook "secret token" (what ``X-Gitlab-Token`` carries), so the
API token that posts commit statuses needs another name: ``CIQ_GITLAB_API_TOKEN``.

Lookups are by (provider, name), case-insensitively, as GitHub, GitLab and Gitea treat names.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci_queue.events.model import NAME_SEGMENTS, PROVIDERS, Event, valid_ref, valid_repo_name
from ci_queue.pipeline.errors import Diagnostic, Mark, PipelineError
from ci_queue.pipeline.loader import YList, YMap, load_file, load_yaml
from ci_queue.priority import MAX_PRIORITY, Scheduling, valid_priority
from ci_queue.trust import DEFAULT_FORK_MODE, FORK_MODES, Grant, RunTrust, ref_is_protected

DEFAULT_FILE = "configs/repos.yml"
FILE_ENV = "CIQ_REPOS_FILE"
NOTIFY = ("always", "on_failure", "on_change", "never")
DEFAULT_NOTIFY = "on_failure"
DEFAULT_SECRET_ENV = {
    "github": "CIQ_GITHUB_SECRET",
    "gitlab": "CIQ_GITLAB_TOKEN",
    "gitea": "CIQ_GITEA_SECRET",
    "generic": "CIQ_GENERIC_SECRET",
}
DEFAULT_STATUS_TOKEN_ENV: dict[str, str | None] = {
    "github": "CIQ_GITHUB_TOKEN",
    "gitlab": "CIQ_GITLAB_API_TOKEN",
    "gitea": "CIQ_GITEA_TOKEN",
    "generic": None,
}
STRING_KEYS = ("clone_url", "pipeline", "secret_env", "status_token_env", "notify", "default_branch",
               "status_api_url")
# What `defaults:` may set for every repository (the trust and scheduling keys; names and URLs are
# per repository).
SCHEDULING_KEYS = ("priority", "tag_priority", "max_concurrent_jobs")
DEFAULT_KEYS = ("protected_branches", "protected_tags", "fork_pull_requests", "protected_workers_only", "secrets",
                *SCHEDULING_KEYS)
KEYS = ("name", "provider", *STRING_KEYS, *DEFAULT_KEYS)
GRANT_KEYS = ("name", "protected", "environments")
_SECRET_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CLONE_URL_RE = re.compile(r"(https?|ssh|git|file)://[^\s]+|[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+:[^\s]+|/[^\s]*")
_PIPELINE_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*(/[A-Za-z0-9_.][A-Za-z0-9_.-]*)*")


class RegistryError(PipelineError):
    """The repository file is invalid; ``str()`` is one ``FILE:LINE:COL: message`` per problem."""


@dataclass(frozen=True)
class Repository:
    """One registered repository. Secrets are *named* here and read from the environment."""

    name: str
    provider: str
    clone_url: str | None = None
    pipeline: str | None = None
    secret_env: str = ""
    status_token_env: str | None = None
    notify: str = DEFAULT_NOTIFY
    default_branch: str | None = None
    status_api_url: str | None = None
    protected_branches: tuple[str, ...] | None = None  # None: the default branch only
    protected_tags: tuple[str, ...] = ()
    fork_pull_requests: str = DEFAULT_FORK_MODE
    protected_workers_only: bool = False
    secrets: tuple[Grant, ...] = ()  # with the farm-wide defaults' already merged in
    priority: int = 0
    tag_priority: int | None = None  # None: `priority`
    max_concurrent_jobs: int | None = None  # None: the farm's CIQ_MAX_JOBS_PER_REPO; 0: no limit
    mark: Mark | None = field(default=None, compare=False)

    def secret(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The webhook secret, read now from ``secret_env`` (None when unset or empty: refuse)."""
        env = os.environ if environ is None else environ
        return env.get(self.secret_env) or None

    def status_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The status-API token, read now from ``status_token_env`` (None when unset)."""
        if not self.status_token_env:
            return None
        env = os.environ if environ is None else environ
        return env.get(self.status_token_env) or None

    def clone_url_for(self, payload_url: str) -> str:
        """The URL to clone: the registry's override, else the one the payload gave."""
        return self.clone_url or payload_url

    def protects(self, kind: str, ref: str, default_branch: str) -> bool:
        """Whether a run of event ``kind`` for ``ref`` is on one of this repository's protected
        branches (default: ``default_branch``) or tags."""
        branches = self.protected_branches if self.protected_branches is not None else (default_branch,)
        return ref_is_protected(kind, ref, branches=branches, tags=self.protected_tags)

    def trust(self, kind: str, ref: str, default_branch: str, *, fork: bool = False) -> RunTrust:
        """The trusted facts of a run of this repository (``ci_queue.trust``)."""
        return RunTrust(protected=not fork and self.protects(kind, ref, default_branch), fork=fork, registered=True,
                        protected_workers_only=self.protected_workers_only, grants=self.secrets)

    def scheduling(self, kind: str) -> Scheduling:
        """The priority and the limit of a run of event ``kind`` (a tag's: ``tag_priority``)."""
        priority = self.tag_priority if kind == "tag" and self.tag_priority is not None else self.priority
        return Scheduling(priority=priority, max_jobs=self.max_concurrent_jobs)

    def run_arguments(self, event: Event, *, default_branch: str = "main") -> dict[str, Any]:
        """The keyword arguments of ``dispatch.trigger_run`` for ``event`` on this repository:
        ``trigger_run(store, app, **repo.run_arguments(event, default_branch=settings.default_branch))``.

        The run's ``repo`` is the registered spelling of the name (so runs of one repository share
        their index whatever case a payload used); the clone URL is the registry's override, else
        the payload's; a merge request is cloned from the target repository, where the forge keeps
        its head commit (``refs/pull/<n>/head``, ``refs/merge-requests/<iid>/head``) even for forks.
        """
        context = event.to_context(default_branch=self.default_branch or default_branch, pipeline=self.pipeline)
        # What the reporters read back from the run (ci_queue.reporters.tasks.target_for_run): names
        # and URLs only, never a secret. The planner ignores these keys.
        context.update(provider=self.provider, notify=self.notify)
        if self.status_token_env:
            context["status_token_env"] = self.status_token_env
        if self.status_api_url:
            context["status_api_url"] = self.status_api_url
        ref = event.tag if event.kind == "tag" else event.branch
        return {
            "repo": self.name,
            "ref": event.run_ref,
            "sha": event.sha,
            "event": event.kind,
            "clone_url": self.clone_url_for(event.clone_url) or None,
            "context": context,
            "trust": self.trust(event.kind, ref or "", context["default_branch"], fork=event.is_fork),
            "scheduling": self.scheduling(event.kind),
        }

    def fork_waits(self, event: Event) -> bool:
        """Whether the run of ``event`` waits for an approval (a fork's merge request, ``approve``)."""
        return event.is_fork and self.fork_pull_requests == "approve"

    def fork_refused(self, event: Event) -> str | None:
        """Why no run is made for ``event`` (a fork's merge request, ``never``), or None."""
        if event.is_fork and self.fork_pull_requests == "never":
            return (f"merge requests from forks do not run for {self.name} (fork_pull_requests: never); "
                    f"{event.mr_source_repo or 'the fork'} is not {self.name}")
        return None


@dataclass(frozen=True)
class Registry:
    """The registered repositories, looked up by (provider, name) case-insensitively."""

    repositories: tuple[Repository, ...] = ()
    file: str = ""
    warnings: tuple[Diagnostic, ...] = ()
    default_secrets: tuple[Grant, ...] = ()  # `defaults: secrets:`, for every run (unregistered ones too)
    _index: dict[tuple[str, str], Repository] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for repo in self.repositories:
            self._index[repo.provider, repo.name.casefold()] = repo

    def unregistered_trust(self) -> RunTrust:
        """What a run of a clone URL no repository has gets: never protected, the defaults' grants."""
        return RunTrust(grants=self.default_secrets)

    def lookup(self, provider: str, name: str | None) -> Repository | None:
        """The entry for ``name`` at ``provider``, or None (-> 404)."""
        if not isinstance(name, str) or not name:
            return None
        return self._index.get((provider, name.casefold()))

    def __iter__(self) -> Iterator[Repository]:
        return iter(self.repositories)

    def __len__(self) -> int:
        return len(self.repositories)


def load_registry(path: str | os.PathLike[str] | None = None, *,
                  environ: Mapping[str, str] | None = None) -> Registry:
    """Load and validate the registry: ``path``, else ``$CIQ_REPOS_FILE``, else ``configs/repos.yml``.

    A file named explicitly (argument or variable) must exist; the default one may be missing,
    which gives an empty registry (every hook then answers 404). Raises RegistryError.
    """
    env = os.environ if environ is None else environ
    explicit = path is not None or bool(env.get(FILE_ENV))
    chosen = Path(path if path is not None else (env.get(FILE_ENV) or DEFAULT_FILE))
    if not explicit and not chosen.exists():
        return Registry(file=str(chosen))
    try:
        data, warnings = load_file(chosen, str(chosen), max_bytes=1024 * 1024)
    except PipelineError as exc:
        raise RegistryError(exc.diagnostics) from None
    return _build(data, str(chosen), warnings)


def parse_registry(text: str | bytes, file: str = "repos.yml") -> Registry:
    """Validate a registry given as text (``file`` names it in messages). Raises RegistryError."""
    try:
        data, warnings = load_yaml(text, file, max_bytes=1024 * 1024)
    except PipelineError as exc:
        raise RegistryError(exc.diagnostics) from None
    return _build(data, file, warnings)


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def _build(data: object, file: str, warnings: list[Diagnostic]) -> Registry:
    problems: list[Diagnostic] = [w for w in warnings if w.severity == "error"]
    start = Mark(file, 1, 1)

    def problem(mark: Mark | None, message: str, hint: str | None = None) -> None:
        problems.append(Diagnostic(mark or start, message, hint))

    if data is None:
        return Registry(file=file, warnings=tuple(warnings))  # an empty file: nothing registered
    if not isinstance(data, YMap):
        raise RegistryError([Diagnostic(getattr(data, "mark", None) or start,
                                        "the file must be a mapping with a `repositories:` list")])
    _unknown_keys(data, ("repositories", "defaults"), problem, "",
                  "the top-level keys are `repositories` and `defaults`")
    defaults = _defaults(data, problem)
    items = data.get("repositories")
    if items is None:
        items = YList()
    if not isinstance(items, YList):
        problem(data.value_mark("repositories"), "`repositories` must be a list of repositories")
        items = YList()
    repos: list[Repository] = []
    seen: dict[tuple[str, str], Mark | None] = {}
    for index, item in enumerate(items):
        mark = items.item_mark(index)
        if not isinstance(item, YMap):
            problem(mark, "each repository must be a mapping with at least `name` and `provider`")
            continue
        repo = _entry(item, mark, problem, defaults)
        if repo is None:
            continue
        key = (repo.provider, repo.name.casefold())
        if key in seen:
            first = seen[key]
            where = f" (first at line {first.line})" if first else ""
            problem(item.value_mark("name"), f"{repo.provider} repository `{repo.name}` is listed twice{where}",
                    "names are compared case-insensitively, as the forges do")
            continue
        seen[key] = item.value_mark("name")
        repos.append(repo)
    if problems:
        problems.sort(key=lambda d: (d.mark.line, d.mark.col) if d.mark else (0, 0))
        raise RegistryError(problems)
    return Registry(tuple(repos), file, tuple(warnings), defaults.get("secrets", ()))


def _defaults(data: YMap, problem) -> dict[str, Any]:
    """The ``defaults:`` section: the trust keys every repository inherits."""
    section = data.get("defaults")
    if section is None:
        return {}
    if not isinstance(section, YMap):
        problem(data.value_mark("defaults"), "`defaults` must be a mapping of "
                                             + ", ".join(f"`{k}`" for k in DEFAULT_KEYS))
        return {}
    _unknown_keys(section, DEFAULT_KEYS, problem, " in `defaults`", f"`defaults` may set {', '.join(DEFAULT_KEYS)}")
    values, _ = _trust_values(section, problem)
    values.update(_scheduling_values(section, problem)[0])
    return values


def _globs(item: YMap, key: str, problem) -> tuple[str, ...] | None:
    """A list of glob patterns (a single string is a list of one)."""
    value = item.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problem(item.value_mark(key), f"`{key}` must be a list of non-empty names or patterns (`*`: any characters)")
        return None
    return tuple(value)


def _grants(item: YMap, problem) -> tuple[Grant, ...] | None:
    """``secrets:``: names, or ``{name, protected, environments}`` mappings."""
    value = item.get("secrets")
    if not isinstance(value, YList):
        problem(item.value_mark("secrets"), "`secrets` must be a list of secret names or "
                                            "`{name, protected, environments}` mappings")
        return None
    grants: list[Grant] = []
    seen: set[str] = set()
    ok = True
    for index, entry in enumerate(value):
        mark = value.item_mark(index)
        grant = _grant(entry, mark, problem)
        if grant is None:
            ok = False
        elif grant.name in seen:
            problem(mark, f"secret `{grant.name}` is listed twice")
            ok = False
        else:
            seen.add(grant.name)
            grants.append(grant)
    return tuple(grants) if ok else None


def _grant(entry: object, mark: Mark | None, problem) -> Grant | None:
    if isinstance(entry, str):
        entry_map = YMap({"name": entry})
        entry_map.mark = mark
        entry = entry_map
    if not isinstance(entry, YMap):
        problem(mark, "each secret must be a name or a mapping with `name`, `protected`, `environments`")
        return None
    ok = _unknown_keys(entry, GRANT_KEYS, problem, " of a secret", f"the keys are {', '.join(GRANT_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _SECRET_NAME_RE.fullmatch(name):
        problem(entry.value_mark("name"), f"invalid secret name {name!r}",
                "a variable name: letters, digits and underscores, not starting with a digit")
        ok = False
    elif name.startswith("CI_") or name.startswith("CIQ_"):
        problem(entry.value_mark("name"), f"secret name {name!r} is reserved",
                "CI_* variables are set by ci-queue, CIQ_* are the worker's settings")
        ok = False
    protected = entry.get("protected", False)
    if not isinstance(protected, bool):
        problem(entry.value_mark("protected"), "`protected` must be true or false")
        ok = False
    environments: tuple[str, ...] | None = ()
    if "environments" in entry:
        environments = _globs(entry, "environments", problem)
        if environments == ():
            problem(entry.value_mark("environments"), "`environments` must name at least one environment scope",
                    "leave it out (or write `*`) for every job")
            environments = None
        ok = ok and environments is not None
    if not ok:
        return None
    return Grant(name, protected, environments or ())


def _trust_values(item: YMap, problem) -> tuple[dict[str, Any], bool]:
    """The trust keys present in ``item`` (a repository or ``defaults``), validated."""
    values: dict[str, Any] = {}
    ok = True
    for key in ("protected_branches", "protected_tags"):
        if item.get(key) is not None:
            values[key] = _globs(item, key, problem)
    mode = item.get("fork_pull_requests")
    if mode is not None:
        if mode in FORK_MODES:
            values["fork_pull_requests"] = mode
        else:
            hint = _did_you_mean(str(mode), FORK_MODES)
            problem(item.value_mark("fork_pull_requests"),
                    f"`fork_pull_requests` must be one of {', '.join(FORK_MODES)}, not {mode!r}"
                    + (f" ({hint})" if hint else ""))
            values["fork_pull_requests"] = None
    only = item.get("protected_workers_only")
    if only is not None:
        if isinstance(only, bool):
            values["protected_workers_only"] = only
        else:
            problem(item.value_mark("protected_workers_only"), "`protected_workers_only` must be true or false")
            values["protected_workers_only"] = None
    if item.get("secrets") is not None:
        values["secrets"] = _grants(item, problem)
    if any(value is None for value in values.values()):
        ok = False
    return {k: v for k, v in values.items() if v is not None}, ok


def _scheduling_values(item: YMap, problem) -> tuple[dict[str, int], bool]:
    """The scheduling keys present in ``item`` (a repository or ``defaults``), validated."""
    values: dict[str, int] = {}
    ok = True
    for key in ("priority", "tag_priority"):
        value = item.get(key)
        if value is None:
            continue
        if valid_priority(value):
            values[key] = value
        else:
            problem(item.value_mark(key), f"`{key}` must be a whole number from {-MAX_PRIORITY} to {MAX_PRIORITY}")
            ok = False
    limit = item.get("max_concurrent_jobs")
    if limit is not None:
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            values["max_concurrent_jobs"] = limit
        else:
            problem(item.value_mark("max_concurrent_jobs"), "`max_concurrent_jobs` must be a whole number, 0 or more",
                    "0 means no limit; leave it out for the farm's CIQ_MAX_JOBS_PER_REPO")
            ok = False
    return values, ok


def _merged_grants(defaults: tuple[Grant, ...], own: tuple[Grant, ...]) -> tuple[Grant, ...]:
    """The defaults' grants, then the repository's; a repository's grant of a name replaces the default's."""
    names = {grant.name for grant in own}
    return tuple(g for g in defaults if g.name not in names) + own


def _string(item: YMap, key: str, problem, *, required: bool = False) -> str | None:
    value = item.get(key)
    if value is None:
        if required:
            problem(item.mark, f"`{key}` is required")
        return None
    if not isinstance(value, str) or not value:
        problem(item.value_mark(key), f"`{key}` must be a non-empty string")
        return None
    return value


def _unknown_keys(mapping: YMap, allowed: tuple[str, ...], problem, where: str, known: str) -> bool:
    """Report every key of ``mapping`` not in ``allowed`` (with a did-you-mean hint); True when
    there was none."""
    ok = True
    for key in mapping:
        if key not in allowed:
            hint = _did_you_mean(str(key), allowed)
            problem(mapping.key_mark(key), f"unknown key `{key}`{where}" + (f"; {hint}" if hint else ""), known)
            ok = False
    return ok


def _entry(item: YMap, mark: Mark | None, problem, defaults: dict[str, Any]) -> Repository | None:
    ok = _unknown_keys(item, KEYS, problem, "", f"the keys are {', '.join(KEYS)}")
    provider = _string(item, "provider", problem, required=True)
    if provider is not None and provider not in PROVIDERS:
        hint = _did_you_mean(provider, PROVIDERS)
        problem(item.value_mark("provider"), f"unknown provider `{provider}`; one of {', '.join(PROVIDERS)}"
                + (f" ({hint})" if hint else ""))
        provider = None
    name = _string(item, "name", problem, required=True)
    if name is not None:
        limits = NAME_SEGMENTS.get(provider or "gitlab", NAME_SEGMENTS["gitlab"])
        if not valid_repo_name(name, **limits):
            shape = "owner/repo" if limits["max_segments"] == 2 else "group/.../project"
            problem(item.value_mark("name"), f"invalid repository name {name!r}: expected {shape}, each part made "
                    "of letters, digits, `.`, `_`, `-`, not starting with `-`, never `.` or `..`")
            name = None
    values: dict[str, str | None] = {}
    for key in STRING_KEYS:
        values[key] = _string(item, key, problem)
        if item.get(key) is not None and values[key] is None:
            ok = False
    url = values["clone_url"]
    if url is not None and (not _CLONE_URL_RE.fullmatch(url) or url.startswith("-")):
        problem(item.value_mark("clone_url"), f"invalid clone_url {url!r}",
                "an http(s)://, ssh://, git://, file:// URL, user@host:path, or an absolute path")
        ok = False
    pipeline = values["pipeline"]
    if pipeline is not None and (not _PIPELINE_RE.fullmatch(pipeline)
                                 or any(part in (".", "..") for part in pipeline.split("/"))):
        problem(item.value_mark("pipeline"), f"invalid pipeline path {pipeline!r}",
                "a relative path inside the repository, without `..`")
        ok = False
    for key in ("secret_env", "status_token_env"):
        value = values[key]
        if value is not None and not _ENV_NAME_RE.fullmatch(value):
            problem(item.value_mark(key), f"`{key}` must name an environment variable, not {value!r}",
                    "the secret itself never goes in this file")
            ok = False
    notify = values["notify"]
    if notify is not None and notify not in NOTIFY:
        hint = _did_you_mean(notify, NOTIFY)
        problem(item.value_mark("notify"), f"`notify` must be one of {', '.join(NOTIFY)}, not {notify!r}"
                + (f" ({hint})" if hint else ""))
        ok = False
    default_branch = values["default_branch"]
    if default_branch is not None and not valid_ref(default_branch):
        problem(item.value_mark("default_branch"), f"invalid branch name {default_branch!r}")
        ok = False
    api_url = values["status_api_url"]
    if api_url is not None and not re.fullmatch(r"https?://[^\s/]+[^\s]*", api_url):
        problem(item.value_mark("status_api_url"), f"invalid status_api_url {api_url!r}", "an http(s):// URL")
        ok = False
    trust, trust_ok = _trust_values(item, problem)
    scheduling, scheduling_ok = _scheduling_values(item, problem)
    if not ok or not trust_ok or not scheduling_ok or provider is None or name is None:
        return None
    chosen = {**defaults, **trust, **scheduling}
    return Repository(
        name=name, provider=provider, clone_url=url, pipeline=pipeline,
        secret_env=values["secret_env"] or DEFAULT_SECRET_ENV[provider],
        status_token_env=values["status_token_env"] or DEFAULT_STATUS_TOKEN_ENV[provider],
        notify=notify or DEFAULT_NOTIFY, default_branch=default_branch, status_api_url=api_url,
        protected_branches=chosen.get("protected_branches"), protected_tags=chosen.get("protected_tags", ()),
        fork_pull_requests=chosen.get("fork_pull_requests", DEFAULT_FORK_MODE),
        protected_workers_only=chosen.get("protected_workers_only", False),
        secrets=_merged_grants(defaults.get("secrets", ()), trust.get("secrets", ())),
        priority=chosen.get("priority", 0), tag_priority=chosen.get("tag_priority"),
        max_concurrent_jobs=chosen.get("max_concurrent_jobs"), mark=mark,
    )
