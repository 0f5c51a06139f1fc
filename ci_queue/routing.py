"""Which Celery queue a job goes to, and which queues a worker consumes.

A job's ``tags`` must be a subset of the worker's tags. Each distinct tag set is one queue
(``ciq.tags.<sorted+tags>``; ``+``, because Celery's ``--queues`` splits on
commas); a worker with tags T consumes the queue of every non-empty subset
of T, so it takes exactly the jobs it can serve, and the broker does the matching. Subsets grow
as 2^|T|, hence the limit of ``MAX_WORKER_TAGS``. Untagged jobs go to ``ciq.default``.

Trust adds a dimension (``Job.route``, from the run's trusted facts, ``ci_queue.trust``): three
families of queues with the same tag sets,

=====================  ====================================  ===================================
family (``route``)     what goes there                       who consumes it
=====================  ====================================  ===================================
``ciq.``  ("")         every job of an unprotected ref, a    ordinary workers
                       fork, an unregistered repository
``ciq.protected.``     jobs of protected refs of registered  ordinary and ``--protected`` workers
                       repositories
``ciq.protected-only.``  the same, of repositories with      ``--protected`` workers only
                       ``protected_workers_only: true``
=====================  ====================================  ===================================

so a ``--protected`` worker (a deploy host with credentials) never sees untrusted work, and a
protected job still goes to any worker with its tags unless its repository says otherwise. Each
worker consumes two families: at most 2 x 2^6 = 128 tag queues, plus the control queue (names
are short and comma-free, as Celery's ``--queues`` needs; the Redis transport polls them all in
one BRPOP).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from ci_queue.trust import ROUTE_ANY, ROUTE_PROTECTED, ROUTE_PROTECTED_ONLY

DEFAULT_QUEUE = "ciq.default"
CONTROL_QUEUE = "ciq.control"  # planning and other work any worker may do
MAX_WORKER_TAGS = 6
ROUTES = (ROUTE_ANY, ROUTE_PROTECTED, ROUTE_PROTECTED_ONLY)
ORDINARY_ROUTES = (ROUTE_ANY, ROUTE_PROTECTED)  # what `ci-queue worker` serves
PROTECTED_ROUTES = (ROUTE_PROTECTED, ROUTE_PROTECTED_ONLY)  # what `ci-queue worker --protected` serves
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}$")


class RoutingError(ValueError):
    """Tags that cannot be routed (too many, or not a valid tag)."""


def normalize_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated, validated tags (a queue name is built from them)."""
    result = sorted({t.strip() for t in tags if t and t.strip()})
    for tag in result:
        if not _TAG.match(tag):
            raise RoutingError(f"invalid tag {tag!r}: letters, digits and _ . : / - only, at most 63")
    return tuple(result)


def _family(route: str) -> str:
    if route not in ROUTES:
        raise RoutingError(f"unknown route {route!r}; one of {', '.join(repr(r) for r in ROUTES)}")
    return f"ciq.{route}." if route else "ciq."


def job_queue(tags: Iterable[str], route: str = ROUTE_ANY) -> str:
    """The queue of a job with these tags, of the trust class ``route`` (``Job.route``)."""
    normalized = normalize_tags(tags)
    family = _family(route)
    return f"{family}tags." + "+".join(normalized) if normalized else f"{family}default"


def worker_queues(tags: Iterable[str], untagged: bool = True, protected: bool = False) -> list[str]:
    """Every queue a worker with these tags consumes: those of the ordinary routes, or with
    ``protected`` (``ci-queue worker --protected``) those of the protected ones only."""
    normalized = normalize_tags(tags)
    if len(normalized) > MAX_WORKER_TAGS:
        raise RoutingError(f"a worker may have at most {MAX_WORKER_TAGS} tags ({len(normalized)} given): "
                           f"it consumes one queue per subset of its tags (2^{len(normalized)} here)")
    subsets = [subset for size in range(1, len(normalized) + 1) for subset in itertools.combinations(normalized, size)]
    queues: list[str] = []
    for route in PROTECTED_ROUTES if protected else ORDINARY_ROUTES:
        if untagged:
            queues.append(job_queue((), route))
        queues.extend(job_queue(subset, route) for subset in subsets)
    return queues


def route_of(queue: str) -> str:
    """The trust class of a queue name (the inverse of ``job_queue``'s family)."""
    for route in (ROUTE_PROTECTED_ONLY, ROUTE_PROTECTED):
        if queue.startswith(_family(route)):
            return route
    return ROUTE_ANY


def tags_of(queue: str) -> tuple[str, ...]:
    """The tag set of a job queue (the inverse of ``job_queue``'s tags; ``()`` for a default queue)."""
    rest = queue[len(_family(route_of(queue))):]
    return tuple(rest[len("tags."):].split("+")) if rest.startswith("tags.") else ()


def who_serves(queue: str) -> str:
    """Which workers take the jobs of ``queue``, in words (for the stuck message)."""
    route = route_of(queue)
    if route == ROUTE_PROTECTED_ONLY:
        return "only `ci-queue worker --protected` workers with these tags take it (protected_workers_only)"
    if route == ROUTE_PROTECTED:
        return "any worker with these tags takes it, `--protected` or not"
    return "workers with these tags take it (`--protected` workers never do)"
