"""Runs waiting for approval (a merge request from a fork) and their trusted facts, in the store
on a real Redis: written with the run, never planned until approved, approved once."""

from __future__ import annotations

import threading

import pytest

from ci_queue.store import StoreError
from ci_queue.trust import Grant, RunTrust
from tests.engine.test_store import make_plan

FORK = RunTrust(fork=True, registered=True, grants=(Grant("DEPLOY", protected=True, environments=("prod*",)),))


def test_the_trusted_facts_are_written_with_the_run(store):
    trusted = RunTrust(protected=True, registered=True, protected_workers_only=True,
                       grants=(Grant("A"), Grant("B", protected=True, environments=("production", "review/*"))))
    run = store.get_run(store.create_run(repo="o/r", ref="main", trust=trusted))
    assert run.trust == trusted and (run.protected, run.fork) == (True, False)
    assert run.to_dict()["protected"] is True and run.to_dict()["fork"] is False
    plain = store.get_run(store.create_run(repo="o/r", ref="dev"))
    assert plain.trust == RunTrust() and plain.to_dict()["protected"] is False  # untrusted unless told
    with pytest.raises(ValueError, match="queued or waiting_approval"):
        store.create_run(repo="o/r", ref="main", status="running")


def test_a_waiting_run_is_listed_is_not_unplanned_and_is_approved_once(store):
    run_id = store.create_run(repo="o/r", ref="f", event="merge_request", trust=FORK, status="waiting_approval")
    assert store.get_run(run_id).status == "waiting_approval"
    assert [r.id for r in store.list_runs(status="waiting_approval")[0]] == [run_id]
    assert store.unplanned(0.0, now=store.now() + 3600) == []  # the sweeper never plans (or ends) it
    with pytest.raises(StoreError, match="not been planned yet"):
        store.retry_run(run_id)

    errors: list[str] = []

    def approve(who: str) -> None:
        try:
            store.approve_run(run_id, who)
        except StoreError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=approve, args=(f"op-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run = store.get_run(run_id)
    assert run.status == "queued" and len(errors) == 7 and all("is queued" in e for e in errors)
    assert run.approved_by.startswith("op-") and run.approved_at
    assert run.trust == FORK  # approval lets it run, it trusts it with nothing more
    assert store.list_runs(status="waiting_approval")[0] == []
    assert [r.id for r in store.list_runs(status="queued")[0]] == [run_id]
    # the sweeper's clock for a planner starts at the approval, not at the run's creation
    assert store.unplanned(120.0, now=store.now() + 60) == []
    assert [u.run_id for u in store.unplanned(120.0, now=store.now() + 300)] == [run_id]
    with pytest.raises(StoreError, match="no run"):
        store.approve_run("ffffffffffffffff", "op")


def test_a_waiting_run_can_be_canceled_and_then_not_approved(store, tmp_path):
    run_id = store.create_run(repo="o/r", ref="f", event="merge_request", trust=FORK, status="waiting_approval")
    assert store.cancel_run(run_id) == ("canceled", [])
    run = store.get_run(run_id)
    assert run.status == "canceled" and run.finished_at and run.approved_by is None
    with pytest.raises(StoreError, match="is canceled, not waiting"):
        store.approve_run(run_id, "op")
    assert store.list_runs(status="waiting_approval")[0] == []
    # a run that was planned is not waiting either
    planned = store.create_run(repo="o/r", ref="main")
    store.set_plan(planned, make_plan(tmp_path, "a: {script: x}"))
    with pytest.raises(StoreError, match="is running, not waiting"):
        store.approve_run(planned, "op")
