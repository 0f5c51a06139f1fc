"""What keeps planning from stalling a run: the planner's claim, and how often a checkout is tried.

A run is planned by one planner at a time, under a claim in Redis (``Store.claim_planning``) named
after the Celery task id. A retry of ``plan_run`` is the same task (Celery keeps the id), so it
takes its own claim again instead of finding it "held by someone else" and leaving the run
``queued``; anybody else (a duplicate message, the sweeper's re-send) still finds it held. While
the planner works, a thread renews the claim, so a clone slower than the claim's TTL is not taken
for a crashed planner; a planner that dies stops renewing, and the claim lapses.

A checkout that failed for a reason of the moment (``CheckoutError.retryable``: network, a 5xx,
a timeout) is tried again at most ``PLAN_RETRIES`` times, with exponential backoff and jitter,
and never later than ``PLAN_RETRY_WINDOW`` seconds after the first attempt began: then the run
ends as ``error`` naming the attempts. One that can never succeed ends it at once.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from celery.exceptions import Retry
from loguru import logger

from ci_queue.clone_policy import ClonePolicy
from ci_queue.pipeline.planner import PIPELINE_FILES
from ci_queue.store import Store
from workers.checkout import read_files

# What in a pipeline file may need more of the repository than the file itself: `include:` (local
# files), `exists:` (the tree), and YAML escapes that could spell either inside a quoted key.
NEEDS_TREE = re.compile(r"include|exists|\\[xuU]")
_PLAIN_PATH = re.compile(r"[\w.-]+(/[\w.-]+)*")
CLAIM_SECONDS = 120  # a planner that stopped renewing is replaced after this
PLAN_RETRIES = 3  # more attempts of a checkout that failed for a reason of the moment
PLAN_BACKOFF = 2.0  # seconds before the first retry, doubled for each next one (2, 4, 8)
PLAN_RETRY_WINDOW = 60.0  # seconds after the first attempt began; no retry starts later


def retry_delay(retries: int, first_attempt_at: float, now: float | None = None) -> float | None:
    """Seconds to wait before the next attempt of a transient failure, or None: give up.

    ``retries`` is how many retries already happened (Celery's ``request.retries``);
    ``first_attempt_at`` when the first attempt began, by Redis's clock (``Store.now``), as ``now``.
    """
    if retries >= PLAN_RETRIES:
        return None
    delay = PLAN_BACKOFF * 2 ** retries + random.uniform(0, 1)
    if (now or time.time()) + delay - first_attempt_at > PLAN_RETRY_WINDOW:
        return None
    return delay


def attempts_text(count: int) -> str:
    return f"{count} attempt" + ("" if count == 1 else "s")


class PlanningClaim:
    """``with PlanningClaim(store, run_id, owner) as claim: if claim.held: ...``

    Takes (or re-takes) the claim, renews it every quarter of its TTL while the block runs, and
    releases it at the end, except when the block ends with a Celery ``Retry``: the retry is
    the same planner and takes it again.
    """

    def __init__(self, store: Store, run_id: str, owner: str, ttl: int = CLAIM_SECONDS) -> None:
        self.store, self.run_id, self.owner, self.ttl = store, run_id, owner, ttl
        self.held = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="planning-claim", daemon=True)

    def __enter__(self) -> PlanningClaim:
        self.held = self.store.claim_planning(self.run_id, self.owner, self.ttl)
        if self.held:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if not self.held:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        if exc_type is not None and issubclass(exc_type, Retry):
            return  # the retry re-enters the claim; nobody else may plan in between
        try:
            self.store.release_planning(self.run_id, self.owner)
        except Exception as exc:  # the claim expires by itself
            logger.bind(run_id=self.run_id).warning("could not release the planning claim: {}", exc)

    def still_held(self) -> bool:
        """Renew now; False when another planner took the run over (this one must not plan it)."""
        return self.store.claim_planning(self.run_id, self.owner, self.ttl)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.still_held():
                    logger.bind(run_id=self.run_id).warning("the planning claim was taken over")
                    return
            except Exception as exc:  # Redis hiccup: the claim has slack until the next period
                logger.bind(run_id=self.run_id).warning("could not renew the planning claim: {}", exc)


def pipeline_alone(clone_url: str, sha: str, configured: str | None, policy: ClonePolicy | None, *,
                   cache_dir: Path | None = None, env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(path, text)`` of the run's pipeline file, read from the host's git mirror, when it can
    be planned without the rest of the repository (no ``include``, no ``exists``: see
    ``NEEDS_TREE``); None when the planner needs a checkout (such a file, a symlink leaving the
    repository, no pipeline file at all, an unusual configured path, text that is not UTF-8).
    Saves the checkout for most pipelines: one git command instead of a workspace. Raises
    ``CheckoutError`` as a checkout would."""
    if configured and (not _PLAIN_PATH.fullmatch(configured) or ".." in configured.split("/")):
        return None
    candidates = [configured] if configured else list(PIPELINE_FILES)
    files = read_files(clone_url, sha, candidates, policy=policy, cache_dir=cache_dir, env=env)
    name = next((candidate for candidate in candidates if candidate in files), None)
    content = files.get(name) if name is not None else None
    if name is None or content is None:
        return None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:  # the loader's own message, from the checkout
        return None
    return None if NEEDS_TREE.search(text) else (name, text)
