"""Shell jobs as unprivileged users (CIQ_SHELL_USER): real users (made with ``useradd`` for the
test, removed after), real processes, real permission checks by the kernel.

Needs root (the worker switches users): skipped otherwise on a developer's machine, a failure in
CI (CI=true). The workspaces live under a directory of /tmp that other users may pass through
(pytest's own temp directories are root's only, which the job's user could not reach).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import in_ci, process_state, wait_until
from tests.engine.conftest import engine  # noqa: F401  (a fixture)
from workers import jobusers
from workers.jobusers import JobUser, ShellUserError, job_users, user_names
from workers.logs import JobLog, MemorySink
from workers.runners.base import InfrastructureError, JobEnvironment, StepSpec
from workers.runners.shell import ShellRunner
from workers.runners.shell_user import UserSession
from workers.workspace import Workspace


def require_root() -> None:
    missing = None
    if os.geteuid() != 0:
        missing = "the shell user tests need root (the worker switches to the job's user)"
    elif shutil.which("useradd") is None or shutil.which("userdel") is None:
        missing = "useradd / userdel are not installed"
    if missing:
        if in_ci():
            pytest.fail(missing + "; CI runs as root with them")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def users() -> Iterator[list[JobUser]]:
    """Three throwaway system users (no home, no login shell), deleted after the module."""
    require_root()
    names = [f"ciqt{uuid.uuid4().hex[:6]}{i}" for i in range(3)]
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                            name], check=True, capture_output=True, timeout=60)
            made.append(name)
        yield [JobUser.lookup(name) for name in names]
    finally:
        for name in made:
            jobusers.kill_processes_of(JobUser.lookup(name).uid)
            subprocess.run(["userdel", name], capture_output=True, timeout=60)


@pytest.fixture
def root() -> Iterator[Path]:
    """A workspace root the job users can pass through (mode 0711 under /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="ciq-test-shell-user-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class UserJob:
    """A workspace under ``root`` and a shell runner running as one of ``users``."""

    def __init__(self, users: list[JobUser], root: Path, *, protect: list[Path] | None = None,
                 sockets: list[str] | None = None, cancel=None) -> None:
        self.workspace = Workspace(f"run-{uuid.uuid4().hex[:8]}", "job", 1, root=root, keep=False)
        self.workspace.create()
        self.session = UserSession(users, root, protect or [], sockets or [])
        self.runner = ShellRunner(kill_grace_seconds=1.0, as_user=self.session)
        self.sink = MemorySink()
        self.log = JobLog(self.sink, run_id=self.workspace.run_id, job="job", max_bytes=1 << 20)
        self.cancel = cancel

    @property
    def build(self) -> Path:
        return self.workspace.builds_dir

    def prepare(self) -> UserJob:
        self.runner.prepare(JobEnvironment(self.build, str(self.build), None, self.workspace.run_id, "job", 1,
                                           cancel=self.cancel), self.log)
        return self

    def run(self, script: str):
        return self.runner.run(StepSpec("script", script, {"CI": "true"}, 30), self.log, lambda: False)

    def out(self) -> list[str]:
        return self.sink.texts("out")

    def err(self) -> str:
        return "\n".join(self.sink.texts("err"))

    def close(self) -> None:
        self.runner.cleanup()
        self.workspace.remove()


@pytest.fixture
def make_job(users, root) -> Iterator:
    jobs: list[UserJob] = []

    def make(job_users: list[JobUser] | None = None, **options) -> UserJob:
        job = UserJob(job_users or users[:1], root, **options)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.close()


def test_a_step_runs_as_the_user_in_its_own_workspace_and_home(make_job, users):
    job = make_job().prepare()
    user = job.session.user
    (job.build / "restored.txt").write_text("unpacked by the worker before the script (cache, artifacts)\n")
    outcome = job.run("id -u; id -g; echo $USER $LOGNAME; echo $HOME; echo $TMPDIR\n"
                      "grep NoNewPrivs /proc/self/status\n"
                      "touch made-by-job && mkdir -p ro/deep && touch ro/deep/f && chmod -R a-w ro\n"
                      "echo mine >> restored.txt && rm restored.txt && echo restored-file-removed\n"
                      'echo private > "$HOME/.netrc" && mktemp >/dev/null && echo home-and-tmp-writable\n'
                      "sudo -n true 2>/dev/null || echo no-sudo\n")
    assert outcome.status == "success", job.err()
    uid, gid, names, home, tmp, nnp, *rest = job.out()
    assert (int(uid), int(gid), names) == (user.uid, user.gid, f"{user.name} {user.name}")
    assert nnp.split() == ["NoNewPrivs:", "1"]
    assert rest == ["restored-file-removed", "home-and-tmp-writable", "no-sudo"]
    for private in (home, tmp):
        info = os.stat(private)
        assert (info.st_uid, info.st_mode & 0o777) == (user.uid, 0o700)
    assert (job.build / "made-by-job").stat().st_uid == user.uid
    assert os.stat(job.build).st_mode & 0o777 == 0o700 and os.stat(job.build.parent).st_mode & 0o777 == 0o711
    assert f"Running the job as {user.name} (uid {user.uid}" in "\n".join(job.sink.texts("system"))
    top = job.workspace.path
    job.close()  # the worker (root) removes what the job made, read-only directories included
    assert not top.exists() and not Path(home).exists()


def test_the_job_cannot_read_the_worker_environment_nor_the_secrets_file(make_job, root, monkeypatch):
    marker = f"worker-only-{uuid.uuid4().hex}"
    monkeypatch.setenv("CIQ_TEST_WORKER_SECRET", marker)  # this test process is the worker
    secrets = root / "secrets.env"
    secrets.write_text(f"DEPLOY_TOKEN={marker}\n")
    secrets.chmod(0o600)
    job = make_job(protect=[secrets]).prepare()
    outcome = job.run(f"cat /proc/{os.getpid()}/environ || echo environ-denied\n"
                      f"cat /proc/$PPID/environ || echo parent-environ-denied\n"
                      f"cat {secrets} || echo secrets-denied\n"
                      "env")
    assert outcome.status == "success", job.err()
    assert {"environ-denied", "parent-environ-denied", "secrets-denied"} <= set(job.out())
    assert job.err().count("Permission denied") == 3, job.err()
    assert marker not in "\n".join(job.out() + job.sink.texts("err"))


def test_a_job_is_refused_when_its_user_could_read_what_it_must_not(make_job, root, users):
    secrets = root / "secrets.env"
    secrets.write_text("DEPLOY_TOKEN=x\n")
    secrets.chmod(0o644)
    job = make_job(protect=[secrets])
    with pytest.raises(InfrastructureError, match=r"could read .*secrets.env \(mode 0644\).*chmod 600"):
        job.prepare()
    job.close()
    # a directory of the worker's own (the git cache) is closed instead: the job runs
    cache = root / "git-cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    job = make_job(protect=[cache]).prepare()
    assert cache.stat().st_mode & 0o777 == 0o700
    assert job.run(f"ls {cache} || echo cache-denied").status == "success" and "cache-denied" in job.out()
    # the engine's socket: a user that could connect to it is refused
    sock = root / "engine.sock"
    sock.touch(mode=0o666)
    sock.chmod(0o666)
    job = make_job(users[1:2], sockets=[str(sock)])
    with pytest.raises(InfrastructureError, match="could connect to the container engine's socket"):
        job.prepare()


def test_another_jobs_workspace_and_home_are_out_of_reach(make_job, users):
    first = make_job(users[:1]).prepare()
    second = make_job(users[1:2]).prepare()
    assert first.run('echo "first job secret" > secret.txt; echo "$HOME"').status == "success"
    home = first.out()[-1]
    outcome = second.run(f"cat {first.build}/secret.txt || echo file-denied\n"
                         f"ls {first.build} || echo build-denied\n"
                         f"ls {first.workspace.path} || echo workspace-denied\n"
                         f"ls {home} || echo home-denied\n")
    assert outcome.status == "success", second.err()
    assert [line for line in second.out() if line.endswith("-denied")] == [
        "file-denied", "build-denied", "workspace-denied", "home-denied"]
    assert "first job secret" not in "\n".join(second.out())


def test_one_job_per_user_at_a_time(make_job, users):
    first = make_job(users[:1]).prepare()
    second = make_job(users[:1])
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (second.prepare(), done.set()), daemon=True)
    waiter.start()
    wait_until(lambda: any("Waiting for a free shell user" in t for t in second.sink.texts("system")), 10,
               "the second job waiting for the only user")
    assert not done.is_set()
    first.close()
    assert done.wait(10), "the second job did not get the user once the first one ended"
    assert second.session.user == users[0]
    # canceled while waiting: prepare returns without a user, and no step can run
    third = make_job(users[:1], cancel=lambda: True).prepare()
    assert third.session.slot is None
    with pytest.raises(RuntimeError, match="without the job's user"):
        third.run("true")


