#!/usr/bin/env bash
# A Debian base image made on this machine, for `docker build --build-arg BASE_IMAGE=...` where no
# registry is reachable: `.ci/debian-base.sh [TAG]` (default ci-queue-test/debian:bookworm).
#
# debootstrap --variant=minbase (Debian's apt mirror is reachable; Docker Hub is not), then
# `docker import`. An image of that tag already there is reused: the tag names the suite, and a
# base a few days old is as good as a fresh one (the build upgrades nothing it does not install).
#
# The host's CA bundle goes into the base (and into /usr/local/share/ca-certificates, so that an
# `update-ca-certificates` run by the build keeps it): where outbound TLS passes through an
# intercepting proxy whose CA only the host trusts, `docker build --network host` could not
# reach PyPI otherwise. PIP_CERT and SSL_CERT_FILE point pip and Python at it (pip's own
# certifi bundle would not have that CA).
set -euo pipefail

TAG="${1:-ci-queue-test/debian:bookworm}"
SUITE="${CIQ_BASE_SUITE:-bookworm}"
MIRROR="${CIQ_BASE_MIRROR:-http://deb.debian.org/debian}"
HOST_CA="${CIQ_BASE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

say() { echo "debian-base.sh: $*" >&2; }

if docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG is there already"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || { say "no debootstrap (apt-get install debootstrap)"; exit 1; }

root="$(mktemp -d /var/tmp/ci-queue-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
chmod 755 "$root" # the image's / : mktemp made it 0700
say "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
  tail -n 30 "$root.log" >&2
  rm -f "$root.log"
  exit 1
}
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
if [[ -s "$HOST_CA" ]]; then
  mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
  cp "$HOST_CA" "$root/etc/ssl/certs/ca-certificates.crt"
  cp "$HOST_CA" "$root/usr/local/share/ca-certificates/ci-queue-host-bundle.crt"
fi
bundle=/etc/ssl/certs/ca-certificates.crt
tar -C "$root" --numeric-owner -cf - . |
  docker import \
    --change "ENV PIP_CERT=$bundle SSL_CERT_FILE=$bundle REQUESTS_CA_BUNDLE=$bundle" \
    --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
say "imported $TAG"
