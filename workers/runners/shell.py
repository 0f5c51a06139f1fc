"""The shell executor: each step is a bash (else sh) process on the build host itself.

- The step's script is written to a file in a private temporary directory and run as
  ``bash --noprofile --norc FILE`` (``sh FILE`` without bash), in the job's workspace, with stdin
  from ``/dev/null`` (a command reading stdin must not eat the script).
- Environment: exactly ``StepSpec.env``, plus, when the step does not set them, these few
  variables of the worker so that tools work as for any user: ``INHERITED_VARIABLES``
  (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``LANG``, ``LC_ALL``, ``LC_CTYPE``,
  ``TZ``, ``TMPDIR``), ``PATH`` defaulting to a standard one; plus ``CI_QUEUE_STEP_TOKEN``, which
  marks the step's processes (see ``workers.procs``). Nothing else of the worker's environment
  (its ``CIQ_*`` settings, its secrets) reaches the job. An environment the kernel refuses
  (E2BIG) is ``EnvironmentTooLarge``, which is not retried.
- Each step is its own session and process group. stdout and stderr are read as they come, by
  one ``selectors`` loop, into ``log.stream(step, "out" | "err")``: exact order within a stream;
  across the two, the order in which the loop sees them (writes to both pipes within the same
  instant, before the loop wakes up, may be read stdout first).
- At the deadline or when ``cancel()`` says so (polled every ``poll_interval``): SIGTERM to the
  group and to every process of the step, SIGKILL ``kill_grace_seconds`` later.
- With ``CIQ_SHELL_USER`` (``as_user``, ``workers.runners.shell_user``) the step runs as an
  unprivileged user of its own, with a private ``HOME`` and ``TMPDIR``, in a workspace handed
  over to that user; ``HOME``, ``USER``, ``LOGNAME``, ``SHELL`` and ``TMPDIR`` are that user's.
- While a step runs, the worker is a child subreaper (``workers.procs``), so that what the step
  orphans stays in the worker's process tree.
- When the step's main process has ended (however), output is drained for ``drain_seconds`` at
  most; then every process the step left behind is stopped the same way (SIGTERM, SIGKILL after
  the grace) and reaped. Nothing the step started survives it, even after success.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from loguru import logger

from ci_queue.clock import now_iso
from ci_queue.limits import arg_max, environment_bytes, environment_problem
from workers import guard, leftovers
from workers.logs import JobLog, LineStream
from workers.procs import TOKEN_VARIABLE, Proc, StepProcesses, subreaper_supported, subreaper_while_running
from workers.runners.base import (
    CancelCheck,
    EnvironmentTooLarge,
    InfrastructureError,
    JobEnvironment,
    StepOutcome,
    StepSpec,
)
from workers.runners.shell_user import UserSession

INHERITED_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_SIZE = 65536
SCRIPTS_PREFIX = "step-"  # the steps' script folders, under scripts_root()


def scripts_root() -> Path:
    """Where the steps' script folders are made: ``<temp dir>/ci-queue/scripts``."""
    return Path(tempfile.gettempdir()) / "ci-queue" / "scripts"


def find_shell() -> str:
    """``/bin/bash`` when there is one, else ``/bin/sh``."""
    for candidate in ("/bin/bash", "/usr/bin/bash"):
        if os.access(candidate, os.X_OK):
            return candidate
    return "/bin/sh"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _describe(procs: list[Proc], limit: int = 5) -> str:
    named = ", ".join(f"{p.comm} ({p.pid})" for p in procs[:limit])
    return named + (f" and {len(procs) - limit} more" if len(procs) > limit else "")


def _too_large(env: dict[str, str]) -> str:
    """Why the kernel said E2BIG, in names and sizes (never a value)."""
    why = environment_problem(env, arg_max()) or f"the environment is {environment_bytes(env)} bytes " \
                                                  f"({len(env)} variables)"
    return f"the kernel refused to start the step (E2BIG, argument list too long): {why}"


