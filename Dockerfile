# syntax=docker/dockerfile:1
# Carebook image: the API (default command), the worker (`carebook worker`) and the migrations
# (`carebook migrate`). Build: docker build -t carebook .   (docker-compose.yml does it for you)

# ---- builder: every dependency as a wheel --------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Compilers live in this stage only, for a dependency that has no wheel for the build platform;
# the runtime stage installs finished wheels and has none. Unpinned: the stage is thrown away.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only the project metadata: the wheels depend on pyproject.toml alone, so editing the source
# does not download them again. Without the source the project's own wheel is empty; it is
# removed. setuptools and wheel are the build backend the runtime stage needs (offline) for the
# editable install of Carebook itself. README.md is a placeholder for the `readme` field.
COPY pyproject.toml ./
RUN touch README.md \
 && pip wheel --wheel-dir /wheels . "setuptools>=77" wheel \
 && rm -f /wheels/carebook-*.whl

# ---- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN groupadd --system --gid 10001 carebook \
 && useradd --system --uid 10001 --gid carebook --create-home --home-dir /home/carebook \
        --shell /usr/sbin/nologin carebook

# Why the source tree stays in /srv/carebook and is installed in editable mode:
# app.kit.migrations finds `alembic.ini` and `alembic/` at PROJECT_ROOT, i.e.
# Path(app/kit/migrations.py).parents[2], the folder that contains the `app` package. A regular
# install would put `app` into site-packages, where PROJECT_ROOT would be site-packages itself
# (and site-packages/alembic is the Alembic library, not our migrations). With the editable
# install, `app` and `workers` are imported from /srv/carebook, so PROJECT_ROOT is /srv/carebook,
# next to alembic/ and alembic.ini; the `carebook` and `arq` commands are on the PATH.
WORKDIR /srv/carebook
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY workers ./workers
COPY app ./app

# Installs from the builder's wheels only (no index), without copying them into a layer; the
# python -c line fails the build if the migrations would not be found at run time. The source
# is compiled here because containers run with a read-only root file system (deploy/k8s,
# docker-compose.yml), where Python could not write its bytecode cache.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels --editable . \
 && python -c "from app.kit.migrations import PROJECT_ROOT as r; \
assert (r / 'alembic.ini').is_file() and (r / 'alembic' / 'env.py').is_file(), r" \
 && python -m compileall -q app workers alembic

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

EXPOSE 8000

# Readiness of the API (the database answers), for plain Docker and Compose; Kubernetes ignores
# it and uses the probes in deploy/k8s. Services that run another command (worker, migrate)
# override or disable it: see docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]

# Needs CAREBOOK_DATABASE_URL, CAREBOOK_REDIS_URL, CAREBOOK_ENVIRONMENT=production and
# CAREBOOK_JWT_SECRET; `carebook worker` must run as a separate container. One uvicorn process
# per container: scale with containers (/metrics then describes one whole process).
CMD ["carebook", "serve", "--host", "0.0.0.0", "--port", "8000"]
