#!/usr/bin/env bash
# Docker for the integration tests: `.ci/docker.sh up` / `.ci/docker.sh down`.
#
# up (idempotent): installs Debian's docker.io and busybox-static if missing, starts dockerd in the
#   background if `docker info` fails (no bridge, no iptables: job containers use network mode
#   none/host and nothing leaves the machine), and imports the test image (a busybox root file
#   system; no registry is reachable) if it is absent. dockerd listens on the default socket
#   (unix:///var/run/docker.sock), which is where the pip-installed docker SDK's
#   `docker.from_env()` looks, so no DOCKER_HOST is needed.
# down: stops the dockerd that `up` started (the pid in our pidfile), and nothing else.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="${CIQ_TEST_IMAGE:-ci-queue-test/busybox:latest}"
STATE_DIR="${CIQ_DOCKER_STATE_DIR:-/var/run/ci-queue-docker}"
PIDFILE="$STATE_DIR/dockerd.pid"
LOG="$STATE_DIR/dockerd.log"
START_DEADLINE="${CIQ_DOCKER_START_DEADLINE:-60}"  # seconds for dockerd to answer
STOP_DEADLINE=30                                     # seconds for dockerd to stop on SIGTERM

say() { echo "docker.sh: $*" >&2; }

docker_up() { docker info >/dev/null 2>&1; }

install_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || missing+=(busybox-static)
  # tests/deploy: Compose (Debian has v1, `docker-compose`; the v2 plugin is not in Debian) and
  # debootstrap, which makes the local Debian base the project's image is built from.
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d-less containers: the package's service start may fail; we start dockerd ourselves.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

our_dockerd_pid() {
  # The pid in our pidfile, if that process is still a dockerd.
  [[ -s "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
  echo "$pid"
}

start_dockerd() {
  mkdir -p "$STATE_DIR"
  if our_dockerd_pid >/dev/null; then
    say "dockerd (pid $(our_dockerd_pid)) is starting already"
  else
    say "starting dockerd (log: $LOG)"
    # setsid: its own session, so that it outlives this script and the caller's process group.
    setsid dockerd --bridge=none --iptables=false --ip-masq=false --pidfile "$PIDFILE" \
      >"$LOG" 2>&1 </dev/null &
  fi
  local deadline=$((SECONDS + START_DEADLINE))
  until docker_up; do
    if ((SECONDS >= deadline)); then
      say "dockerd did not answer within ${START_DEADLINE}s; last lines of $LOG:"
      tail -n 30 "$LOG" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  say "dockerd is up ($(docker info --format '{{.ServerVersion}} {{.Driver}}' 2>/dev/null))"
}

import_image() {
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  say "importing $IMAGE from busybox-static"
  # A subshell, so that its EXIT trap removes the scratch root whatever happens.
  (
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp}
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    # What `busybox --install -s` makes (every applet as a symlink to /bin/busybox), done from
    # outside the root so that the links point at /bin/busybox inside the image.
    local applet
    while read -r applet; do
      [[ -e "$root/$applet" || -L "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
    done < <(/bin/busybox --list-full)
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar -C "$root" --numeric-owner --owner=0 --group=0 -cf - . |
      docker import --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
  )
  say "imported $IMAGE"
}

sdk_check() {
  # The tests talk to the daemon through the pip-installed docker SDK (a dependency of the
  # project): make sure it finds the daemon where the CLI does (default socket or $DOCKER_HOST).
  local py=python3
  [[ -x "$REPO/.venv/bin/python" ]] && py="$REPO/.venv/bin/python"
  "$py" -c 'import docker' 2>/dev/null || return 0 # not installed yet: `make test` installs it
  if ! "$py" -c 'import docker; docker.from_env().ping()' >/dev/null 2>&1; then
    say "the docker SDK of $py cannot reach the daemon (DOCKER_HOST=${DOCKER_HOST:-unset})"
    exit 1
  fi
}

up() {
  install_packages
  docker_up || start_dockerd
  import_image
  sdk_check
}

down() {
  local pid
  if ! pid="$(our_dockerd_pid)"; then
    say "no dockerd started by docker.sh is running"
    return 0
  fi
  say "stopping dockerd (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_DEADLINE))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      say "dockerd did not stop within ${STOP_DEADLINE}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$PIDFILE"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
