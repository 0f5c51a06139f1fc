"""``ci_queue.redis_urls``: URLs made fit to print, and ``rediss://`` URLs that redis-py and kombu
read alike (the libraries' own parsers, no server needed; the servers are in
tests/cli/test_redis_credentials.py and tests/faults/test_sentinel.py)."""

from __future__ import annotations

import ssl

import pytest
import redis
from kombu import Connection

from ci_queue import broker, redis_urls
from ci_queue.redis_urls import Access

broker.register()


@pytest.mark.parametrize("url,shown", [
    ("redis://:pw@h:1/0", "redis://***@h:1/0"),
    ("redis://ciq:p%40ss@h:1/0", "redis://ciq:***@h:1/0"),  # the ACL user's name stays
    ("redis://only-a-password@h/0", "redis://***@h/0"),  # no colon: it may be a password
    ("rediss://:unencoded/p@ss@h:1/0?ssl_ca_certs=/ca.pem&ssl_password=kp", "rediss://***@h:1/0?ssl_ca_certs=/ca.pem&"
                                                                            "ssl_password=***"),
    ("sentinel://u:pw@h1:1;sentinel://:pw@h2:2/0", "sentinel://u:***@h1:1;sentinel://***@h2:2/0"),
    ("redis://h:1/0", "redis://h:1/0"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
])
def test_redact(url, shown):
    assert redis_urls.redact(url) == shown


def test_secrets_are_every_form_a_password_can_be_printed_in():
    assert redis_urls.secrets("redis://u:p%40ss@h/0?ssl_password=keypass") == ["p%40ss", "p@ss", "keypass"]
    assert redis_urls.secrets("redis://h/0") == []
    assert redis_urls.scrub("p@ss and p%40ss, not pw", ["p@ss", "p%40ss", "pw"]) == "*** and ***, not pw"


def test_resolve_writes_the_tls_settings_into_the_url_and_requires_verification():
    access = Access(tls_ca="/etc/ca.pem", tls_cert="/etc/client.pem", tls_key="/etc/client.key")
    url = redis_urls.resolve("rediss://u:pw@h:6380/2", access)
    assert url == ("rediss://u:pw@h:6380/2?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/etc/client.pem"
                   "&ssl_keyfile=/etc/client.key&ssl_cert_reqs=required")
    assert redis_urls.resolve(url, access) == url
    # the URL's own options win; plain and Sentinel URLs are left alone
    own = redis_urls.resolve("rediss://h/0?ssl_ca_certs=/mine.pem&ssl_cert_reqs=none", access)
    assert own == "rediss://h/0?ssl_ca_certs=/mine.pem&ssl_cert_reqs=none&ssl_certfile=/etc/client.pem" \
                  "&ssl_keyfile=/etc/client.key"
    assert redis_urls.resolve("redis://u:pw@h/0", access) == "redis://u:pw@h/0"
    assert redis_urls.resolve("sentinel://h:1/0", access) == "sentinel://h:1/0"


def test_redis_py_and_kombu_read_a_resolved_url_alike():
    url = redis_urls.resolve("rediss://ciq:p%40ss@h:6380/2", Access(tls_ca="/etc/ca.pem"))
    kwargs = redis.ConnectionPool.from_url(url).connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("ciq", "p@ss", 2)
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == ("/etc/ca.pem", "required")
    conn = Connection(url)
    assert (conn.userid, conn.password, conn.virtual_host) == ("ciq", "p@ss", "2")
    assert conn.ssl == {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": ssl.CERT_REQUIRED}
    # what kombu does with a bare rediss:// URL: no verification at all (why resolve adds it)
    assert Connection("rediss://h:6380/0").ssl == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert conn.as_uri() == "rediss://ciq:**@h:6380/2"  # Celery's banner


def test_failure_says_a_refused_password_without_it():
    exc = redis.AuthenticationError("invalid username-password pair or user is disabled.")
    assert redis_urls.failure(exc, ["pw"]) == ("Redis refused the credentials (invalid username-password pair or "
                                               "user is disabled.)")
    assert redis_urls.failure(redis.ConnectionError("Error for s3cret-pw"), ["s3cret-pw"]) == "Error for ***"
