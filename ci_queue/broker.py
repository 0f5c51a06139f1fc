"""kombu's Redis transport, made to survive a Redis restart, failover or out-of-memory error.

When the broker connection drops, Celery 5.7 closes the connection and kombu's channel then
gives its unacknowledged messages back (``QoS.restore_unacked``) over that same connection,
which is gone: with Redis refusing connections it raises ``AttributeError`` (the transport has
already forgotten its client) or ``ConnectionError``, neither of which Celery's consumer catches,
and the worker exits for good ("Unrecoverable error"). A job that ends after the reconnection
fails the same way when it acknowledges its message on the old channel.

Here those give-backs and acknowledgements never raise: a message that could not be given back
or acknowledged stays in kombu's ``unacked`` hash in Redis, and the sweeper
(``ci_queue.unacked``) puts it back in its queue, or drops it when its job attempt has moved on.
Fencing makes either harmless if the message is delivered twice.

Registered as the transport of ``redis://``, ``rediss://`` and ``sentinel://`` URLs when
``ci_queue.celery_app`` is imported (kombu's own registry, ``TRANSPORT_ALIASES``).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from loguru import logger


class QoS(kombu_redis.QoS):
    """Acknowledge and give back messages without ever raising into Celery's consumer."""

    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except Exception as exc:  # Redis is away, or the channel lost its connection
            count = len(self._delivered)
            self._delivered.clear()
            logger.warning("could not give back {} unacknowledged message(s) now ({}: {}); they stay in "
                           "Redis and the sweeper restores them", count, type(exc).__name__, exc)

    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        except Exception as exc:  # the message's channel died with the old connection
            self._forget(delivery_tag)
            logger.warning("could not acknowledge message {} ({}: {}); the sweeper drops it once its job "
                           "has moved on", delivery_tag, type(exc).__name__, exc)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except Exception as exc:
            self._forget(delivery_tag)
            logger.warning("could not reject message {} ({}: {}); the sweeper restores it", delivery_tag,
                           type(exc).__name__, exc)

    def _forget(self, delivery_tag: Any) -> None:
        """Drop the local record only, as kombu does after an acknowledgement (the copy in Redis
        is the sweeper's)."""
        self._dirty.add(delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS


class SentinelChannel(kombu_redis.SentinelChannel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def register() -> None:
    """Make these the transports of ``redis://``, ``rediss://`` and ``sentinel://``."""
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["rediss"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