def test_concurrent_jobs_get_distinct_users(make_job, users):
    jobs = [make_job(users[:2]).prepare() for _ in range(2)]
    assert {job.session.user.uid for job in jobs} == {users[0].uid, users[1].uid}


def test_nothing_of_the_user_survives_the_job(make_job, users):
    job = make_job(users[2:3]).prepare()
    tag = uuid.uuid4().hex[:8]
    assert job.run(f"echo x > /tmp/ciq-left-{tag}; mkdir /dev/shm/ciq-left-{tag}; echo y > /var/tmp/ciq-left-{tag}"
                   ).status == "success"
    # a process of the user that is not in the step's tree (as `at` or a crontab would start it)
    other = subprocess.Popen(["sleep", "300"], user=users[2].uid, group=users[2].gid, start_new_session=True)
    try:
        job.runner.cleanup()
        wait_until(lambda: other.poll() is not None, 10, "the user's stray process killed")
        assert process_state(other.pid) is None
        for place in ("/tmp", "/dev/shm", "/var/tmp"):
            assert not os.path.lexists(f"{place}/ciq-left-{tag}"), place
        assert os.stat(job.workspace.path).st_mode & 0o777 == 0o700  # root's only again (CIQ_KEEP_WORKSPACES)
    finally:
        if other.poll() is None:
            other.kill()
        other.wait()


