"""Redis Sentinel: the broker and the state through ``sentinel://`` URLs, and a failover of the
primary during a running pipeline (1 primary, 1 replica, 3 Sentinels, all real ``redis-server``
processes on this machine): the run finishes, nothing lost, nothing run twice."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from ci_queue import redis_urls
from ci_queue.settings import Settings
from ci_queue.standalone import free_port
from ci_queue.store import Store
from tests.conftest import RedisServer, wait_until
from tests.engine.conftest import Engine, make_repo
from tests.faults.conftest import engine_env
from tests.secure_redis import ACL_PASSWORD, ACL_USER, DEFAULT_PASSWORD, SecureRedis, assert_hidden

MASTER = "mymaster"
REDIS_AWAY = (redis.RedisError,)  # the test's own reads meet the failover too
SENTINEL_PASSWORD = "sentinel-Pw-41f0"




class Topology:
    """One primary, one replica, three Sentinels (quorum 2), on free ports of 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.primary = RedisServer(directory / "primary")
        self.replica = RedisServer(directory / "replica", ("--replicaof", "127.0.0.1", str(self.primary.port)))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []
        self.directory = directory

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def start(self) -> Topology:
        self.primary.start()
        self.replica.start()
        wait_until(lambda: self.replica.client().info("replication")["master_link_status"] == "up", 30,
                   "replication", ignore=REDIS_AWAY)
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                            f"sentinel down-after-milliseconds {MASTER} 1000\n"
                            f"sentinel failover-timeout {MASTER} 10000\n")
            self.sentinels.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port, decode_responses=True, socket_timeout=1)
            wait_until(lambda s=sentinel: s.sentinel_master(MASTER)["num-other-sentinels"] == 2
                       and s.sentinel_master(MASTER)["num-slaves"] == 1, 30, "the Sentinels finding each other",
                       ignore=REDIS_AWAY)
        return self

    def current_primary_port(self) -> int:
        sentinel = redis.Redis(port=self.sentinel_ports[0], decode_responses=True, socket_timeout=1)
        return int(sentinel.sentinel_get_master_addr_by_name(MASTER)[1])

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait(timeout=10)
        self.primary.kill()
        self.replica.kill()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    topology = Topology(tmp_path / "sentinel")
    try:
        yield topology.start()
    finally:
        topology.stop()


def test_urls_through_sentinel_reach_the_primary(topology: Topology):
    client = redis_urls.client(topology.url, redis_urls.Access(sentinel_master=MASTER), decode_responses=True)
    client.set("ciq-test:probe", "1")
    assert topology.primary.client().get("ciq-test:probe") == "1"
    assert redis_urls.sentinel_parts("sentinel://u:pw@h1:1/3;sentinel://h2:2") == ([("h1", 1), ("h2", 2)], "u", "pw", 3)
    assert redis_urls.redact("sentinel://:pw@h1:1;sentinel://:pw@h2:2/0") == "sentinel://***@h1:1;sentinel://***@h2:2/0"


def test_passwords_of_the_primary_and_of_the_sentinel_each_go_where_they_belong(tmp_path: Path):
    """A primary that wants the ACL user's password and a Sentinel that wants its own: the
    broker (kombu's Sentinel transport) and the state reach the primary through it, a job runs,
    and the worker printed neither password."""
    primary = SecureRedis(tmp_path / "primary").start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nrequirepass {SENTINEL_PASSWORD}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
                    f"sentinel auth-pass {MASTER} {DEFAULT_PASSWORD}\n")
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    url = f"sentinel://{ACL_USER}:{quote(ACL_PASSWORD, safe='')}@127.0.0.1:{port}/0"
    env = engine_env(url, tmp_path, CIQ_REDIS_SENTINEL_PASSWORD=SENTINEL_PASSWORD)
    settings = Settings.from_env(env)
    access = redis_urls.Access.from_settings(settings)
    try:
        probe = redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=1)
        wait_until(lambda: probe.sentinel_get_master_addr_by_name(MASTER), 30, "the Sentinel naming the primary",
                   ignore=REDIS_AWAY)
        assert "refused the credentials" in redis_urls.unreachable(url, redis_urls.Access()), "the Sentinel's own"
        assert redis_urls.unreachable(url, access) is None
        engine = Engine(settings=settings, env=env, workdir=tmp_path,
                        store=Store(redis_urls.client(url, access, decode_responses=True), settings.key_prefix, 3600))
        try:
            engine.start_worker("w1")
            make_repo(tmp_path / "repo", {".ci-queue.yml": "hello:\n  script: echo hello-through-sentinel\n"})
            run = engine.wait(engine.trigger(tmp_path / "repo"), timeout=60)
            assert run.status == "success", run.to_dict()
            log = "".join(fields["text"] for _, fields in engine.store.read_log(run.id, 0))
            assert "hello-through-sentinel" in log
            worker_log = (tmp_path / "w1.log").read_text(errors="replace")  # all of it
        finally:
            engine.stop_workers()
    finally:
        sentinel.kill()
        sentinel.wait(timeout=10)
        primary.kill()
    assert f"sentinel://{ACL_USER}:**@127.0.0.1:{port}/0" in worker_log, worker_log  # Celery's banner, masked
    assert "sweeper tick failed" not in worker_log, worker_log
    assert_hidden({"worker log": worker_log}, [*primary.secrets(), SENTINEL_PASSWORD])


def test_a_failover_during_a_run_loses_nothing_and_runs_nothing_twice(topology: Topology, tmp_path: Path):
    env = engine_env(topology.url, tmp_path, CIQ_REDIS_WAIT_REPLICAS="1")
    settings = Settings.from_env(env)
    store = Store(redis_urls.client(topology.url, redis_urls.Access(sentinel_master=MASTER), decode_responses=True),
                  settings.key_prefix, 3600)
    engine = Engine(settings=settings, env=env, store=store, workdir=tmp_path)
    try:
        workers = [engine.start_worker("w1", concurrency=2), engine.start_worker("w2", concurrency=2)]
        make_repo(tmp_path / "repo", {".ci-queue.yml": """
stages: [build, test]
a:
  stage: build
  script:
    - for i in $(seq 1 40); do echo "a $i"; sleep 0.1; done
b:
  stage: build
  script:
    - sleep 2
c:
  stage: test
  script:
    - echo c-done
"""})
        run_id = engine.trigger(tmp_path / "repo")
        wait_until(lambda: (r := engine.store.get_run(run_id)) is not None and len(r.jobs) == 3
                   and r.jobs[0].status == "running", 60, "job a running", ignore=REDIS_AWAY)
        old = topology.primary.port
        topology.primary.kill()
        killed = time.monotonic()
        wait_until(lambda: topology.current_primary_port() != old, 30, "the Sentinels promoting the replica",
                   ignore=REDIS_AWAY)
        failover = time.monotonic() - killed
        # the test's own client meets the failover too: read again until the new primary answers
        wait_until(lambda: engine.store.get_run(run_id).status in ("success", "failed", "canceled", "error"), 120,
                   "the run finishing", ignore=REDIS_AWAY)
        run = engine.store.get_run(run_id)
        assert run.status == "success", run.to_dict()
        assert [job.attempt for job in run.jobs] == [1, 1, 1], [job.attempts for job in run.jobs]
        log = "\n".join(fields["text"] for _, fields in engine.store.read_log(run_id, 0)) + "\n"
        assert all(f"a {i}\n" in log for i in range(1, 41)), "log lines were lost in the failover"
        assert all(p.poll() is None for p in workers), "a worker exited in the failover"
        assert failover < 30
    finally:
        engine.stop_workers()
