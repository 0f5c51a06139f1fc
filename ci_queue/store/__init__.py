"""Run, job and log state in Redis. The only code that knows Redis key names.

Key schema (``P`` is the key prefix, ``CIQ_KEY_PREFIX``; documented in docs/DESIGN.md):

- ``P run:<id>``            hash: the run record (status, repo, ref, sha, event, times, error...)
                            and its trusted facts (protected, fork, registered,
                            protected_workers_only, grants; approved_by/at), see ``ci_queue.trust``
- ``P run:<id>:state``      hash: the run's graph and job state, one field per node property
                            ``n<i>.<prop>`` (status ``st``, attempt ``att``, worker, times, the
                            planned job ``spec`` as JSON, ``attempts`` as JSON, barrier counters
                            ``rem``/``fp``/``np``, dependents ``deps``) and run counters ``c.*``
- ``P run:<id>:names``      hash: job name -> node index
- ``P run:<id>:log:<i>``    stream: the log lines of job i (all attempts), capped
- ``P runs``                sorted set of run ids by creation time (newest first listing)
- ``P runs:repo:<repo>``, ``P runs:ref:<repo>:<ref>``, ``P runs:status:<status>``: the same, filtered
- ``P leases``              sorted set ``<run>|<i>|<attempt>`` by lease deadline
- ``P queued``              sorted set ``<run>|<i>|<attempt>`` by queue deadline (stuck detection)
- ``P delivery:<provider>:<id>``, ``P idem:<scope>:<hash>``: the first answer to a webhook delivery,
                            an API ``Idempotency-Key``'s run; written with the run, atomically
- ``P q:<queue>:*``, ``P queues*``, ``P repo:*``, ``P workers``, ``P worker:<name>:info|running``:
                            the scheduler's books (jobs held for a slot, admitted, running; the
                            live workers' slots), see ``ci_queue.store.admission_lua``

A run's keys get a TTL of ``CIQ_RETENTION_DAYS`` when it finishes; index entries older than
the retention are trimmed by the sweeper and the index keys themselves carry a TTL refreshed
on every write, so nothing is left without one.
"""

from ci_queue.store.core import Alongside, Created, JobState, Once, RunRecord, Store, StoreError, store_from_settings

__all__ = ["Alongside", "Created", "JobState", "Once", "RunRecord", "Store", "StoreError", "store_from_settings"]
