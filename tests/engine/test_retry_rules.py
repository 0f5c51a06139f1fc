"""Which failures another attempt may change (``dispatch.retry_wanted``)."""

from __future__ import annotations

import pytest

from ci_queue.dispatch import retry_wanted
from ci_queue.pipeline.model import Job, Retry


@pytest.mark.parametrize("failure", ["checkout_failed", "environment_too_large", "canceled"])
def test_failures_no_attempt_can_change_are_never_retried(failure: str):
    job = Job(name="j", stage="test", script=["true"], retry=Retry(max=2, when=("always",)))
    assert not retry_wanted(job, failure, None, 0)


def test_a_script_failure_is_retried_under_retry_always():
    job = Job(name="j", stage="test", script=["true"], retry=Retry(max=2, when=("always",)))
    assert retry_wanted(job, "script_failure", 1, 0)
