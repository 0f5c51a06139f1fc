"""Which Celery queue a job goes to, and which queues a worker consumes.

A job's ``tags`` must be a subset of the worker's tags. Each distinct tag set is one queue
(``ciq.tags.<sorted+tags>``; ``+``, because Celery's ``--queues`` splits on
commas); a worker with tags T consumes the queue of every non-empty subset
of T, so it takes exactly the jobs it can serve, and the broker does the matching. Subsets grow
as 2^|T|, hence the limit of ``MAX_WORKER_TAGS``. Untagged jobs go to ``ciq.default``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

DEFAULT_QUEUE = "ciq.default"
CONTROL_QUEUE = "ciq.control"  # planning and other work any worker may do
TAG_QUEUE_PREFIX = "ciq.tags."
MAX_WORKER_TAGS = 6
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


def job_queue(tags: Iterable[str]) -> str:
    """The queue of a job with these tags."""
    normalized = normalize_tags(tags)
    return TAG_QUEUE_PREFIX + "+".join(normalized) if normalized else DEFAULT_QUEUE


def worker_queues(tags: Iterable[str], untagged: bool = True) -> list[str]:
    """Every queue a worker with these tags consumes."""
    normalized = normalize_tags(tags)
    if len(normalized) > MAX_WORKER_TAGS:
        raise RoutingError(f"a worker may have at most {MAX_WORKER_TAGS} tags ({len(normalized)} given): "
                           f"it consumes one queue per subset of its tags (2^{len(normalized)} here)")
    queues = [job_queue(subset) for size in range(1, len(normalized) + 1)
              for subset in itertools.combinations(normalized, size)]
    if untagged:
        queues.insert(0, DEFAULT_QUEUE)
    return queues
