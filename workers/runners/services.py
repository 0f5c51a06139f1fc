"""The parts of GitLab's ``services:`` that need no Docker daemon: aliases, ports, output tails.

``workers.runners.docker`` starts the containers; this module decides what they are called and
reads what they listen on.

- Default aliases (GitLab Runner's ``SplitNameAndVersion``): the image name without its tag or
  digest and without a registry's port, with ``/`` replaced by ``__`` (the primary alias) and by
  ``-`` (the second one, when it differs): ``tutum/wordpress:latest`` -> ``tutum__wordpress``
  and ``tutum-wordpress``; ``registry.example.com:5000/group/img:1`` ->
  ``registry.example.com__group__img`` and ``registry.example.com-group-img``.
- ``alias:`` adds aliases, several separated by commas or white space (GitLab 16).
- An alias another service of the job has already taken is ignored with a warning, and a service
  none of whose aliases is left is not started (GitLab does both: "Service X is already created.
  Ignoring.").
"""

from __future__ import annotations

import collections
import contextlib
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# A host name as /etc/hosts and the resolvers take it: dot-separated labels of letters, digits,
# '-' and '_' (GitLab's own default aliases contain "__"), no label starting or ending with '-'.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_DIGEST = re.compile(r"@[A-Za-z0-9_+.-]+:[0-9A-Fa-f]{32,}$")
_REGISTRY_PORT = re.compile(r"^([^/]+?):[0-9]+(/.*)$")
LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp and /proc/net/tcp6
HEALTHCHECK_PORT_VARIABLE = "HEALTHCHECK_TCP_PORT"
TAIL_LINES = 20  # lines of a service's output kept for the job log when it does not get ready
_TAIL_LINE_CHARS = 1000
_TAIL_PARTIAL_BYTES = 16384


