"""Which repository a trigger (``POST /api/v1/runs``) may run, and from which clone URL.

A run executes code on the farm's build hosts, under a repository's name (its secrets, its
protected refs), so what a token may trigger is decided here:

- A registered repository whose ``clone_url`` the registry (``repos.yml``) sets, named by
  ``repo`` or by that clone URL: any token with ``trigger`` (and its ``repos`` globs). The run
  clones the registered URL, trusted as the operator configured it (never checked by the clone
  policy, here or at the worker). A request naming the repository with another clone URL is
  refused (403): the name would vouch for code from elsewhere.
- Anything else (an unregistered repository, a registered one without ``clone_url``, whose
  webhook runs clone the forge's URL): ``admin`` only, and the clone URL must pass the clone
  policy (``ci_queue.clone_policy``: local repositories, transports, private addresses).

Limits by repository come first, on the name asked for: a limited token learns nothing about
repositories outside its globs, not even whether they are registered.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import abort

from ci_queue.clone_policy import ClonePolicy, CloneRefused, same_repository_url
from ci_queue.repos import Registry, Repository
from ci_queue.tokens import Identity

REGISTER_HINT = ("register it in the repository registry (CIQ_REPOS_FILE) with its `clone_url`, "
                 "or use a token with the `admin` scope")


@dataclass(frozen=True)
class RunSource:
    """The repository name and clone URL of a run to trigger; ``entry``: the registered repository
    whose registry URL it is (its trust and grants apply), None for anything else."""

    repo: str
    clone_url: str
    entry: Repository | None = None

    @property
    def trusted(self) -> bool:
        """The clone URL is the registry's: neither checked here nor at the worker."""
        return self.entry is not None


def run_source(identity: Identity, registry: Registry, policy: ClonePolicy, repo: str, clone_url: str) -> RunSource:
    """The run a trigger may make, or an abort (403 with how to allow it; 400 for a URL that is
    not one at all). ``repo`` and ``clone_url`` are as the request gave them (either may be "")."""
    asked = repo or default_name(clone_url)
    _within_limits(identity, asked)
    entry = _registered(registry, repo, clone_url)
    if entry is not None:
        _within_limits(identity, entry.name)
        return RunSource(entry.name, entry.clone_url or "", entry)
    if not identity.allows("admin"):
        abort(403, _unregistered(registry, repo, clone_url))
    if not clone_url:
        abort(400, f"`clone_url` is required: {repo!r} has no clone_url in the repository registry")
    try:
        policy.check(clone_url)
    except CloneRefused as exc:
        abort(exc.status, str(exc))
    return RunSource(asked, clone_url)


def default_name(clone_url: str) -> str:
    """The run's repository when the trigger names none: the clone URL's last part."""
    return clone_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")


def _within_limits(identity: Identity, repo: str) -> None:
    if not identity.sees(repo):
        abort(403, f"the token {identity.name!r} is limited to the repositories {', '.join(identity.repos)}; "
                   f"{repo!r} is not one of them")


def _registered(registry: Registry, repo: str, clone_url: str) -> Repository | None:
    """The entry with a registered clone URL that the request names: by name (with that URL or
    none) or, when no entry has that name, by URL (the registry's URL makes a run of its
    repository, whatever the request calls it). None when there is no such entry."""
    with_url = [entry for entry in registry if entry.clone_url]
    if repo and any(e.name.casefold() == repo.casefold() for e in registry):
        named = [e for e in with_url if e.name.casefold() == repo.casefold()
                 and (not clone_url or same_repository_url(clone_url, e.clone_url or ""))]
        return named[0] if named else None
    matched = [e for e in with_url if clone_url and same_repository_url(clone_url, e.clone_url or "")]
    return matched[0] if matched else None


def _unregistered(registry: Registry, repo: str, clone_url: str) -> str:
    """Why a non-admin trigger is refused, in words that say what would allow it."""
    named = [entry for entry in registry if repo and entry.name.casefold() == repo.casefold()]
    if named and any(entry.clone_url for entry in named):
        url = next(entry.clone_url for entry in named if entry.clone_url)
        return (f"`clone_url` is not the one registered for {named[0].name} ({url}): leave it out (the "
                "registered one is used), or use a token with the `admin` scope")
    if named:
        return (f"{named[0].name} has no `clone_url` in the repository registry, so its clone URL cannot be "
                f"vouched for; set one there, or use a token with the `admin` scope")
    return f"{repo or clone_url!r} is not a registered repository: {REGISTER_HINT}"
