"""The pages in a real browser: Debian's Chromium driven by Playwright (no browser download: the
system's ``chromium``), against a real ``ci-queue standalone`` (redis-server, gunicorn, two Celery
workers, the shell executor, git repositories of the test's own).

Screenshots go to ``CIQ_SCREENSHOTS_DIR`` when set (``docs/screenshots`` refreshes the README's),
else to the test's temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cli.conftest import Standalone, kill_all, start_standalone
from tests.conftest import REPO, in_ci

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str:
    """The system Chromium: skipped with a reason outside CI when there is none, a failure in CI."""
    found = os.environ.get("CIQ_TEST_CHROMIUM") or next((p for p in CHROMIUM_CANDIDATES if os.access(p, os.X_OK)),
                                                         None) or shutil.which("chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        found = None
    if found:
        return found
    message = "no Chromium (apt-get install chromium) or no Playwright (pip install playwright)"
    if in_ci():
        pytest.fail(message + "; CI must have both (.ci/run installs them)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    target = os.environ.get("CIQ_SCREENSHOTS_DIR")
    path = (REPO / target if not os.path.isabs(target) else Path(target)) if target else \
        tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Farm:
    """The running system and a way to make runs of repositories on this machine."""

    system: Standalone
    tmp: Path

    @property
    def url(self) -> str:
        return self.system.url

    def repo(self, name: str, pipeline: str, message: str = "Add the pipeline") -> Path:
        """A git repository whose ``main`` has ``pipeline`` as its .ci-queue.yml."""
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        git = ["git", "-C", str(path), "-c", "user.email=dev@example.com", "-c", "user.name=dev",
               "-c", "commit.gpgsign=false"]
        if not (path / ".git").exists():
            subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
        (path / ".ci-queue.yml").write_text(pipeline)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", message], check=True)
        return path

    def trigger(self, repo: Path, message: str = "Add the pipeline", ref: str = "main") -> str:
        """A run of ``repo`` through the API (as a webhook would: with its commit message)."""
        answer = requests.post(f"{self.url}/api/v1/runs", timeout=30,
                               headers={"Authorization": f"Bearer {self.system.token}"},
                               json={"repo": f"team/{repo.name}", "clone_url": repo.as_uri(), "ref": ref,
                                     "commit_message": message})
        assert answer.status_code == 202, answer.text
        return answer.json()["run_id"]

    def api(self, path: str) -> Any:
        answer = requests.get(f"{self.url}/api/v1{path}", timeout=30,
                              headers={"Authorization": f"Bearer {self.system.token}"})
        answer.raise_for_status()
        return answer.json()


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> Iterator[Farm]:
    tmp = tmp_path_factory.mktemp("farm")
    system = start_standalone(tmp, workers=2)
    tree = system.service.tree()
    try:
        yield Farm(system, tmp)
    finally:
        tree += system.service.tree()
        system.service.stop()
        kill_all(tree)


@pytest.fixture
def page(browser, farm) -> Iterator[Any]:
    """A logged-in page (through the login form); every alert() is recorded in ``page.alerts``
    (none may happen), every confirm() is accepted."""
    context = browser.new_context(viewport={"width": 1400, "height": 860}, base_url=farm.url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.alerts = []
    page.errors = []

    def on_dialog(dialog: Any) -> None:
        if dialog.type == "alert":
            page.alerts.append(dialog.message)
        dialog.accept()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto("/login")
    page.fill("#token", farm.system.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{farm.url}/")
    try:
        yield page
    finally:
        context.close()
    assert page.alerts == [], f"a page ran a script it was given: {page.alerts}"
    assert page.errors == [], f"JavaScript errors: {page.errors}"