def image_path(image: str) -> str:
    """``image`` without its digest, its tag and its registry's port (GitLab's "service" part)."""
    name = _DIGEST.sub("", image.strip())
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag (a colon before the last slash is a registry's port)
        name = name[:colon]
    match = _REGISTRY_PORT.match(name)
    if match:
        name = match.group(1) + match.group(2)
    return name


def default_aliases(image: str) -> list[str]:
    """GitLab's default aliases of a service image: ``a/b`` -> ``a__b``, then ``a-b``."""
    path = image_path(image)
    if not path:
        return []
    primary = path.replace("/", "__")
    secondary = path.replace("/", "-")
    return [primary] if secondary == primary else [primary, secondary]


def split_aliases(alias: Any) -> list[str]:
    """The aliases of an ``alias:`` value: several, separated by commas or white space."""
    if alias is None:
        return []
    return [part for part in re.split(r"[,\s]+", str(alias)) if part]


def valid_hostname(name: str) -> bool:
    if not name or len(name) > 253 or re.fullmatch(r"[0-9.]+", name):
        return False  # an all-numeric name would be read as an address
    return all(_LABEL.fullmatch(label) for label in name.split("."))


@dataclass
class ServicePlan:
    """One service to start: the planned ``services:`` entry, its aliases and its environment."""

    index: int
    name: str  # the image, as written
    aliases: list[str]
    spec: Mapping[str, Any]
    variables: dict[str, str] = field(default_factory=dict)  # the service's own `variables:`

    @property
    def alias(self) -> str:
        return self.aliases[0]

    def command(self, key: str) -> list[str] | None:
        """``entrypoint`` / ``command`` as an argv list (None: the image's own)."""
        value = self.spec.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        return [str(part) for part in value]


def plan_services(services: Iterable[Mapping[str, Any]], warn: Any) -> list[ServicePlan]:
    """The services to start, with their aliases; ``warn(text)`` gets each refused alias and
    each service left out (an alias taken by an earlier service of the job, as GitLab does)."""
    taken: dict[str, str] = {}
    plans: list[ServicePlan] = []
    for index, spec in enumerate(services):
        name = str(spec.get("name") or "")
        if not name:
            warn("WARNING: a service without a `name:` is ignored")
            continue
        mine: list[str] = []
        for alias in [*default_aliases(name), *split_aliases(spec.get("alias"))]:
            if alias in mine:
                continue
            if not valid_hostname(alias):
                warn(f"WARNING: Service {name}: `{alias}` is not a valid host name (letters, digits, '-', '_' "
                     "and dots, at most 63 characters between dots); this alias is ignored")
                continue
            if alias in taken:
                warn(f"WARNING: Service {name}: the alias `{alias}` is already taken by service {taken[alias]}; "
                     "this alias is ignored")
                continue
            mine.append(alias)
        if not mine:
            warn(f"WARNING: Service {name} is not started: it has no alias left (GitLab ignores such a "
                 "service too)")
            continue
        for alias in mine:
            taken[alias] = name
        variables = {str(k): "" if v is None else str(v) for k, v in (spec.get("variables") or {}).items()}
        plans.append(ServicePlan(index=index, name=name, aliases=mine, spec=spec, variables=variables))
    return plans


def exposed_tcp_ports(image_config: Mapping[str, Any] | None) -> list[int]:
    """The TCP ports an image EXPOSEs (its config's ``ExposedPorts``: ``"8080/tcp"``...), sorted."""
    ports = set()
    for key in (image_config or {}).get("ExposedPorts") or {}:
        number, _, proto = str(key).partition("/")
        if (proto or "tcp").lower() == "tcp" and number.isdigit() and 0 < int(number) < 65536:
            ports.add(int(number))
    return sorted(ports)


def health_check_ports(plan: ServicePlan, image_config: Mapping[str, Any] | None,
                       warn: Any) -> list[int]:
    """The ports whose listening makes the service ready: ``HEALTHCHECK_TCP_PORT`` if the service
    sets it, else every TCP port its image exposes (ready when any of them listens, as GitLab)."""
    raw = plan.variables.get(HEALTHCHECK_PORT_VARIABLE)
    if raw is not None and raw.strip():
        if raw.strip().isdigit() and 0 < int(raw) < 65536:
            return [int(raw)]
        warn(f"WARNING: Service {plan.name}: {HEALTHCHECK_PORT_VARIABLE}={raw!r} is not a port number; "
             "using the ports its image exposes")
    return exposed_tcp_ports(image_config)


# The pod's listening sockets, printed with shell builtins only (the job's image may have no cat).
LISTENING_SCRIPT = (
    'for f in /proc/net/tcp /proc/net/tcp6; do '
    '[ -r "$f" ] && while read -r l; do echo "$l"; done <"$f"; done; true'
)


def listening_ports(proc_net_tcp: str) -> set[int]:
    """The local ports in state LISTEN in the text of /proc/net/tcp (and tcp6)."""
    ports = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != LISTEN or ":" not in fields[1]:
            continue
        try:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports


class OutputTail:
    """The last lines of a service's output, read from its attach stream by a thread of its own
    (the service's log driver is ``none``: the daemon keeps nothing to read afterwards)."""

    def __init__(self, stream: Iterator[tuple[bytes | None, bytes | None]], name: str,
                 lines: int = TAIL_LINES) -> None:
        self._stream = stream
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._partial = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name=f"service-output {name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for stdout, stderr in self._stream:
                for chunk in (stdout, stderr):
                    if chunk:
                        self._feed(chunk)
        except Exception:  # closed under us (cleanup) or the daemon went away: the tail is best effort
            return

    def _feed(self, chunk: bytes) -> None:
        with self._lock:
            self._partial += chunk
            *complete, rest = bytes(self._partial).split(b"\n")
            for raw in complete:
                self._lines.append(_decode(raw))
            self._partial = bytearray(rest[-_TAIL_PARTIAL_BYTES:])

    def lines(self, settle: float = 1.0) -> list[str]:
        """What was read so far; waits up to ``settle`` s for the reader to reach the end of the
        output of a service that ended."""
        self._thread.join(settle)
        with self._lock:
            found = list(self._lines)
            if self._partial:
                found.append(_decode(bytes(self._partial)))
        return found[-self._lines.maxlen:] if self._lines.maxlen else found

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        self._thread.join(2)


def _decode(raw: bytes) -> str:
    text = raw.rstrip(b"\r").decode("utf-8", "replace")
    return text if len(text) <= _TAIL_LINE_CHARS else text[:_TAIL_LINE_CHARS] + " [...]"


__all__ = ["ServicePlan", "default_aliases", "listening_ports", "plan_services", "valid_hostname"]
