"""``ci-queue serve``: the web app under gunicorn, with the sweeper in the gunicorn master.

Gunicorn runs ``ci_queue.web:create_app()`` in N worker processes of the ``gthread`` class, so
a Server-Sent-Events log stream holds one thread, not a whole worker. The app is created in each
worker after the fork (no ``preload_app``), so no Redis or broker connection is shared between
processes.

The sweeper runs once per ``serve``, in the arbiter (master) process: started by the
``when_ready`` hook, stopped by ``on_exit``. The master is the one process that lives as long
as the server; a worker is re-forked at will, so a sweeper per worker would only make more
lock contenders. The sweeper thread uses only its own Redis client and Celery producer, which a
forked worker never touches (redis-py and loguru guard their locks across ``fork``; gunicorn
itself runs its control-socket thread in the master the same way).

This module is also a gunicorn configuration module for people who run gunicorn themselves::

    gunicorn -c python:ci_queue.serve --bind 127.0.0.1:8080 --workers 2 'ci_queue.web:create_app()'

which gives the same worker class, hooks (token check, sweeper) and timeouts. Only names of
gunicorn settings below are read by gunicorn; keep other module-level names off that list.
"""

from __future__ import annotations

import dataclasses
import errno
import secrets
import socket
import sys
from typing import Any

import click

from ci_queue import redis_urls
from ci_queue.settings import Settings, SettingsError, get_settings

# -- gunicorn settings (read by `gunicorn -c python:ci_queue.serve`) ------------------------------------
worker_class = "gthread"
threads = 16  # concurrent requests (and live log streams) per worker process
graceful_timeout = 10  # a stopping worker lets requests (streams) finish this long, then goes
keepalive = 5
control_socket_disable = True  # gunicorn >= 25: no control socket in $HOME shared by every server

_SWEEPER: dict[str, Any] = {}
_OVERRIDE: dict[str, Settings] = {}


def _settings() -> Settings:
    return _OVERRIDE.get("settings") or get_settings()


def api_tokens(settings: Settings) -> list[str]:
    return [token.strip() for token in settings.api_tokens.split(",") if token.strip()]


def has_tokens(settings: Settings) -> bool:
    """Whether the API can accept any token: ``CIQ_API_TOKENS``, or a tokens file (that may be
    empty yet: `ci-queue token create` adds to it and the app reads it when it changes)."""
    return bool(api_tokens(settings) or settings.tokens_file)


def on_starting(server: Any) -> None:
    """Refuse to serve an API nobody can use (or everybody could, were the check ever loosened);
    mask the Redis passwords in gunicorn's own log lines as in ours."""
    import logging

    from ci_queue.logging import scrub_handlers

    if not has_tokens(_settings()):
        print("ci-queue serve: no API tokens: set CIQ_API_TOKENS (comma-separated bearer tokens) or "
              "CIQ_TOKENS_FILE (ci-queue token create); `ci-queue serve --dev` makes a throwaway one", file=sys.stderr)
        sys.exit(2)
    for name in ("gunicorn.error", "gunicorn.access"):
        scrub_handlers(logging.getLogger(name), _settings())


def when_ready(server: Any) -> None:
    """In the master, once it listens: start the sweeper, say where the server is."""
    from ci_queue.artifacts.janitor import ObjectJanitor
    from ci_queue.artifacts.storage import objects_from_settings
    from ci_queue.celery_app import make_celery
    from ci_queue.logging import configure
    from ci_queue.store import store_from_settings
    from ci_queue.sweeper import Sweeper

    settings = _settings()
    configure(settings)
    store = store_from_settings(settings)
    _SWEEPER["sweeper"] = Sweeper(store, make_celery(settings), settings).start()
    objects = objects_from_settings(settings)
    _SWEEPER["janitor"] = ObjectJanitor(store, objects, settings).start()
    addresses = ", ".join(str(listener) for listener in server.LISTENERS)
    print(f"ci-queue serve: listening on {addresses} ({server.num_workers} worker"
          f"{'s' * (server.num_workers != 1)} x {server.cfg.threads} threads)", flush=True)
    print(f"ci-queue serve: artifacts and caches in {objects.description}"
          + ("" if settings.artifacts_url else " (CIQ_ARTIFACTS_URL is not set)"), flush=True)


def on_exit(server: Any) -> None:
    for name in ("janitor", "sweeper"):
        task = _SWEEPER.pop(name, None)
        if task is not None:
            task.stop()


# -- `ci-queue serve` ------------------------------------------------------------------------------------
def _server_options(host: str, port: int, workers: int, thread_count: int) -> dict[str, Any]:
    return {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers,
        "worker_class": worker_class,
        "threads": thread_count,
        "graceful_timeout": graceful_timeout,
        "keepalive": keepalive,
        "control_socket_disable": control_socket_disable,
        "on_starting": on_starting,
        "when_ready": when_ready,
        "on_exit": on_exit,
        "proc_name": "ci-queue-serve",
        "errorlog": "-",
        "loglevel": "info",
    }


def load_settings() -> Settings:
    """The settings, or a usage error (exit 2) naming the bad ``CIQ_*`` variable."""
    try:
        return get_settings()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(f"port {port} on {host} is in use (another ci-queue?); "
                                           "choose another with --port") from None
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def check_redis(settings: Settings) -> None:
    """Refuse to start (exit 1, one line naming the URL without its password) when the broker or
    the state Redis does not answer a ping within a few seconds: a wrong URL said at once, not
    after minutes of a client library retrying. ``serve`` and ``worker`` call it before anything."""
    access = redis_urls.Access.from_settings(settings)
    for url in dict.fromkeys(u for u in (settings.redis_url or "redis://127.0.0.1:6379/0", settings.state_url) if u):
        why = redis_urls.unreachable(url, access)
        if why is not None:
            raise click.ClickException(f"cannot reach Redis at {redis_urls.redact(url)}: {why} "
                                       "(CIQ_REDIS_URL / CIQ_STATE_URL say where it is)")


def run_server(host: str, port: int, workers: int, thread_count: int, dev: bool) -> None:
    """Start gunicorn in this process (it becomes the master); returns only through ``sys.exit``."""
    from gunicorn.app.base import BaseApplication

    settings = load_settings()
    if not has_tokens(settings):
        if not dev:
            raise click.UsageError("no API tokens: set CIQ_API_TOKENS (comma-separated bearer tokens) or "
                                   "CIQ_TOKENS_FILE (ci-queue token create), or give --dev for a throwaway token")
        token = secrets.token_urlsafe(32)
        settings = dataclasses.replace(settings, api_tokens=token)
        click.echo(f"ci-queue serve --dev: API token for this process only: {token}")
    _OVERRIDE["settings"] = settings
    check_redis(settings)
    _check_port(host, port)
    options = _server_options(host, port, workers, thread_count)

    class WebServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # settings newer gunicorns have (control_socket_disable)
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from ci_queue.web import create_app

            return create_app(settings)

    WebServer().run()


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Gunicorn worker processes.")
@click.option("--threads", "thread_count", type=click.IntRange(1, 1024), default=threads, show_default=True,
              help="Threads per worker: concurrent requests and live log streams.")
@click.option("--dev", is_flag=True, help="Without CIQ_API_TOKENS, make a random token for this process and print it.")
def serve_command(host: str, port: int, workers: int, thread_count: int, dev: bool) -> None:
    """Serve the runs API in production: gunicorn (gthread workers) and the sweeper."""
    run_server(host, port, workers, thread_count, dev)
