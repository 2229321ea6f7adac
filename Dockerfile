# The EventReach code location (issue 14): Dagster's gRPC code server for eventreach_assets.definitions.
# The same image runs every run (an ECS task or a Kubernetes Job started by the run launcher with
# `dagster api execute_run`), and on ECS also the webserver and the daemon (other commands, below).
# Build: docker build -t eventreach-code:$(git rev-parse --short HEAD) .
# Nothing secret is in it: storage, AWS and Snowflake settings come from the task's environment.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/eventreach \
    PATH=/opt/eventreach/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    EVENTREACH_HOME=/var/lib/eventreach \
    EVENTREACH_DEPLOYMENT=aws

# An unprivileged user owns only what it writes: the instance's home (logs buffer) and the data dir.
RUN groupadd --system --gid 10001 eventreach \
    && useradd --system --uid 10001 --gid eventreach --home-dir /opt/dagster --no-create-home \
       --shell /usr/sbin/nologin eventreach \
    && install -d -o eventreach -g eventreach /opt/dagster /opt/dagster/dagster_home /var/lib/eventreach

# The pinned versions every machine installs, then the package (not editable) with the deploy extra:
# dagster-postgres for the instance's storage, dagster-k8s for the Helm chart's run launcher.
WORKDIR /opt/eventreach-src
COPY setup.py pyproject.toml constraints.txt ./
COPY eventreach_assets ./eventreach_assets
RUN python3 -m venv /opt/eventreach \
    && pip install --no-cache-dir -c constraints.txt ".[deploy]" \
    && rm -rf /opt/eventreach-src/build /opt/eventreach-src/*.egg-info

# The production instance and the ECS workspace (the Helm chart mounts its own over DAGSTER_HOME).
COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml
COPY deploy/ecs/workspace.yaml /opt/dagster/workspace.yaml

USER 10001:10001
WORKDIR /opt/dagster
EXPOSE 4000

# The code server answers gRPC health checks once the definitions have loaded.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "--host", "127.0.0.1", "--port", "4000"]

# Code location (default). ECS webserver: dagster-webserver -w /opt/dagster/workspace.yaml -h 0.0.0.0 -p 3000
# ECS daemon: dagster-daemon run -w /opt/dagster/workspace.yaml
CMD ["dagster", "code-server", "start", "--module-name", "eventreach_assets.definitions", \
     "--host", "0.0.0.0", "--port", "4000", "--location-name", "eventreach_assets"]
