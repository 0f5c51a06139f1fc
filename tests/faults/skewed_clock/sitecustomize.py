"""Loaded (as ``sitecustomize``) by the processes of a fault test that plays a host whose clock
is off: ``time.time()`` and ``time.time_ns()`` run ``CIQ_TEST_CLOCK_SKEW`` seconds ahead
(negative: behind), as every clock read of Python code on such a host would. (libfaketime, the
usual tool, breaks ``time.sleep`` in forked processes, which Celery's prefork pool is.)"""

import os
import time

_skew = float(os.environ.get("CIQ_TEST_CLOCK_SKEW", "0") or 0)
if _skew:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _skew
    time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
