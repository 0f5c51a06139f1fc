"""Per-step overhead of the step runners (a script, not a test).

    python3 bench/bench_runners.py [--shell-runs 50] [--docker-runs 20] [--image IMAGE]

- shell: ``ShellRunner.run`` of the step ``true`` against a bare ``subprocess.run(["true"])``;
- docker: ``DockerRunner.run`` of the step ``true`` (fresh container, attach, start, wait,
  remove) against the CLI's ``docker run --rm --network none IMAGE true``.

The runner is prepared once (as for a job) and each step is timed alone, alternating with the
baseline so that both see the same machine load; medians of many runs, after two warm-ups.
Docker rows need a daemon and the image (``bash .ci/docker.sh up``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.logs import JobLog, LogLine
from workers.runners.base import JobEnvironment, StepSpec

WARMUP = 2


class NullSink:
    def write(self, line: LogLine) -> None:
        pass

    def close(self) -> None:
        pass


def medians_ms(baseline: Callable[[], object], candidate: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall time of each, in ms; the two alternate so that both see the same machine load."""
    for _ in range(WARMUP):
        baseline()
        candidate()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for action, bucket in ((baseline, times[0]), (candidate, times[1])):
            start = time.perf_counter()
            action()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000


def bench(runner, env: JobEnvironment, baseline: Callable[[], object], runs: int) -> tuple[float, float]:
    """(baseline, one step of ``runner``) medians; the runner is prepared once, as for a job."""
    log = JobLog(NullSink(), run_id=env.run_id, job=env.job_name, max_bytes=4 << 20)
    step = StepSpec(name="script", script="true", env={"CI": "true"}, timeout=120)
    runner.prepare(env, log)

    def one_step() -> None:
        outcome = runner.run(step, log, lambda: False)
        if outcome.status != "success":
            raise SystemExit(f"the benchmark step failed: {outcome}")

    try:
        return medians_ms(baseline, one_step, runs)
    finally:
        runner.cleanup()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shell-runs", type=int, default=50)
    parser.add_argument("--docker-runs", type=int, default=20)
    parser.add_argument("--image", default="ci-queue-test/busybox:latest")
    args = parser.parse_args()

    rows: list[tuple[str, int, str, float | None, str, float | None]] = []
    workspace = Path(tempfile.mkdtemp(prefix="ci-queue-bench-"))
    try:
        env = JobEnvironment(workspace, str(workspace), None, "bench", "bench", 1)
        from workers.runners.shell import ShellRunner

        bare, shell = bench(ShellRunner(), env, lambda: subprocess.run(["true"], check=True), args.shell_runs)
        rows.append(("shell", args.shell_runs, 'subprocess.run(["true"])', bare, "ShellRunner.run('true')", shell))

        docker_row = ("docker", args.docker_runs, f"docker run --rm {args.image} true", None, "DockerRunner.run", None)
        docker_cli = shutil.which("docker")
        try:
            from workers.runners.docker import DockerRunner

            if docker_cli is None:
                raise RuntimeError("no docker CLI on PATH")
            cli = [docker_cli, "run", "--rm", "--network", "none", args.image, "true"]
            docker_env = JobEnvironment(workspace, "/builds/bench", args.image, "bench", "bench", 1)
            cli_ms, runner_ms = bench(
                DockerRunner(network_mode="none"),
                docker_env,
                lambda: subprocess.run(cli, check=True, capture_output=True),
                args.docker_runs,
            )
            docker_row = (*docker_row[:3], cli_ms, docker_row[4], runner_ms)
        except Exception as exc:
            print(f"docker: skipped ({type(exc).__name__}: {exc}); run `bash .ci/docker.sh up`", file=sys.stderr)
        rows.append(docker_row)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)

    header = ("runner", "runs", "baseline", "median", "runner step", "median", "overhead")
    print("{:<8} {:>4}  {:<52} {:>9}  {:<24} {:>9} {:>9}".format(*header))
    for name, runs, base_name, base, run_name, ran in rows:
        overhead = None if base is None or ran is None else ran - base
        print(f"{name:<8} {runs:>4}  {base_name:<52} {_ms(base):>9}  {run_name:<24} {_ms(ran):>9} {_ms(overhead):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