def test_the_git_cache_hard_links_stay_roots(make_job, root):
    """``git clone`` from the local mirror hard-links its pack files: giving them to the job would
    give it the mirror's copy."""
    mirror_pack = root / "mirror-pack"
    mirror_pack.write_text("pack data\n")
    mirror_pack.chmod(0o444)
    job = make_job()
    (job.build / ".git").mkdir()
    os.link(mirror_pack, job.build / ".git" / "pack")
    job.prepare()
    outcome = job.run("cat .git/pack; echo tampered >> .git/pack || echo write-denied\n"
                      "rm -f .git/pack && echo unlinked")
    assert outcome.status == "success", job.err()
    assert job.out() == ["pack data", "write-denied", "unlinked"]
    assert mirror_pack.read_text() == "pack data\n" and mirror_pack.stat().st_uid == 0


def test_only_the_workers_own_workspaces(users, tmp_path):
    require_root()
    elsewhere = tmp_path / "checkout"
    elsewhere.mkdir()
    runner = ShellRunner(1.0, as_user=UserSession(users[:1], tmp_path / "workspaces", [], []))
    try:
        with pytest.raises(InfrastructureError, match="only in the worker's own workspaces"):
            runner.prepare(JobEnvironment(elsewhere, str(elsewhere), None, "run", "job", 1),
                           JobLog(MemorySink(), run_id="run", job="job", max_bytes=1 << 20))
    finally:
        runner.cleanup()


def test_user_lists_and_lookups(users):
    assert user_names("a, ciq{1..3},b") == ["a", "ciq1", "ciq2", "ciq3", "b"]
    assert user_names(" x{08..10} ") == ["x8", "x9", "x10"]
    for bad in ("a{1..2}{3..4}", "a{3..1}", "a{1..x}", "a}"):
        with pytest.raises(ShellUserError):
            user_names(bad)
    with pytest.raises(ShellUserError, match="root"):
        job_users("root")
    with pytest.raises(ShellUserError, match="no user"):
        job_users("ciq-no-such-user-here")
    with pytest.raises(ShellUserError, match="same uid"):
        job_users(f"{users[0].name},{users[0].uid}")
    assert job_users(f"{users[0].name}, {users[1].name}") == users[:2]


def test_unsafe_directories_for_a_root_worker(users, root):
    assert jobusers.unsafe_directory(root) is None  # /tmp above it is sticky: nobody can swap root
    assert "writable by others" in jobusers.unsafe_directory("/tmp")  # but not a place to work in itself
    theirs = root / "theirs"
    theirs.mkdir()
    os.chown(theirs, users[0].uid, users[0].gid)
    assert "belongs to uid" in jobusers.unsafe_directory(theirs / ".")
    shared = root / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert "writable by others" in jobusers.unsafe_directory(shared)


def test_the_step_guard_freezes_and_kills_a_users_step(make_job, users, tmp_path):
    """The guard (root) finds the step's processes by session and token and signals them, as it
    does when the worker loses its lease; the user's processes are no exception."""
    import time

    from workers.guard import Guard

    job = make_job(users[1:2]).prepare()
    box: dict = {}
    step = threading.Thread(target=lambda: box.update(outcome=job.run("echo $$; sleep 30 & wait")), daemon=True)
    step.start()
    shell = int(wait_until(lambda: job.out()[:1], 10, "the step's shell pid")[0])
    guard = Guard(kill_after=60)
    now = time.monotonic()
    guard.command(f"watch job-1 no-such-token {shell}", now)  # the step's session is its shell's pid
    guard.command(f"lease job-1 {now - 1}", now)
    guard.tick(now)  # the lease lapsed: frozen
    wait_until(lambda: process_state(shell) == "T", 10, "the user's step frozen")
    guard.command("kill job-1", time.monotonic())
    step.join(15)
    assert box["outcome"].status == "failed" and box["outcome"].exit_code == 137, box


