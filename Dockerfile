# One image for both roles of ci-queue: the web app (`ci-queue serve`, as the unprivileged user
# `ciq`, the image's default user) and the worker (`ci-queue worker`, as root: it runs shell jobs
# as the unprivileged users ciq-job1..8, which needs root to switch users).
#
#   docker build -t ci-queue .
#   docker build --build-arg BASE_IMAGE=my-registry/debian:bookworm -t ci-queue .   # another base
#
# BASE_IMAGE must be Debian 12 (bookworm) or later, or a derivative with apt: Python 3.11+ comes
# from it. Only the classic builder's features are used (no RUN --mount), so the legacy builder
# and BuildKit both build it. The shell executor runs jobs inside the worker's container: what
# jobs need beyond git, curl, Python and a POSIX userland goes into an image built FROM this one.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# tini: PID 1 forwards SIGTERM to the ci-queue process only (as systemd's KillMode=mixed does:
# the worker's pool processes must not get it, or running jobs would be handed back at once
# instead of after CIQ_SHUTDOWN_GRACE_SECONDS) and reaps what jobs orphan.
# git, openssh-client: checkouts (ssh:// clone URLs too). setpriv (util-linux) is in every Debian.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates tini git openssh-client curl procps \
    && rm -rf /var/lib/apt/lists/*

# ciq: the web app. ciq-job1..8: the users shell jobs run as (CIQ_SHELL_USER), one job per user at
# a time, so up to 8 concurrent shell jobs per worker container. /var/lib/ci-queue stays root's:
# the worker refuses state directories that another user could swap; the web app's artifact
# store is the one directory of ciq's.
RUN useradd --system --uid 10001 --user-group --create-home --shell /usr/sbin/nologin ciq \
    && for n in 1 2 3 4 5 6 7 8; do \
         useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "ciq-job$n"; \
       done \
    && install -d -m 0755 /var/lib/ci-queue /srv/ci-queue \
    && install -d -m 0750 -o ciq -g ciq /var/lib/ci-queue/objects

# The venv stays off PATH: shell jobs inherit the worker's PATH, and their `python3` / `pip` must
# be the system's, not the venv holding ci-queue's dependencies. Only the commands are linked.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, from pyproject.toml alone: a change to the code reuses this layer.
COPY pyproject.toml /tmp/ci-queue/
RUN python3 -m venv /opt/ci-queue \
    && python3 -c 'import tomllib, sys; print("\n".join(tomllib.load(sys.stdin.buffer)["project"]["dependencies"]))' \
        </tmp/ci-queue/pyproject.toml >/tmp/ci-queue/requirements.txt \
    && /opt/ci-queue/bin/pip install --requirement /tmp/ci-queue/requirements.txt \
    && rm -rf /tmp/ci-queue

COPY pyproject.toml README.md /tmp/ci-queue/
COPY ci_queue /tmp/ci-queue/ci_queue
COPY workers /tmp/ci-queue/workers
RUN /opt/ci-queue/bin/pip install --no-deps /tmp/ci-queue && rm -rf /tmp/ci-queue \
    && ln -s /opt/ci-queue/bin/ci-queue /usr/local/bin/ci-queue && ci-queue --help >/dev/null
# The worker's entry point in a container: a name of its own per replica, and its health check.
COPY configs/container/ci-queue-worker /usr/local/bin/ci-queue-worker

# The working directory holds configs/ (configs/repos.yml, the repository registry, is read from
# there): docker-compose.yml mounts the checkout's configs/ here.
WORKDIR /srv/ci-queue
ENV CIQ_LOG_FORMAT=json \
    CIQ_WORKSPACE_DIR=/var/lib/ci-queue/workspaces \
    CIQ_GIT_CACHE_DIR=/var/lib/ci-queue/git \
    CIQ_CACHE_DIR=/var/lib/ci-queue/cache \
    CIQ_ARTIFACTS_URL=file:///var/lib/ci-queue/objects
USER ciq
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["ci-queue", "serve", "--host", "0.0.0.0", "--port", "8080"]
