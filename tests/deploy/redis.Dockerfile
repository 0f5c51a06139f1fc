# The Redis of tests/deploy: Docker Hub (redis:7) is not reachable from CI, Debian's mirror is.
# Built FROM the local Debian base (.ci/debian-base.sh); docker-compose.yml runs `redis-server ...`
# in /data as the redis image does.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && install -d /data
WORKDIR /data
CMD ["redis-server"]