# -- end to end: a real worker, checkout, secrets, artifacts ------------------------------------------

E2E_PIPELINE = """
stages: [build, test]
variables:
  SECRETS_PATH: {secrets}
build:
  stage: build
  secrets: [DEPLOY_TOKEN]
  script:
    - id -un
    - git status --porcelain && git rev-parse HEAD
    - test "$(stat -c %U .)" = "$(id -un)" && echo owns-its-checkout
    - worker=$(cut -d' ' -f4 /proc/$PPID/stat)
    - cat /proc/$PPID/environ || echo pool-environ-denied
    - cat /proc/$worker/environ || echo worker-environ-denied
    - cat "$SECRETS_PATH" || echo secrets-file-denied
    - test -n "$DEPLOY_TOKEN" && echo granted-secret-present
    - mkdir -p dist && echo "built by $(id -un)" > dist/app && chmod 400 dist/app
  artifacts: {{paths: [dist/]}}
test:
  stage: test
  script:
    - cat dist/app
    - chmod u+w dist/app && echo "changed by $(id -un)" >> dist/app && echo artifact-is-the-jobs
"""


@pytest.mark.integration
def test_a_pipeline_runs_under_shell_users_on_a_real_worker(engine, users, root, tmp_path):  # noqa: F811
    from ci_queue.objects import open_store
    from ci_queue.trust import Grant, RunTrust
    from tests.artifacts.conftest import live_app
    from tests.engine.conftest import make_repo

    marker = f"worker-only-{uuid.uuid4().hex}"
    secrets = root / "secrets.env"
    secrets.write_text(f"DEPLOY_TOKEN={marker}-deploy\n")
    secrets.chmod(0o600)
    app, server = live_app(engine.store, engine.env["CIQ_REDIS_URL"], tmp_path, open_store((tmp_path / "o").as_uri()))
    try:
        engine.start_worker("w-users", concurrency=2, extra_env={
            "CIQ_SHELL_USER": f"{users[0].name},{users[1].name}", "CIQ_SERVER_URL": app.url,
            "CIQ_WORKSPACE_DIR": str(root / "workspaces"), "CIQ_SECRETS_FILE": str(secrets),
            "CIQ_CACHE_DIR": str(tmp_path / "cache"), "CIQ_TEST_WORKER_SECRET": marker})
        repo = tmp_path / "repo"
        sha = make_repo(repo, {".gitlab-ci.yml": E2E_PIPELINE.format(secrets=secrets)})
        # the secret granted as repos.yml would (`secrets: [DEPLOY_TOKEN]`): the worker resolves granted names only
        trust = RunTrust(registered=True, grants=(Grant("DEPLOY_TOKEN"),))
        run_id = engine.trigger(repo, trust=trust)
        run = engine.wait(run_id, timeout=120)
        logs = {job.name: [e["text"] for _, e in engine.store.read_log(run_id, job.index)] for job in run.jobs}
        assert {job.name: job.status for job in run.jobs} == {"build": "success", "test": "success"}, logs
        build = logs["build"]
        assert build[build.index("$ id -un") + 1] in (users[0].name, users[1].name)
        assert sha in build and "owns-its-checkout" in build and "granted-secret-present" in build
        assert {"pool-environ-denied", "worker-environ-denied", "secrets-file-denied"} <= set(build)
        assert not any(marker in line for lines in logs.values() for line in lines)
        assert any(line.startswith("built by ciqt") for line in logs["test"]) and "artifact-is-the-jobs" in logs["test"]
        # the git cache stayed root's (no chown through the checkout's hard links), and root's only
        cache = tmp_path / "git-cache"
        assert cache.stat().st_mode & 0o777 == 0o700
        assert all(path.lstat().st_uid == 0 for path in cache.rglob("*"))
        wait_until(lambda: not any((root / "workspaces").iterdir()), 30, "the workspaces removed")
    finally:
        server.shutdown()


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("CIQ_SHELL_USER", "root", "CIQ_SHELL_USER: root is root"),
    ("CIQ_SHELL_USER", "ciq-no-such-user-here", "there is no user"),
    ("CIQ_DOCKER_VOLUMES", "/var/run:/host-run", "refusing to mount /var/run"),
])
def test_a_worker_refuses_to_start_with_executor_settings_it_cannot_honour(variable, value, says):
    """Before it even looks for Redis (a closed port here): one line, exit 2, no traceback."""
    import sys

    from ci_queue.standalone import free_port
    from tests.conftest import REPO

    env = {**os.environ, "CIQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", variable: value,
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "ci_queue.cli", "worker", "--name", "refused"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ci-queue worker: ") and says in lines[0], done.stderr
