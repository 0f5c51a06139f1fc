"""ci_queue.clone_policy on its own: how URLs are read, which addresses are refused, what git is
told, and how the settings are validated."""

from __future__ import annotations

import ipaddress

import pytest

from ci_queue.clone_policy import (
    ClonePolicy,
    CloneRefused,
    HostUnresolved,
    address_kind,
    parse,
    parse_allow_list,
    same_repository_url,
)
from ci_queue.settings import Settings, SettingsError


@pytest.mark.parametrize("url, scheme, host, port, authority", [
    ("https://git.example.org/a/b.git", "https", "git.example.org", None, "git.example.org"),
    ("https://user:pw@Git.Example.org:8443/a.git", "https", "git.example.org", 8443, "Git.Example.org:8443"),
    ("ssh://git@host.example:2222/a.git", "ssh", "host.example", 2222, "host.example:2222"),
    ("git@github.com:o/r.git", "ssh", "github.com", None, "github.com"),
    ("git://[2001:db8::1]:9418/r.git", "git", "2001:db8::1", 9418, "[2001:db8::1]:9418"),
    ("file:///srv/r.git", "file", "", None, ""),
    ("/srv/r.git", "file", "", None, ""),
])
def test_urls_are_read_as_git_reads_them(url, scheme, host, port, authority):
    target = parse(url)
    assert (target.scheme, target.host, target.port, target.authority) == (scheme, host, port, authority)


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("10.0.0.1", "private"), ("192.168.0.1", "private"), ("172.31.255.255", "private"),
    ("169.254.169.254", "cloud metadata"), ("169.254.1.1", "link-local"), ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "non-global"), ("224.0.0.1", "multicast"), ("240.0.0.1", "private"), ("::1", "loopback"),
    ("fe80::1", "link-local"), ("fd00::1", "private"), ("::", "unspecified"), ("::ffff:127.0.0.1", "loopback"),
    ("2002:a00:1::", "private"), ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo: the client is 10.0.0.1, de-obfuscated
])
def test_addresses_a_clone_may_not_reach(address, kind):
    assert kind in address_kind(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "140.82.121.4", "2606:4700::6810:84e5", "1.1.1.1"])
def test_public_addresses_pass(address):
    assert address_kind(ipaddress.ip_address(address)) is None


def test_every_resolved_address_must_pass_and_the_pins_name_them_all():
    answers = {"split.test": ["93.184.216.34", "2606:4700::1"], "mixed.test": ["93.184.216.34", "127.0.0.1"]}
    policy = ClonePolicy(resolver=lambda host, port: answers[host])
    target = policy.check("https://split.test:8443/r.git")
    assert target.git_config() == ["-c", "http.followRedirects=false", "-c", "http.curloptResolve=",
                                   "-c", "http.curloptResolve=split.test:8443:93.184.216.34,[2606:4700::1]"]
    assert policy.check("git://split.test/r.git").git_config() == [
        "-c", "url.git://93.184.216.34:9418/.insteadOf=git://split.test/"]
    assert policy.check("git@split.test:r.git").git_config() == []  # ssh resolves itself: checked, not pinned
    with pytest.raises(CloneRefused, match=r"mixed.test \(127.0.0.1\)"):
        policy.check("https://mixed.test/r.git")


def test_an_unresolvable_name_is_the_workers_to_refuse():
    def nowhere(host: str, port: int) -> list[str]:
        raise HostUnresolved(f"{host} does not resolve")

    policy = ClonePolicy(resolver=nowhere)
    assert policy.check("https://gone.test/r.git").addresses == ()
    with pytest.raises(HostUnresolved):
        policy.check("https://gone.test/r.git", must_resolve=True)
    with pytest.raises(CloneRefused, match="plain http:// is refused"):
        policy.check("http://gone.test/r.git")


def test_the_allow_list_and_its_validation():
    names, networks = parse_allow_list(" git.corp , *.internal.example,10.0.0.0/8, fd00::/8 ,[::1],")
    assert names == ("git.corp", "*.internal.example")
    assert [str(n) for n in networks] == ["10.0.0.0/8", "fd00::/8", "::1/128"]
    policy = ClonePolicy(allow_names=names, allow_networks=networks)
    assert policy.check("https://[::ffff:10.1.1.1]/r.git").host == "::ffff:10.1.1.1"  # the mapped form too
    assert policy.check("https://a.internal.example/r.git").addresses == ()  # a listed name: trusted as named
    assert Settings.from_env({"CIQ_CLONE_ALLOW_HOSTS": "10.0.0.0/8,git.corp"}).clone_allow_hosts
    for bad in ("10.0.0.0/33", "not a host", "http://x"):
        with pytest.raises(SettingsError, match="CIQ_CLONE_ALLOW_HOSTS"):
            Settings.from_env({"CIQ_CLONE_ALLOW_HOSTS": bad})


def test_registered_urls_compare_as_the_same_repository():
    assert same_repository_url("https://Git.Example.org/o/r.git", "https://git.example.org/o/r/")
    assert not same_repository_url("https://git.example.org/o/r.git", "https://git.example.org/O/r.git")
    assert not same_repository_url("https://git.example.org/o/r.git", "https://evil.example/o/r.git")
