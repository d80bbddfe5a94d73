# The Airlock image: the `airlock` command on Python 3.13, plus iptables for `airlock capture`
# (the chart's capture init container, which alone runs as root with NET_ADMIN and NET_RAW).
#
#   docker build -t ghcr.io/airlock-dev/airlock:0.1.0 .
#   docker run --rm -p 8080:8080 -v airlock-data:/data ghcr.io/airlock-dev/airlock:0.1.0
FROM python:3.13-slim

# iptables brings both backends (nft and legacy) and ip6tables.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*

# Airlock runs as this user (UID 10001, the chart's airlock.uid default), never as root.
RUN groupadd --gid 10001 airlock \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin airlock \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 0700 /data

# Only what the package build needs; .dockerignore keeps the rest of the tree out.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY rules ./rules
COPY store ./store
RUN pip install --no-cache-dir . \
    && rm -rf /src
# /src is gone from here on: nothing below runs there (WORKDIR moves to /data).

ENV AIRLOCK_DATA=/data \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The log (LMDB), the CA and the control token. LMDB needs a local filesystem: never mount
# NFS or another network filesystem here.
VOLUME /data
WORKDIR /data
USER 10001:10001

# The forward proxy; the control API (8081) stays on loopback.
EXPOSE 8080

ENTRYPOINT ["airlock"]
# Standalone defaults: the forward proxy on every interface of the container, so `-p 8080:8080`
# reaches it; the control API stays on the container's loopback (`docker exec ... airlock log`).
# The shipped default rules allow loopback hosts only; mount yours and add --rules.
CMD ["run", "--data", "/data", "--listen", "0.0.0.0:8080", "--control", "127.0.0.1:8081"]
