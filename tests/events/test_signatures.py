"""Signature checks: GitHub's published test vector, every provider's failure modes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ci_queue.events import signatures
from ci_queue.events.signatures import SignatureError, delivery_id, verify

# GitHub Docs, "Validating webhook deliveries" (../shared/fixtures/webhooks/github/SIGNATURE.md)
VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_HEX = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
BODY = b'{"ref":"refs/heads/main"}'


def test_github_test_vector():
    assert signatures.hmac_hex(VECTOR_SECRET, VECTOR_BODY) == VECTOR_HEX
    assert signatures.github_signature(VECTOR_SECRET, VECTOR_BODY) == "sha256=" + VECTOR_HEX
    verify("github", {"X-Hub-Signature-256": "sha256=" + VECTOR_HEX}, VECTOR_BODY, VECTOR_SECRET)
    verify("github", {"x-hub-signature-256": "sha256=" + VECTOR_HEX.upper()}, VECTOR_BODY, VECTOR_SECRET)


def test_the_vector_in_the_shared_fixtures_is_the_one_tested(shared_fixtures):
    text = (shared_fixtures / "webhooks" / "github" / "SIGNATURE.md").read_text()
    assert VECTOR_HEX in text and VECTOR_SECRET in text


def test_gitea_vector_has_no_prefix():
    verify("gitea", {"X-Gitea-Signature": VECTOR_HEX}, VECTOR_BODY, VECTOR_SECRET)
    verify("gitea", {"X-Forgejo-Signature": VECTOR_HEX}, VECTOR_BODY, VECTOR_SECRET)
    with pytest.raises(SignatureError) as info:
        verify("gitea", {"X-Gitea-Signature": "sha256=" + VECTOR_HEX}, VECTOR_BODY, VECTOR_SECRET)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("provider, headers, reason", [
    ("github", {}, "missing"),
    ("github", {"X-Hub-Signature-256": "sha256=" + "0" * 64}, "mismatch"),
    ("github", {"X-Hub-Signature-256": VECTOR_HEX}, "malformed"),  # no prefix
    ("github", {"X-Hub-Signature-256": "sha256=xyz"}, "malformed"),
    ("github", {"X-Hub-Signature-256": "sha256=" + "é" * 64}, "malformed"),
    ("gitea", {}, "missing"),
    ("gitea", {"X-Gitea-Signature": "ab" * 32}, "mismatch"),
    ("gitlab", {}, "missing"),
    ("gitlab", {"X-Gitlab-Token": "It's a Secret to Everybod"}, "mismatch"),
    ("gitlab", {"X-Gitlab-Token": "ünïcode"}, "mismatch"),
    ("generic", {}, "missing"),
])
def test_missing_or_wrong_signatures_are_refused(provider, headers, reason):
    with pytest.raises(SignatureError) as info:
        verify(provider, headers, VECTOR_BODY, VECTOR_SECRET)
    assert info.value.reason == reason


def test_gitlab_token_is_the_secret_itself():
    verify("gitlab", {"X-Gitlab-Token": VECTOR_SECRET}, b"anything", VECTOR_SECRET)


def test_a_tampered_body_fails():
    headers = {"X-Hub-Signature-256": signatures.github_signature("s3cret", BODY)}
    verify("github", headers, BODY, "s3cret")
    with pytest.raises(SignatureError, match="does not match"):
        verify("github", headers, BODY + b" ", "s3cret")
    with pytest.raises(SignatureError, match="does not match"):
        verify("github", headers, BODY, "other")


@pytest.mark.parametrize("provider", ["github", "gitea", "gitlab", "generic"])
@pytest.mark.parametrize("secret", [None, "", b""])
def test_no_secret_configured_refuses_even_a_correct_looking_delivery(provider, secret):
    headers = {"X-Hub-Signature-256": "sha256=" + hmac.new(b"", BODY, hashlib.sha256).hexdigest(),
               "X-Gitea-Signature": hmac.new(b"", BODY, hashlib.sha256).hexdigest(), "X-Gitlab-Token": "",
               **signatures.generic_headers(b"x", BODY)}
    with pytest.raises(SignatureError) as info:
        verify(provider, headers, BODY, secret)
    assert info.value.reason == "no_secret"


def test_legacy_sha1_only_when_enabled():
    sha1 = "sha1=" + hmac.new(b"s3cret", BODY, hashlib.sha1).hexdigest()
    with pytest.raises(SignatureError, match="X-Hub-Signature-256 is required"):
        verify("github", {"X-Hub-Signature": sha1}, BODY, "s3cret")
    verify("github", {"X-Hub-Signature": sha1}, BODY, "s3cret", allow_sha1=True)
    with pytest.raises(SignatureError):
        verify("github", {"X-Hub-Signature": "sha1=" + "0" * 40}, BODY, "s3cret", allow_sha1=True)
    # a wrong SHA-256 signature is not rescued by a right SHA-1 one
    with pytest.raises(SignatureError):
        verify("github", {"X-Hub-Signature": sha1, "X-Hub-Signature-256": "sha256=" + "0" * 64}, BODY, "s3cret",
               allow_sha1=True)


def test_every_gitea_signature_header_sent_must_match():
    good = signatures.hmac_hex("s3cret", BODY)
    with pytest.raises(SignatureError):
        verify("gitea", {"X-Gitea-Signature": good, "X-Forgejo-Signature": "0" * 64}, BODY, "s3cret")


def test_generic_timestamped_signature():
    now = 1_700_000_000
    headers = signatures.generic_headers("s3cret", BODY, timestamp=now, delivery="d-1")
    expected = hmac.new(b"s3cret", f"{now}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers["X-CIQ-Signature"] == "sha256=" + expected
    verify("generic", headers, BODY, "s3cret", now=now + 299)
    verify("generic", {**headers, "X-CIQ-Signature": expected}, BODY, "s3cret", now=now)  # prefix optional
    for late in (now + 301, now - 301):
        with pytest.raises(SignatureError) as info:
            verify("generic", headers, BODY, "s3cret", now=late)
        assert info.value.reason == "stale"
    # the timestamp is signed: moving it forward breaks the signature
    with pytest.raises(SignatureError) as info:
        verify("generic", {**headers, "X-CIQ-Timestamp": str(now + 100)}, BODY, "s3cret", now=now + 100)
    assert info.value.reason == "mismatch"
    with pytest.raises(SignatureError) as info:
        verify("generic", {**headers, "X-CIQ-Timestamp": "-5"}, BODY, "s3cret", now=now)
    assert info.value.reason == "malformed"


def test_delivery_ids():
    assert delivery_id("github", {"x-github-delivery": "88f41318-101a"}) == "88f41318-101a"
    assert delivery_id("gitea", {"X-Gitea-Delivery": "g1"}) == "g1"
    assert delivery_id("gitea", {"X-Forgejo-Delivery": "f1"}) == "f1"
    assert delivery_id("gitlab", {"X-Gitlab-Event-UUID": "e1", "Idempotency-Key": "i1"}) == "i1"
    assert delivery_id("gitlab", {"X-Gitlab-Event-UUID": "e1"}) == "e1"
    assert delivery_id("generic", {"X-CIQ-Delivery": "c1"}) == "c1"
    assert delivery_id("github", {}) == ""
    assert delivery_id("github", {"X-GitHub-Delivery": "a\nb"}) == ""  # never into a key
    assert delivery_id("github", {"X-GitHub-Delivery": "x" * 201}) == ""


def test_unknown_provider():
    with pytest.raises(ValueError):
        verify("bitbucket", {}, b"", "s")
