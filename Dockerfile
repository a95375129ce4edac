# Two stages: the build stage installs the locked dependencies (wheels only, each checked against its
# hash) and our project into /opt/venv; the runtime image gets that venv alone: no compiler, no pip
# cache, no build tools, and runs as a non-root user. Refresh the locks with `make lock`.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv && python -m venv /opt/build
COPY requirements.lock requirements-build.lock /tmp/locks/
# Its own layer: it changes only with the locks, so a code change rebuilds in seconds.
RUN /opt/venv/bin/pip install --require-hashes --only-binary=:all: --no-deps -r /tmp/locks/requirements.lock \
 && /opt/build/bin/pip install --require-hashes --only-binary=:all: --no-deps -r /tmp/locks/requirements-build.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
# Our project, built with the locked setuptools, then installed without resolving anything.
RUN /opt/build/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install --no-deps /tmp/wheels/oa_webhooks-*.whl

FROM python:3.11-slim
LABEL org.opencontainers.image.title="oa-webhooks"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER app
# 8000: the webhook (public); 8001: /metrics and /readyz (OA_ADMIN_HOST decides who can reach it).
EXPOSE 8000 8001
CMD ["oa-webhooks", "api"]
