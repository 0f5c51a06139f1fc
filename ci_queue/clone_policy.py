"""What a run may clone: the clone URL policy of the web app (``POST /api/v1/runs``, webhook
payloads) and of the worker, which checks again right before it fetches.

A clone URL is work the farm does on a build host's network on behalf of whoever triggered the
run, so it is refused unless it is plainly a remote repository on the open internet:

- ``file://`` URLs and local paths only with ``CIQ_ALLOW_LOCAL_REPOS=1`` (a development machine;
  ``standalone`` turns it on): otherwise ``file:///etc`` or another job's workspace would be
  "cloned" from the build host's own disk.
- Transports: ``https``, ``ssh`` (also ``user@host:path``) and ``git``. Plain ``http`` only to a
  host of ``CIQ_CLONE_ALLOW_HOSTS`` (an internal forge without TLS); every other transport
  (``ext::``, ``fd::``, ``ftp``...) is refused.
- The host must be a host name or an IP address written plainly (no ``127.1``, ``0x7f.1`` or
  ``2130706433``: what ``inet_aton`` would read differently from a URL parser), and every address
  it has must be globally routable: loopback, private (RFC 1918, unique local), link-local (the
  cloud metadata endpoint ``169.254.169.254``), unspecified (``0.0.0.0``), shared (CGNAT),
  multicast and reserved addresses are refused, also inside IPv4-mapped, 6to4, Teredo and NAT64
  IPv6 addresses. ``CIQ_CLONE_ALLOW_HOSTS`` (comma list of host names, ``*.`` globs of names,
  addresses and CIDRs) lets some through: a listed name is trusted whatever it resolves to; a
  listed address or network admits the addresses in it.

Names are resolved. The web app's resolution is a courtesy (an early, clear 403); a name that
does not resolve there is left to the worker. The worker resolves again right before the fetch,
checks every address, and makes git use exactly those addresses: for ``http(s)`` with
``http.curloptResolve`` (curl's ``CURLOPT_RESOLVE``, so git never asks DNS itself and a name that
re-binds to ``127.0.0.1`` after the check changes nothing) and ``http.followRedirects=false`` (a
redirect would be a new, unchecked host); for ``git://`` by rewriting the URL to the checked
address (``url.<address>.insteadOf``). ``ssh`` resolves names itself (and ``~/.ssh/config`` may
alias them): it is checked, not pinned; a rebinding in between meets ssh's own host key check
(``BatchMode=yes``: an unknown host key fails the fetch). A worker that reaches the forge through
an HTTP proxy (``https_proxy``) leaves the name to the proxy: its egress rules apply there.

Clone URLs an operator wrote in the repository registry (``clone_url:`` in ``repos.yml``) are
trusted as configured and never checked (the run says so: ``context["clone_trusted"]``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

TRUSTED_KEY = "clone_trusted"  # in a run's context: the URL is the registry's, not checked
TRANSPORTS = ("https", "ssh", "git")  # plus http to allow-listed hosts, file when local repos are allowed
DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}
ALLOW_HINT = "add the host (or its address or network) to CIQ_CLONE_ALLOW_HOSTS on the web app and the workers"
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
# a DNS name whose last label starts with a letter: never a number inet_aton would take
_NAME_RE = re.compile(rf"(?:{_LABEL}\.)*[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?")
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
METADATA = ipaddress.IPv4Address("169.254.169.254")


class CloneRefused(ValueError):
    """The policy refuses the URL; ``status`` is the HTTP answer (400: not a clone URL we take
    at all, 403: a URL the farm's settings could allow), ``str()`` says why and how to allow it."""

    def __init__(self, reason: str, hint: str = "", status: int = 403) -> None:
        super().__init__(f"{reason}; {hint}" if hint else reason)
        self.reason, self.hint, self.status = reason, hint, status


class HostUnresolved(Exception):
    """The host's name did not resolve (a moment's DNS failure, or no such host)."""


@dataclass(frozen=True)
class CloneTarget:
    """A checked clone URL: where git will connect, and the addresses it may use there."""

    url: str
    scheme: str  # file | git | http | https | ssh
    host: str = ""  # lower case, IPv6 without brackets; "" for local repositories
    port: int | None = None  # as written; None: the transport's default
    authority: str = ""  # host[:port] as written in the URL (the part git's url.insteadOf matches)
    addresses: tuple[str, ...] = ()  # the checked addresses of a name; empty: a literal address or a trusted name

    def git_config(self) -> list[str]:
        """``git -c`` arguments that make git connect to the checked addresses only (see the
        module's doc); empty when there is nothing to pin."""
        if self.scheme in ("http", "https") and (self.addresses or _is_literal(self.host)):
            args = ["-c", "http.followRedirects=false"]
            if self.addresses:
                port = self.port or DEFAULT_PORTS[self.scheme]
                listed = ",".join(f"[{a}]" if ":" in a else a for a in self.addresses)
                args += ["-c", "http.curloptResolve=", "-c", f"http.curloptResolve={self.host}:{port}:{listed}"]
            return args
        if self.scheme == "git" and self.addresses:
            address = self.addresses[0]
            pinned = f"[{address}]" if ":" in address else address
            port = self.port or DEFAULT_PORTS["git"]
            return ["-c", f"url.git://{pinned}:{port}/.insteadOf=git://{self.authority}/"]
        return []


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` has (``getaddrinfo``, as git and curl ask); HostUnresolved if none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostUnresolved(f"{host} does not resolve ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


@dataclass(frozen=True)
class ClonePolicy:
    """The settings of the policy; ``check`` applies it to one URL."""

    allow_local: bool = False
    allow_names: tuple[str, ...] = ()  # lower case; may be `*.` globs
    allow_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ClonePolicy:
        names, networks = parse_allow_list(settings.clone_allow_hosts)
        return cls(**{"allow_local": settings.allow_local_repos, "allow_names": names,
                      "allow_networks": networks, **overrides})

    def check(self, url: str, *, must_resolve: bool = False) -> CloneTarget:
        """The checked target of ``url``; ``CloneRefused`` when the policy refuses it.

        A name that does not resolve passes unless ``must_resolve`` (the worker: then
        ``HostUnresolved``); its addresses are then checked by the worker before the fetch."""
        target = parse(url)
        if target.scheme == "file":
            if not self.allow_local:
                raise CloneRefused(f"local repositories (file:// URLs and paths) are refused: {url!r}",
                                   "only a development machine sets CIQ_ALLOW_LOCAL_REPOS=1 (standalone does)")
            return target
        if self._name_allowed(target.host):
            return target
        literal = _literal(target.host)
        if literal is not None:
            self._check_address(target, literal, str(literal))
            return target
        try:
            found = self.resolver(target.host, target.port or DEFAULT_PORTS[target.scheme])
        except HostUnresolved:
            if must_resolve:
                raise
            found = []
        if must_resolve and not found:
            raise HostUnresolved(f"{target.host} has no address")
        for text in found:
            self._check_address(target, ipaddress.ip_address(text), f"{target.host} ({text})")
        if target.scheme == "http" and not found:  # only a name that resolves into allowed networks
            raise CloneRefused(f"plain http:// is refused for {target.host}: use https://, ssh or git://", ALLOW_HINT)
        return CloneTarget(**{**target.__dict__, "addresses": tuple(found)})

    def _name_allowed(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.allow_names)

    def _address_allowed(self, address: IPAddress) -> bool:
        candidates = [address, *_embedded(address)]
        return any(a in network for a in candidates for network in self.allow_networks if a.version == network.version)

    def _check_address(self, target: CloneTarget, address: IPAddress, shown: str) -> None:
        if self._address_allowed(address):
            return
        if target.scheme == "http":
            raise CloneRefused(f"plain http:// is refused for {shown}: use https://, ssh or git://", ALLOW_HINT)
        kind = address_kind(address)
        if kind is not None:
            raise CloneRefused(f"{target.scheme} clone URL host {shown} is not a public address ({kind})", ALLOW_HINT)


def parse(url: str) -> CloneTarget:
    """Split a clone URL into transport, host and port, strictly (``CloneRefused`` with 400 for
    anything git could read otherwise than this does)."""
    if not isinstance(url, str) or not url:
        raise CloneRefused("the clone URL is empty", status=400)
    if url.startswith("-") or re.search(r"[\x00-\x20\x7f\\]", url):
        raise CloneRefused(f"refused clone URL {url[:200]!r}: it starts with '-' or holds spaces, control "
                           "characters or backslashes", status=400)
    match = _SCHEME_RE.match(url)
    if match:
        scheme = match.group(1).lower()
        if scheme == "file":
            return CloneTarget(url, "file")
        if scheme not in (*TRANSPORTS, "http"):
            raise CloneRefused(f"transport {scheme}:// is refused", "use https://, ssh or git://", status=400)
        rest = url[match.end():]
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        return _network_target(url, scheme, authority.rpartition("@")[2], authority)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*::", url):
        raise CloneRefused(f"refused clone URL {url[:200]!r}: '<transport>::' URLs are refused", status=400)
    if url.startswith("/"):
        return CloneTarget(url, "file")
    colon, slash = url.find(":"), url.find("/")
    if colon > 0 and (slash < 0 or colon < slash):  # scp-like [user@]host:path: ssh
        user_host = url[:colon]
        return _network_target(url, "ssh", user_host.rpartition("@")[2], user_host)
    raise CloneRefused(f"refused clone URL {url[:200]!r}: not a URL nor an absolute path", status=400)


def _network_target(url: str, scheme: str, hostport: str, authority: str) -> CloneTarget:
    if authority.count("@") > 1:
        raise CloneRefused(f"refused clone URL {url[:200]!r}: more than one '@' before the host", status=400)
    if hostport.startswith("["):
        end = hostport.find("]")
        host, after = (hostport[1:end], hostport[end + 1:]) if end > 0 else (hostport, "")
        address = _literal(host)
        if end < 0 or (after and not after.startswith(":")) or address is None or address.version != 6:
            raise CloneRefused(f"refused clone URL {url[:200]!r}: {hostport!r} is not [IPv6 address]:port",
                               status=400)
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
    host = host.lower()
    if port_text and (not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535):
        raise CloneRefused(f"refused clone URL {url[:200]!r}: bad port {port_text!r}", status=400)
    if not host or not (_is_literal(host) or _NAME_RE.fullmatch(host)):
        raise CloneRefused(f"refused clone URL {url[:200]!r}: {host!r} is neither a host name nor an IP address "
                           "written plainly", status=400)
    return CloneTarget(url, scheme, host, int(port_text) if port_text else None, hostport)


def _literal(host: str) -> IPAddress | None:
    """An IPv4 address in dotted-quad form or an IPv6 address (no zone), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_literal(host: str) -> bool:
    return _literal(host) is not None


def _embedded(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo client, NAT64)."""
    if address.version != 6:
        return []
    assert isinstance(address, ipaddress.IPv6Address)
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo:
        found.append(address.teredo[1])
    if any(address in network for network in _NAT64):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def address_kind(address: IPAddress) -> str | None:
    """What makes ``address`` one a clone may not reach (None: globally routable)."""
    for inner in _embedded(address):
        kind = address_kind(inner)
        if kind is not None:
            return f"{kind} (inside the IPv6 address {address})"
    if address == METADATA:
        return "link-local (the cloud metadata endpoint)"
    checks = (("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
              ("link-local", address.is_link_local), ("multicast", address.is_multicast),
              ("private", address.is_private), ("reserved", address.is_reserved),
              ("non-global", not address.is_global))
    return next((kind for kind, hit in checks if hit), None)


def parse_allow_list(text: str) -> tuple[tuple[str, ...], tuple[IPNetwork, ...]]:
    """``CIQ_CLONE_ALLOW_HOSTS``: (names and ``*.`` globs, networks); ValueError names a bad entry."""
    names: list[str] = []
    networks: list[IPNetwork] = []
    for raw in text.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry.startswith("[") and entry.endswith("]"):
            entry = entry[1:-1]
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        if _NAME_RE.fullmatch(entry.removeprefix("*.")):
            names.append(entry)
            continue
        raise ValueError(f"{raw.strip()!r} is not a host name, a `*.` glob of names, an address nor a CIDR")
    return tuple(names), tuple(networks)


def for_run(context: Mapping[str, Any], settings: Any) -> ClonePolicy | None:
    """The worker's policy for a run's clone URL: None when it is the registry's (trusted)."""
    return None if context.get(TRUSTED_KEY) else ClonePolicy.from_settings(settings)


def same_repository_url(a: str, b: str) -> bool:
    """Whether two clone URLs name the same repository as written (scheme and host in any case,
    with or without a trailing ``/`` or ``.git``)."""
    return _normal(a) == _normal(b)


def _normal(url: str) -> str:
    url = url.strip().rstrip("/").removesuffix(".git").rstrip("/")
    match = _SCHEME_RE.match(url)
    if not match:
        return url
    rest = url[match.end():]
    authority, slash, path = rest.partition("/")
    return f"{match.group(1).lower()}://{authority.lower()}{slash}{path}"
