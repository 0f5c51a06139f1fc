"""``include: project:`` on a worker: files of other *registered* repositories, read from the
host's git mirror cache with the credentials a checkout uses.

``ProjectFiles(registry, settings)`` is a ``ProjectReader`` (``ci_queue.pipeline.sources``): for
``(project, ref, path)`` it finds the registry entry named ``project`` (with a ``clone_url``; any
other name is an error naming it), resolves ``ref`` (default: the entry's ``default_branch``,
else ``CIQ_DEFAULT_BRANCH``; a full commit id is taken as it is), makes sure the mirror of that
repository holds the commit (``workers.checkout``'s cache: fetched only when missing) and reads
the file with ``git cat-file``, no checkout. The registry's clone URL is trusted as the operator
wrote it (as for runs of that repository): the clone policy does not apply.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ci_queue.pipeline.sources import IncludeSourceError, IncludeSources
from ci_queue.remote_includes import RemoteIncludes
from ci_queue.repos import Registry, RegistryError, Repository, load_registry
from ci_queue.settings import Settings
from workers.checkout import (
    CheckoutError,
    _Git,
    _Mirror,
    _MirrorCorrupt,
    credentials_for,
    default_cache_dir,
    parse_clone_url,
    resolve_ref,
)

_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
REGISTER_HINT = "register it in the repository registry (CIQ_REPOS_FILE, on the workers too) with its `clone_url`"


def include_sources(settings: Settings) -> IncludeSources:
    """The readers of a worker's planning: registered projects (the registry of
    ``CIQ_REPOS_FILE``) and remote URLs (``ci_queue.remote_includes``)."""
    try:
        registry = load_registry(settings.repos_file or None)
    except RegistryError as exc:
        problem = str(exc).splitlines()[0] if str(exc) else "invalid"
        return IncludeSources(project=_refuse(f"the repository registry cannot be read: {problem}"),
                              remote=RemoteIncludes.from_settings(settings))
    return IncludeSources(project=ProjectFiles(registry, settings), remote=RemoteIncludes.from_settings(settings))


def _refuse(message: str) -> Callable[[str, str | None, str], bytes]:
    def read(project: str, ref: str | None, path: str) -> bytes:
        raise IncludeSourceError(message)

    return read


class ProjectFiles:
    """Reads project includes for one planning (refs are resolved once per planning)."""

    def __init__(self, registry: Registry, settings: Settings, env: Mapping[str, str] | None = None,
                 cache_dir: Path | None = None, timeout: float = 120) -> None:
        self.registry = registry
        self.settings = settings
        self.env = os.environ if env is None else env
        self.cache_dir = cache_dir or default_cache_dir(settings)
        self.timeout = timeout
        self._shas: dict[tuple[str, str], str] = {}

    def __call__(self, project: str, ref: str | None, path: str) -> bytes:
        entry = self.entry(project)
        ref = ref or entry.default_branch or self.settings.default_branch
        try:
            sha = self.resolve(entry, ref)
            return self.read(entry.clone_url or "", sha, path)
        except _MirrorCorrupt as exc:
            raise CheckoutError(f"the git cache of {entry.name} is unusable: {exc}") from None
        except CheckoutError as exc:
            if exc.retryable:
                raise  # the network, a timeout: planning is tried again (workers.planning)
            raise IncludeSourceError(f"project {entry.name} at {ref}: {exc}") from None

    def entry(self, project: str) -> Repository:
        """The registered repository ``project`` names (with a clone URL), or an error naming it."""
        wanted = project.strip("/").casefold()
        for entry in self.registry:
            if entry.name.casefold() == wanted and entry.clone_url:
                return entry
        raise IncludeSourceError(f"project {project!r} is not a registered repository", REGISTER_HINT)

    def resolve(self, entry: Repository, ref: str) -> str:
        """The commit ``ref`` names in ``entry`` (remembered for this planning)."""
        if _FULL_SHA.fullmatch(ref):
            return ref
        key = (entry.name, ref)
        if key not in self._shas:
            self._shas[key] = resolve_ref(entry.clone_url or "", ref, env=self.env, timeout=self.timeout)
        return self._shas[key]

    def read(self, clone_url: str, sha: str, path: str) -> bytes:
        """``path`` at ``sha`` from the mirror of ``clone_url`` (fetched first if it lacks the commit)."""
        remote = parse_clone_url(clone_url)
        git = _Git(self.env, remote, credentials_for(remote, self.env), time.monotonic(), self.timeout)
        mirror = _Mirror(self.cache_dir, git, sha)
        with mirror.locked(exclusive=False):
            present = mirror.has(sha)
        if not present:
            mirror.ensure(sha)
        with mirror.locked(exclusive=False):
            result = git.run(mirror.git_args("cat-file", "blob", f"{sha}:{path}"))
        if result.returncode != 0:
            raise IncludeSourceError(f"project {remote.clean}: file {path!r} does not exist at {sha[:12]}",
                                     "check `file:` and `ref:` of the include")
        return result.stdout.encode("utf-8")
