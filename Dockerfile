# The embedlens server: CPU-only torch, the MiniLM model package and its built search indexes
# inside, running as a non-root user. See docs/deployment.md.
#
#   docker build -t embedlens:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9100:9100 embedlens:0.1.0
#
# Every server flag is an EMBEDLENS_* variable (`docker run -e EMBEDLENS_WORKERS=8 ...`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with the server, and a warm model cache --------------------
FROM ${PYTHON_IMAGE} AS build

# The default torch wheel for Linux on PyPI is the CUDA build (several GB of libraries a CPU
# server never loads); the PyTorch CPU index has the same version without them.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/embedlens/bin:$PATH
RUN python -m venv /opt/embedlens
WORKDIR /src

# Dependencies first, so that editing the code does not reinstall them. Versions come from
# pyproject.toml (docker/requirements.py says why each group is installed the way it is).
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/
RUN for group in torch runtime model; do \
        python docker/requirements.py "$group" > "/tmp/$group.txt" || exit 1; \
    done \
 && pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt \
 && pip install -r /tmp/runtime.txt \
 && pip install --no-deps -r /tmp/model.txt

COPY client/ client/
COPY server/ server/
RUN pip install --no-deps ./client . \
 && python -c "import torch; assert torch.version.cuda is None, 'not the CPU build of torch'" \
 && embedlens --version

# Load the model, build its indexes into the cache and answer one query per metric through the
# real server and client: a container then starts from the cache in seconds, replicas share
# the files read-only through the page cache, and an image that cannot serve fails to build.
COPY docker/warm_cache.py docker/
RUN EMBEDLENS_CACHE_DIR=/opt/embedlens-cache python docker/warm_cache.py --no-progress

# ---- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="embedlens" \
      org.opencontainers.image.description="gRPC service for embedding similarity and the residual stream of a transformer" \
      org.opencontainers.image.licenses="Apache-2.0"

# OpenMP runtime for faiss and torch, in case a wheel does not vendor its own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 embedlens \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/embedlens \
        --shell /usr/sbin/nologin embedlens

COPY --from=build /opt/embedlens /opt/embedlens
COPY --from=build --chown=10001:10001 /opt/embedlens-cache /var/cache/embedlens
COPY docker/healthcheck.py /usr/local/share/embedlens/healthcheck.py

# Defaults only: compose and Kubernetes override them the same way.
ENV PATH=/opt/embedlens/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EMBEDLENS_PORT=50051 \
    EMBEDLENS_METRICS_HOST=0.0.0.0 \
    EMBEDLENS_METRICS_PORT=9100 \
    EMBEDLENS_CACHE_DIR=/var/cache/embedlens \
    EMBEDLENS_GRACE_SECONDS=20 \
    EMBEDLENS_PROGRESS=0

USER 10001:10001
WORKDIR /home/embedlens
EXPOSE 50051 9100

# Healthy = the gRPC health service says SERVING, i.e. every model and index is loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/share/embedlens/healthcheck.py", "--timeout", "4"]

# SIGTERM: health goes NOT_SERVING, new calls are refused, in-flight ones get
# EMBEDLENS_GRACE_SECONDS to finish, exit 0. Give the container longer than that to stop
# (compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["embedlens"]
CMD ["serve"]
