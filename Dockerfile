# syntax=docker/dockerfile:1
# Carebook image: the API (default command), the worker (`carebook worker`) and the migrations
# (`carebook migrate`). Build: docker build -t carebook .   (docker-compose.yml does it for you)

# ---- builder: every dependency as a wheel --------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only the project metadata: the wheels depend on pyproject.toml alone, so editing the source
# does not download them again. Without the source the project's own wheel is empty; it is
# removed. setuptools and wheel are the build backend the runtime stage needs (offline) for the
# editable install of Carebook itself. README.md is a placeholder for the `readme` field.
COPY pyproject.toml ./
RUN touch README.md \
 && pip wheel --wheel-dir /wheels . "setuptools>=68" wheel \
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
# last line fails the build if the migrations would not be found at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels --editable . \
 && python -c "from app.kit.migrations import PROJECT_ROOT as r; \
assert (r / 'alembic.ini').is_file() and (r / 'alembic' / 'env.py').is_file(), r"

USER carebook

EXPOSE 8000

# Readiness of the API (the database answers). Services that run another command (worker,
# migrate) override or disable it: see docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]

# Needs CAREBOOK_DATABASE_URL, CAREBOOK_REDIS_URL, CAREBOOK_ENVIRONMENT=production and
# CAREBOOK_JWT_SECRET; `carebook worker` must run as a separate container.
CMD ["carebook", "serve", "--host", "0.0.0.0", "--port", "8000"]
