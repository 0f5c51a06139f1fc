"""Real services for the integration tests: a Docker daemon and the locally built test image.

``bash .ci/docker.sh up`` provides both (``.ci/run`` calls it). Missing, they skip the tests on a
developer's machine, but fail them in CI (``CI=true``): missing infrastructure there is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import in_ci

TEST_IMAGE = os.environ.get("CIQ_TEST_IMAGE", "ci-queue-test/busybox:latest")
HOW_TO = "`bash .ci/docker.sh up` installs docker.io, starts dockerd and imports the test image"


def missing_infrastructure(message: str) -> None:
    """Skip, or fail in CI."""
    if in_ci():
        pytest.fail(f"{message}; with CI=true missing infrastructure is a failure; {HOW_TO}")
    pytest.skip(f"{message}; {HOW_TO}")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    """A docker SDK client of a daemon that answers."""
    try:
        import docker
    except ImportError as exc:
        missing_infrastructure(f"the docker SDK is not installed ({exc})")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        missing_infrastructure(f"no Docker daemon answers ({type(exc).__name__}: {exc})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_image(docker_client) -> str:
    """The name of the test image (a busybox root file system), present on the daemon."""
    import docker

    try:
        docker_client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        missing_infrastructure(f"the test image {TEST_IMAGE} is not on the Docker daemon")
    return TEST_IMAGE
