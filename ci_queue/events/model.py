"""The normalized webhook event, and the other outcomes of parsing a delivery.

Every provider module turns ``(headers, raw body)`` into exactly one of:

- :class:`Event`: something to build (a push to a branch, a tag, a merge / pull request);
- :class:`Ignored`: a valid delivery that starts nothing (a deletion, a closed PR, an unknown
  event...), answered 200/202 with ``{"ignored": reason}``;
- :class:`Pong`: a ping (GitHub / Gitea hook creation), answered 200 ``pong``;

or raises :class:`BadPayload` (not JSON, or not the shape the provider sends), answered 400.

Everything taken from a payload is data: names, refs and messages are validated or carried as
strings, never put on a command line or into a file path. ``valid_ref`` / ``valid_repo_name``
are the checks, shared with the registry (``ci_queue.repos``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ci_queue.limits import MAX_MESSAGE_BYTES, MAX_REF_BYTES, MAX_REPO_NAME_LENGTH, ref_bytes, shown, utf8_len

PROVIDERS = ("github", "gitlab", "gitea", "generic")
KINDS = ("push", "tag", "merge_request")
ZERO_SHA = "0" * 40

_SHA_RE = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
# One segment of a repository path: what GitHub, GitLab and Gitea allow (letters, digits, . _ -),
# not starting with '-' (it would read as an option) and never '.' or '..'.
_NAME_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}")
# Bytes git refuses in a ref name (git check-ref-format): controls, space, ~ ^ : ? * [ \ and DEL.
_REF_FORBIDDEN_RE = re.compile(r"[\x00-\x20~^:?*\[\\\x7f]")


class BadPayload(ValueError):
    """The body is not JSON or not the shape this provider sends (-> 400 with the message)."""


@dataclass(frozen=True)
class Ignored:
    """A valid delivery that starts no run; ``reason`` is shown to the sender."""

    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"ignored": self.reason}


@dataclass(frozen=True)
class Pong:
    """A ping: the hook was set up (or tested); answer ``pong``."""

    provider: str
    repo: str = ""  # the repository the hook belongs to, when the ping says (org hooks do not)
    delivery_id: str = ""
    hook_id: str = ""


@dataclass(frozen=True)
class Event:
    """A push, tag or merge request event, the same for every provider.

    ``ref`` is the full git ref (``refs/heads/x``, ``refs/tags/v1``; for a merge request the
    forge's head ref of it, ``refs/pull/<n>/head`` or ``refs/merge-requests/<iid>/head``, which
    exists in the target repository even for a fork); ``branch`` / ``tag`` the short names (for
    a merge request ``branch`` is its source branch). ``sha`` is the commit to build (a merge
    request's head). ``before`` is the previous tip (zeros for a new branch or tag, or unknown;
    for a merge request update, the previous head). ``mr_*`` fields are set only for
    ``kind == "merge_request"``. ``server_url`` is the forge's base URL when the payload shows it.
    """

    provider: str
    repo: str  # the forge's full name: owner/repo, or a GitLab group/sub/project path
    kind: str  # push | tag | merge_request
    ref: str
    sha: str
    clone_url: str = ""
    before: str = ZERO_SHA
    branch: str | None = None
    tag: str | None = None
    default_branch: str | None = None
    commit_message: str = ""
    sender: str = ""
    delivery_id: str = ""
    action: str = ""  # the provider's action (opened, synchronize, update...), for the record
    created: bool = False  # a new branch / tag (before was all zeros)
    # merge / pull request
    mr_iid: int | None = None
    mr_source_branch: str = ""
    mr_target_branch: str = ""
    mr_title: str = ""
    mr_labels: tuple[str, ...] = ()
    mr_source_repo: str = ""
    mr_target_repo: str = ""
    mr_diff_base_sha: str = ""
    mr_source_clone_url: str = ""  # the fork's URL when the source project differs
    # the payload shows another source project where the names cannot: GitLab's project ids
    # differ, or GitHub / Gitea send no head repository (the fork was deleted)
    mr_cross_project: bool = False
    web_url: str = ""
    server_url: str = ""

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {self.provider!r}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")

    @property
    def run_ref(self) -> str:
        """The ``ref`` of the run (``trigger_run(ref=...)``): the short branch or tag name, as the
        API's runs have; for a merge request, its source branch (GitLab's CI_COMMIT_REF_NAME)."""
        if self.kind == "tag":
            return self.tag or ""
        if self.kind == "merge_request":
            return self.mr_source_branch or self.branch or ""
        return self.branch or ""

    @property
    def is_fork(self) -> bool:
        """A merge request whose source project is not the target project (or may not be: a
        payload that does not say where the head comes from is a fork's, to be safe)."""
        if self.kind != "merge_request":
            return False
        return (self.mr_cross_project or not self.mr_source_repo
                or self.mr_source_repo.lower() != (self.mr_target_repo or self.repo).lower())

    def to_context(self, *, default_branch: str = "main", pipeline: str | None = None) -> dict[str, Any]:
        """The run's ``context`` (what ``workers.tasks.plan_context`` turns into a PlanContext).

        ``default_branch`` is used when the payload did not name one; ``pipeline`` (the
        registry's pipeline file) is added when given. Only JSON types: it is stored as JSON.
        ``before_sha`` (CI_COMMIT_BEFORE_SHA) is all zeros for a merge request, as in GitLab.
        """
        context: dict[str, Any] = {
            "kind": self.kind,
            "branch": self.branch if self.kind != "tag" else None,
            "tag": self.tag if self.kind == "tag" else None,
            "default_branch": self.default_branch or default_branch,
            "before_sha": ZERO_SHA if self.kind == "merge_request" else (self.before or ZERO_SHA),
            "project_path": self.repo,
            "commit_message": self.commit_message,
        }
        if self.sender:
            context["user_login"] = self.sender
        if self.server_url:
            context["server_url"] = self.server_url
        if self.kind == "merge_request":
            context["merge_request"] = {
                "iid": self.mr_iid if self.mr_iid is not None else 0,
                "source_branch": self.mr_source_branch,
                "target_branch": self.mr_target_branch,
                "title": self.mr_title,
                "labels": list(self.mr_labels),
                "source_project_path": self.mr_source_repo or self.repo,
                "target_project_path": self.mr_target_repo or self.repo,
                "diff_base_sha": self.mr_diff_base_sha,
            }
        if pipeline:
            context["pipeline"] = pipeline
        return context

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (for logs and the delivery record)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["mr_labels"] = list(self.mr_labels)
        return data


Result = Event | Ignored | Pong


# -- shared helpers of the provider modules -------------------------------------------------------


def load_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or BadPayload."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise BadPayload("the body must be bytes")
    try:
        data = json.loads(bytes(body).decode("utf-8"))  # not json.loads(bytes): it would guess UTF-16/32
    except UnicodeDecodeError:
        raise BadPayload("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadPayload(f"the body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise BadPayload("the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadPayload(f"the body must be a JSON object, not {type(data).__name__}")
    return data


def header(headers: Mapping[str, str], name: str) -> str:
    """A header's value, case-insensitively ('' when absent). Works for dicts and Werkzeug headers."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                value = candidate
                break
    return (value or "").strip()


def obj(data: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """A required JSON object field."""
    value = data.get(key)
    if not isinstance(value, dict):
        raise BadPayload(f"`{where}{key}` must be an object")
    return value


def opt_obj(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An optional JSON object field ({} when absent or null)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def text(data: Mapping[str, Any], key: str, where: str = "", *, required: bool = True) -> str:
    """A string field ('' when optional and absent / null)."""
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadPayload(f"`{where}{key}` must be a non-empty string")
    return value


def number(data: Mapping[str, Any], key: str, where: str = "") -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadPayload(f"`{where}{key}` must be a non-negative integer")
    return value


def sha(value: Any, what: str, *, allow_zero: bool = True) -> str:
    """A full commit id (40 hex, or 64 for SHA-256 repositories), lower-cased."""
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value.lower()):
        raise BadPayload(f"`{what}` must be a full hexadecimal commit id")
    value = value.lower()
    if not allow_zero and is_zero(value):
        raise BadPayload(f"`{what}` must not be all zeros")
    return value


def is_zero(value: str | None) -> bool:
    return not value or set(value) == {"0"}


def valid_ref(name: str) -> bool:
    """Whether ``name`` is a ref name git would accept (``git check-ref-format``), and safe.

    Safe means no component starts with '-' (git would read it as an option). Shell
    metacharacters such as ``$(...)`` or backquotes are legal in git refs: they are kept, as
    data, since nothing ever passes a ref through a shell.
    """
    if not isinstance(name, str) or not name or ref_bytes(name) > MAX_REF_BYTES:
        return False
    if _REF_FORBIDDEN_RE.search(name) or ".." in name or "@{" in name or name == "@":
        return False
    if name.endswith(("/", ".", ".lock")) or name.startswith("/") or "//" in name:
        return False
    return not any(part.startswith((".", "-")) or part.endswith(".lock") for part in name.split("/"))


def ref_name(name: Any, what: str) -> str:
    """A validated ref or short branch / tag name, or BadPayload (which never echoes it whole)."""
    if isinstance(name, str) and ref_bytes(name) > MAX_REF_BYTES:
        raise BadPayload(f"`{what}` is too long: {ref_bytes(name)} bytes, a branch or tag name has at most "
                         f"{MAX_REF_BYTES}: {shown(name)}")
    if not isinstance(name, str) or not valid_ref(name):
        raise BadPayload(f"`{what}` is not a valid git ref name: {shown(name, 100)}")
    return name


def valid_repo_name(name: str, *, min_segments: int = 2, max_segments: int = 2) -> bool:
    """``owner/repo`` (GitLab: ``group/sub/.../project``): segments of letters, digits, ``. _ -``,
    none ``.``/``..`` or starting with '-'. Such a name can never leave a directory or be read as
    a command-line option, whatever it is later used for."""
    if not isinstance(name, str) or not name or len(name) > MAX_REPO_NAME_LENGTH:
        return False
    parts = name.split("/")
    if not min_segments <= len(parts) <= max_segments:
        return False
    return all(_NAME_SEGMENT_RE.fullmatch(part) and part not in (".", "..") for part in parts)


# How many path segments a repository name has, per provider: GitHub and Gitea owner/repo;
# GitLab group/subgroups.../project (groups nest up to 20 levels); generic anything from 1 to 21.
NAME_SEGMENTS = {
    "github": {"min_segments": 2, "max_segments": 2},
    "gitea": {"min_segments": 2, "max_segments": 2},
    "gitlab": {"min_segments": 2, "max_segments": 21},
    "generic": {"min_segments": 1, "max_segments": 21},
}


def repo_name(name: Any, what: str, provider: str) -> str:
    """A validated repository full name, or BadPayload."""
    if not isinstance(name, str) or not valid_repo_name(name, **NAME_SEGMENTS.get(provider, {})):
        raise BadPayload(f"`{what}` is not a valid repository name: {shown(name, 100)}")
    return name


_URL_RE = re.compile(r"(https?|ssh|git)://[^\s/$.?#-][^\s]*|[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+:[^\s]+")


def clone_url(value: Any, what: str) -> str:
    """A clone URL taken from a payload: http(s), ssh, git or scp-like ``user@host:path``.

    ``file://`` and local paths are refused from payloads (a registry entry may set them), and
    nothing starting with '-' (``--upload-pack=...``) passes.
    """
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > 2048 or not _URL_RE.fullmatch(value):
        raise BadPayload(f"`{what}` is not a clone URL this server accepts: {shown(value, 100)}")
    return value


def server_of(web_url: str, repo: str) -> str:
    """The forge's base URL from a repository's web URL (``https://gitlab.com/g/p`` -> ``https://gitlab.com``)."""
    if not web_url or not repo or not re.fullmatch(r"https?://[^\s]+", web_url):
        return ""
    suffix = "/" + repo.lower()
    url = web_url.rstrip("/")
    return url[: -len(suffix)] if url.lower().endswith(suffix) else ""


def branch_of(ref: str) -> str | None:
    return ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None


def tag_of(ref: str) -> str | None:
    return ref[len("refs/tags/"):] if ref.startswith("refs/tags/") else None


def message_of(value: Any, limit: int = MAX_MESSAGE_BYTES) -> str:
    """A commit message / title: any string, cut to ``limit`` bytes of UTF-8 (whole characters:
    it becomes an environment variable of the jobs, CI_COMMIT_MESSAGE, and the kernel counts
    bytes); NULs removed."""
    if not isinstance(value, str):
        return ""
    value = value.replace("\x00", "")
    if utf8_len(value) <= limit:
        return value
    return value.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def labels_of(value: Any) -> tuple[str, ...]:
    """Label names from a list of strings or of ``{"name"|"title": ...}`` objects."""
    names: list[str] = []
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                names.append(item)
            elif isinstance(item, dict):
                name = item.get("name") if isinstance(item.get("name"), str) else item.get("title")
                if isinstance(name, str):
                    names.append(name)
    return tuple(names)


def push_result(provider: str, *, repo: str, ref: str, before: str, after: str, clone: str = "",
                default_branch: str | None = None, message: str = "", sender: str = "", delivery: str = "",
                deleted: bool = False, web_url: str = "") -> Event | Ignored:
    """The Event (or Ignored) of a push of ``ref`` from ``before`` to ``after``, for every provider.

    A deletion (``deleted`` or an all-zero ``after``) starts nothing; a ref outside
    ``refs/heads/`` and ``refs/tags/`` (notes, pull refs...) neither.
    """
    branch, tag = branch_of(ref), tag_of(ref)
    what = "tag" if tag is not None else "branch"
    if deleted or is_zero(after):
        return Ignored(f"{what} {ref} was deleted" if (branch or tag) else f"{ref} was deleted")
    if branch is None and tag is None:
        return Ignored(f"{ref} is neither a branch nor a tag")
    after = sha(after, "after", allow_zero=False)
    before = sha(before, "before") if before else ZERO_SHA
    return Event(
        provider=provider, repo=repo, kind="tag" if tag is not None else "push", ref=ref, sha=after,
        clone_url=clone, before=before, branch=branch, tag=tag, default_branch=default_branch or None,
        commit_message=message, sender=sender, delivery_id=delivery, created=is_zero(before),
        web_url=web_url, server_url=server_of(web_url, repo),
    )


def head_message(data: Mapping[str, Any], after: str) -> str:
    """The message of the pushed head commit: ``head_commit``, else the commit with id ``after``
    in ``commits``, else the last of them."""
    head = data.get("head_commit")
    if isinstance(head, dict) and isinstance(head.get("message"), str):
        return message_of(head["message"])
    commits = data.get("commits")
    if isinstance(commits, list) and commits:
        for commit in commits:
            if isinstance(commit, dict) and commit.get("id") == after:
                return message_of(commit.get("message"))
        last = commits[-1]
        if isinstance(last, dict):
            return message_of(last.get("message"))
    return ""