class ShellRunner:
    """Runs steps as local shell processes. See the module docstring."""

    name = "shell"

    def __init__(self, kill_grace_seconds: float = 10.0, *, shell: str | None = None,
                 inherit: tuple[str, ...] = INHERITED_VARIABLES, drain_seconds: float = 0.5,
                 poll_interval: float = 0.1, as_user: UserSession | None = None) -> None:
        self.kill_grace_seconds = max(0.0, float(kill_grace_seconds))
        self.shell = shell or find_shell()
        self.inherit = inherit
        self.drain_seconds = drain_seconds
        self.poll_interval = poll_interval
        self.subreaper = subreaper_supported()
        self.workspace: Path | None = None
        self._job_key = ""  # the guard's name of the job attempt (workers.guard.job_key)
        self._tmp: str | None = None
        self._held: int | None = None
        self._steps = 0
        self.as_user = as_user  # CIQ_SHELL_USER: the job runs as an unprivileged user (shell_user.py)

    # -- life cycle -----------------------------------------------------------------------------

    def prepare(self, env: JobEnvironment, log: JobLog) -> None:
        workspace = Path(env.workspace)
        if not workspace.is_dir():
            raise InfrastructureError(f"the workspace {workspace} does not exist or is not a directory")
        if not os.access(self.shell, os.X_OK):
            raise InfrastructureError(f"no shell to run the job: {self.shell} is not executable")
        self.workspace = workspace
        self._job_key = guard.job_key(env.run_id, env.job_name, env.attempt)
        try:  # held while in use: a worker starting later leaves it alone
            path, self._held = leftovers.made_held(scripts_root(), SCRIPTS_PREFIX)
        except OSError as exc:
            raise InfrastructureError(f"cannot create a scratch directory for the job's scripts: {exc}") from exc
        self._tmp = str(path)
        log.system("prepare", f"Using the shell executor: {self.shell} on {os.uname().nodename}")
        if self.as_user is not None and not self.as_user.start(env, path, log):
            return  # canceled while waiting for a user: the job ends before any step
        if not self.subreaper:
            log.system("prepare", "warning: this host cannot make the worker a child subreaper; a process that "
                                  "leaves the step's session and is orphaned may survive the step")

    def cleanup(self) -> None:
        if self.as_user is not None:
            self.as_user.end()  # first: none of the user's processes writes into what is removed next
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            leftovers.release(self._held)
            self._held = None

    def environment(self, step_env: dict[str, str] | object) -> dict[str, str]:
        """The environment a step's process gets (without the step token)."""
        env = {name: os.environ[name] for name in self.inherit if name in os.environ}
        if self.as_user is not None:  # the job's user's HOME, USER, LOGNAME, SHELL, TMPDIR replace the worker's
            env.update(self.as_user.environment(self.shell))
        env.update({str(k): str(v) for k, v in dict(step_env).items()})
        env.setdefault("PATH", DEFAULT_PATH)
        return env

    # -- one step -------------------------------------------------------------------------------

    def run(self, step: StepSpec, log: JobLog, cancel: CancelCheck) -> StepOutcome:
        if self.workspace is None or self._tmp is None:
            raise RuntimeError("ShellRunner.run() before prepare()")
        if self.as_user is not None and self.as_user.slot is None:
            raise RuntimeError("ShellRunner.run() without the job's user (canceled while waiting for one)")
        self._steps += 1
        script = Path(self._tmp) / f"{self._steps:02d}-{step.name}.sh"
        try:
            script.write_text(step.script, encoding="utf-8", errors="surrogateescape")
            if self.as_user is not None:
                self.as_user.own_script(script)
        except OSError as exc:
            raise InfrastructureError(f"cannot write the step's script: {exc}") from exc
        if self.as_user is not None:
            self.as_user.before_step()
        token = uuid.uuid4().hex
        env = self.environment(step.env)
        env[TOKEN_VARIABLE] = token
        env = {k: v.replace("\0", "") for k, v in env.items() if k and "=" not in k and "\0" not in k}
        argv = [self.shell, "--noprofile", "--norc", str(script)] if "bash" in Path(self.shell).name \
            else [self.shell, str(script)]
        options: dict[str, object] = {}
        if self.as_user is not None:
            argv, options = self.as_user.argv(argv), self.as_user.popen_options()
        started_at = now_iso()
        start = time.monotonic()
        with subreaper_while_running():
            try:
                proc = subprocess.Popen(argv, cwd=self.workspace, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                        close_fds=True, **options)
            except OSError as exc:
                if exc.errno == errno.E2BIG:
                    raise EnvironmentTooLarge(_too_large(env)) from exc
                raise InfrastructureError(f"cannot start {self.shell} in {self.workspace}: {exc}") from exc
            guarded = bool(self._job_key) and guard.guarded(self._job_key)
            if guarded:  # a worker's job: its steps run only under its lease
                guard.client().watch(self._job_key, token, proc.pid)
            try:
                supervisor = _Supervisor(self, proc, token, step, log, cancel, start)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            try:
                reason = supervisor.run()
            finally:
                supervisor.finish()
                if guarded:
                    guard.client().unwatch(self._job_key, token)
        finished_at = now_iso()
        duration = round(time.monotonic() - start, 3)
        code = proc.returncode
        exit_code = None if code is None else (code if code >= 0 else 128 - code)
        if reason is not None:
            return StepOutcome(reason, None, started_at, finished_at, duration)
        return StepOutcome("success" if exit_code == 0 else "failed", exit_code, started_at, finished_at, duration)


