"""A ``redis-server`` of the test's own that wants credentials: a password for the default user,
an ACL user without admin commands, and optionally TLS only (a CA, a server certificate and a
client certificate made with ``openssl`` in the test's temp dir)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import RedisServer, in_ci

DEFAULT_PASSWORD = "dflt-Pw-7c1e94"
ACL_USER = "ciq"
# characters a URL must percent-encode, so the test shows the password survives the round trip
ACL_PASSWORD = "acl:P@ss/w0rd%92"
ACL_RULES = ("on", f">{ACL_PASSWORD}", "~*", "&*", "+@all", "-@admin")  # no CONFIG, no ACL, no SHUTDOWN...


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def require_openssl() -> str:
    found = shutil.which("openssl")
    if found:
        return found
    if in_ci():
        pytest.fail("no openssl on PATH; CI must have it")
    pytest.skip("no openssl on PATH")


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA, a certificate for 127.0.0.1 / localhost and a client certificate, both
    signed by it (RSA 2048, valid for a day)."""
    openssl = require_openssl()
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=ci-queue test CA")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, extra in (("server", "/CN=127.0.0.1", ["-extfile", "server.ext"]),
                                 ("client", "/CN=ci-queue client", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", *extra)
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                    directory / "client.crt", directory / "client.key")


class SecureRedis(RedisServer):
    """``requirepass`` and the ACL user ``ciq``; with ``tls``, only a TLS port that requires a
    client certificate signed by the test CA."""

    def __init__(self, directory: Path, tls: TlsFiles | None = None) -> None:
        super().__init__(directory)
        self.tls = tls
        self.user, self.password = ACL_USER, ACL_PASSWORD
        options = ["--requirepass", DEFAULT_PASSWORD, "--user", ACL_USER, *ACL_RULES]
        if tls is not None:  # the later --port wins over RedisServer's
            options += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(tls.server_cert),
                        "--tls-key-file", str(tls.server_key), "--tls-ca-cert-file", str(tls.ca),
                        "--tls-auth-clients", "yes"]
        self.options = tuple(options)

    def url_for(self, user: str | None, password: str) -> str:
        """A URL with ``user`` (None: the default user) and ``password``, percent-encoded; a TLS
        URL carries no file options (the test gives them as settings or adds them)."""
        credentials = f"{quote(user, safe='') if user else ''}:{quote(password, safe='')}@"
        return f"{'rediss' if self.tls else 'redis'}://{credentials}127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        """The ACL user's URL; for TLS with the files in its query (what the test's own clients use)."""
        url = self.url_for(self.user, self.password)
        if self.tls is not None:
            url += (f"?ssl_ca_certs={self.tls.ca}&ssl_certfile={self.tls.client_cert}"
                    f"&ssl_keyfile={self.tls.client_key}")
        return url

    def admin(self) -> Any:
        """A client of the default user (which may run ACL and CONFIG), TLS or not."""
        import redis

        return redis.Redis.from_url(self.url.replace(self.url_for(self.user, self.password),
                                                     self.url_for(None, DEFAULT_PASSWORD)), decode_responses=True)

    def secrets(self) -> list[str]:
        """Every form in which a password of this server could leak into text."""
        return [ACL_PASSWORD, quote(ACL_PASSWORD, safe=""), DEFAULT_PASSWORD]


def assert_hidden(texts: dict[str, str], secrets: list[str]) -> None:
    """No text (name -> content) contains any of ``secrets``."""
    leaks = [(name, secret) for name, text in texts.items() for secret in secrets if secret in text]
    assert not leaks, f"passwords printed: {leaks}"
