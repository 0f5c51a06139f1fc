"""Who a worker process is: its name (``NAME@host``, what jobs record) and its instance id (one
``ci-queue worker`` process, what its flags belong to).

A name is reused on purpose: systemd or compose restart a worker under the same name. So what
concerns one process only, the hand-back flag of a worker that is stopping above all, is keyed
by the instance id, and a restarted worker never inherits its predecessor's flags. Two *live*
workers with one name would make every record ambiguous: the name is held in Redis
(``P worker:<name>:instance``, renewed while the process lives, ``NAME_TTL`` seconds without
renewal to lapse), and a second worker asking for a held name waits for it to lapse (the
predecessor was killed) and otherwise exits with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid

from ci_queue.store import Store

INSTANCE_VARIABLE = "CIQ_WORKER_INSTANCE"  # inherited by the pool processes
NAME_TTL = 15  # seconds a name stays held after its worker stopped renewing it

class NameTaken(Exception):
    """Another live worker holds this name."""


def instance_id() -> str:
    """This process's instance id (the pool processes inherit their worker's)."""
    value = os.environ.get(INSTANCE_VARIABLE)
    if not value:
        value = os.environ[INSTANCE_VARIABLE] = uuid.uuid4().hex
    return value


class NameHold:
    """Holds a worker name in Redis for as long as this process lives."""

    def __init__(self, store: Store, name: str, instance: str) -> None:
        self.store, self.name, self.instance = store, name, instance
        self.key = f"{store.prefix}worker:{name}:instance"
        self._stop = threading.Event()

    def take(self, wait: float = NAME_TTL + 2) -> None:
        """Take the name, waiting up to ``wait`` seconds for a dead predecessor's hold to lapse;
        raises NameTaken if a live worker keeps it."""
        deadline = time.monotonic() + wait
        while True:
            holder = self.store.hold(self.key, self.instance, NAME_TTL)
            if holder == self.instance:
                break
            if time.monotonic() > deadline:
                raise NameTaken(f"another worker named {self.name} is running (instance {holder}); "
                                "give this one another --name, or stop that one first")
            time.sleep(0.5)  # polling the lapse of the other holder's TTL
        threading.Thread(target=self._renew, name="ciq-name", daemon=True).start()

    def _renew(self) -> None:
        while not self._stop.wait(NAME_TTL / 3):
            with contextlib.suppress(Exception):  # Redis away: the next renewal tries again
                self.store.hold(self.key, self.instance, NAME_TTL)

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):  # stopping must not fail; the hold lapses by itself
            self.store.let_go(self.key, self.instance)