class _Supervisor:
    """The reader loop of one step: output, deadline, cancel, drain, leftovers."""

    def __init__(self, runner: ShellRunner, proc: subprocess.Popen, token: str, step: StepSpec, log: JobLog,
                 cancel: CancelCheck, start: float) -> None:
        self.runner = runner
        self.proc = proc
        self.step = step
        self.log = log
        self.cancel = cancel
        self.procs = StepProcesses(proc.pid, token, popen=proc)
        self.deadline = start + max(0.0, step.timeout)
        self.selector = selectors.DefaultSelector()
        self.streams: list[LineStream] = []
        self.stop_reason: str | None = None
        self.kill_at: float | None = None
        self.killed = False
        self.swept = False
        self.cancel_failed = False
        for pipe, name in ((proc.stdout, "out"), (proc.stderr, "err")):
            stream = log.stream(step.name, name)
            self.streams.append(stream)
            self.selector.register(pipe, selectors.EVENT_READ, stream)

    def run(self) -> str | None:
        """Supervise the step to its end; the stop reason ("timeout" / "canceled") or None."""
        runner = self.runner
        exited_at: float | None = None
        next_poll = 0.0
        eof_deadline: float | None = None
        while True:
            now = time.monotonic()
            wait = runner.poll_interval
            if exited_at is None and self.stop_reason is None:
                wait = min(wait, max(0.0, self.deadline - now))
            if self.kill_at is not None and not self.killed:
                wait = min(wait, max(0.0, self.kill_at - now))
            if self.selector.get_map():
                for key, _ in self.selector.select(wait):
                    self._read(key)
            elif exited_at is None:  # the step closed its output but still runs
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(wait)
            now = time.monotonic()
            if exited_at is None:
                if self.proc.poll() is not None:
                    exited_at = now
                elif self.stop_reason is None:
                    if now >= self.deadline:
                        self._stop("timeout", f"the step exceeded its timeout of {_seconds(self.step.timeout)}: "
                                              "stopping it")
                    elif now >= next_poll:
                        next_poll = now + runner.poll_interval
                        self.procs.observe()
                        if self._canceled():
                            self._stop("canceled", "the job was canceled: stopping the step")
                elif not self.killed and self.kill_at is not None and now >= self.kill_at:
                    self.procs.signal(signal.SIGKILL)
                    self.killed = True
            if exited_at is None:
                continue
            if not self.selector.get_map():
                break
            if not self.swept and now - exited_at >= runner.drain_seconds:
                # Something the step left behind still holds the output open: stop it.
                self._sweep()
                eof_deadline = time.monotonic() + 2.0
            if eof_deadline is not None and now >= eof_deadline:
                break
        return self.stop_reason

    def _read(self, key: selectors.SelectorKey) -> None:
        try:
            data = os.read(key.fd, READ_SIZE)
        except OSError:
            data = b""
        if data:
            key.data.feed(data)
        else:
            self.selector.unregister(key.fileobj)
            key.fileobj.close()

    def _canceled(self) -> bool:
        try:
            return bool(self.cancel())
        except Exception as exc:  # a broken cancel check must not break the step
            if not self.cancel_failed:
                self.cancel_failed = True
                logger.warning("the cancel check failed, assuming not canceled: {}: {}", type(exc).__name__, exc)
            return False

    def _stop(self, reason: str, why: str) -> None:
        grace = self.runner.kill_grace_seconds
        self.stop_reason = reason
        self.kill_at = time.monotonic() + grace
        self.log.system(self.step.name, f"{why} (SIGTERM now, SIGKILL after {_seconds(grace)})")
        self.procs.signal(signal.SIGTERM)

    def _sweep(self) -> None:
        """Stop and reap whatever the step left running."""
        self.swept = True
        if self.stop_reason is not None and self.kill_at is not None:
            left = self.procs.terminate(self.kill_at, term_sent=True)
        else:
            left = self.procs.terminate(time.monotonic() + self.runner.kill_grace_seconds)
        left.sort(key=lambda p: p.pid)
        if left and self.stop_reason is None:
            self.log.system(self.step.name, f"stopped {len(left)} process{'es' * (len(left) != 1)} the step left "
                                            f"running: {_describe(left)}")

    def finish(self) -> None:
        """Always: nothing of the step survives, pipes closed, partial lines flushed."""
        try:
            if self.proc.poll() is None:  # only on an error in the loop: stop everything now
                self.procs.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
            if not self.swept:
                self._sweep()
            for key in list(self.selector.get_map().values()):
                # read what is still buffered in the pipe (the writers are gone), then close
                with contextlib.suppress(OSError):
                    os.set_blocking(key.fd, False)
                    while True:
                        data = os.read(key.fd, READ_SIZE)
                        if not data:
                            break
                        key.data.feed(data)
                self.selector.unregister(key.fileobj)
                key.fileobj.close()
            self.selector.close()
        finally:
            self.procs.close()
            for stream in self.streams:
                stream.close()
