"""A test bed of build hosts: Linux network namespaces made by the test, each with its own
hostname (a UTS namespace), workspace, git cache and temp directories, joined by veth pairs to a
hub namespace that runs Redis. Addresses live only on those veth pairs (10.213.<bed>.0/24), inside
namespaces the test made; everything is removed afterwards. The test itself talks to Redis
through a unix socket, which network namespaces do not separate.

Needs root (CI runs as root); elsewhere the tests are skipped with the reason, in CI they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from ci_queue.settings import Settings
from ci_queue.store import Store
from tests.conftest import REPO, in_ci
from tests.engine.conftest import engine_env

LEASE_SECONDS = 10
REDIS_PORT = 6379


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _netns_usable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "redis-server"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"ciq-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"cannot make a network namespace: {exc.stderr.strip()}"
    _ip("netns", "delete", probe)
    return None


@dataclass
class Host:
    """One build host: a namespace, a veth pair to the hub, its own directories."""

    name: str
    netns: str
    address: str
    link: str  # the host's end of its veth pair
    root: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *argv: str, env: dict[str, str], log: Path) -> subprocess.Popen:
        """A process on this host: in its network namespace, under its own hostname."""
        command = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                   f'hostname {self.name} && exec "$@"', "sh", *argv]
        proc = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def cut(self) -> None:
        """Take the host's link down: it is partitioned from Redis (and everything else)."""
        _ip("-n", self.netns, "link", "set", self.link, "down")

    hub_address: str = ""

    def mend(self) -> None:
        """The link back up, and its route (the kernel dropped it with the link)."""
        _ip("-n", self.netns, "link", "set", self.link, "up")
        _ip("-n", self.netns, "route", "replace", f"{self.hub_address}/32", "dev", self.link)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def reboot(self) -> None:
        """Every process of the host killed, as a power cut or a reboot does. One pass can miss a
        process forked between the listing and the kills (a pool child replaced, a step's
        command), so the kills repeat until the namespace holds none."""
        deadline = time.monotonic() + 30
        while pids := self.pids():
            assert time.monotonic() < deadline, f"processes of {self.name} survive SIGKILL: {pids}"
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


class Bed:
    """The hub (Redis) and the build hosts."""

    def __init__(self, workdir: Path) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.subnet = 100 + int(self.id, 16) % 100
        self.workdir = workdir
        self.hub = f"ciq-hub-{self.id}"
        self.hub_address = f"10.213.{self.subnet}.1"
        self.socket = workdir / "redis.sock"
        self.hosts: list[Host] = []
        self.redis: subprocess.Popen | None = None
        self.prefix = f"ciq-bed-{self.id}:"
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "addr", "add", f"{self.hub_address}/32", "dev", "lo")

    @property
    def redis_url(self) -> str:
        return f"redis://{self.hub_address}:{REDIS_PORT}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), decode_responses=True)

    def start_redis(self) -> None:
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        self.redis = subprocess.Popen(
            ["ip", "netns", "exec", self.hub, "redis-server", "--port", str(REDIS_PORT), "--bind", self.hub_address,
             "--unixsocket", str(self.socket), "--unixsocketperm", "700", "--dir", str(data), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no",
             "--logfile", str(data / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the hub's Redis did not start"
            time.sleep(0.05)

    def kill_redis(self) -> None:
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait(timeout=10)

    def add_host(self, name: str) -> Host:
        k = len(self.hosts) + 1
        netns, link, peer = f"ciq-{name}-{self.id}", f"ci{k}h{self.id}", f"ci{k}b{self.id}"
        address = f"10.213.{self.subnet}.{10 + k}"
        _ip("netns", "add", netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "link", "add", link, "type", "veth", "peer", "name", peer, "netns", self.hub)
        _ip("-n", netns, "addr", "add", f"{address}/32", "dev", link)
        _ip("-n", netns, "link", "set", link, "up")
        _ip("-n", netns, "route", "add", f"{self.hub_address}/32", "dev", link)
        _ip("-n", self.hub, "link", "set", peer, "up")
        _ip("-n", self.hub, "route", "add", f"{address}/32", "dev", peer)
        host = Host(name, netns, address, link, self.workdir / name, hub_address=self.hub_address)
        (host.root / "tmp").mkdir(parents=True)
        self.hosts.append(host)
        return host

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        return {**engine_env(self.redis_url, self.prefix, host.root, CIQ_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
                             **extra), "TMPDIR": str(host.root / "tmp")}

    def start_worker(self, host: Host, name: str, concurrency: int = 1) -> subprocess.Popen:
        log = host.root / f"{name}-{len(host.procs)}.log"  # a worker started again gets a log of its own
        proc = host.run(sys.executable, "-m", "ci_queue.cli", "worker", "--name", name, "--concurrency",
                        str(concurrency), env=self.env(host), log=log)
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        return proc

    def store(self) -> Store:
        return Store(self.client(), self.prefix, 3600)

    def settings(self) -> Settings:
        return Settings.from_env(self.env(self.hosts[0]))

    def remove(self) -> None:
        for host in self.hosts:
            host.reboot()
            subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True)
        self.kill_redis()
        subprocess.run(["ip", "netns", "delete", self.hub], capture_output=True)


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    why = _netns_usable()
    if why is not None:
        if in_ci():
            pytest.fail(f"the multi-host test bed cannot run: {why}; CI must be able to")
        pytest.skip(f"the multi-host test bed cannot run: {why}")
    bed = Bed(tmp_path)
    try:
        bed.start_redis()
        yield bed
    finally:
        bed.remove()
