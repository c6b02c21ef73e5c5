# One image for every part of the service: the API, the worker and the mlpctl CLI.
#
#   docker build -t mlp-service:cpu .                                   # CPU-only torch
#   docker build --build-arg TORCH_VARIANT=cuda -t mlp-service:cuda .    # CUDA torch
#   docker run -p 8000:8000 -e DATABASE_URL=... -e REDIS_URL=... mlp-service:cpu
#   docker run mlp-service:cpu worker --queues cpu --concurrency 1
FROM python:3.11-slim

# cpu: the CPU wheel from download.pytorch.org (small); cuda: PyPI's wheel (bundles CUDA)
ARG TORCH_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLP_DATA_DIR=/data

RUN groupadd --system --gid 10001 mlp \
 && useradd --system --uid 10001 --gid mlp --home-dir /home/mlp --create-home mlp \
 && mkdir -p /data \
 && chown mlp:mlp /data

WORKDIR /app

# torch first, in a layer of its own: the largest dependency and the one that changes least.
# Its version is written once, in requirements/torch.lock: the CPU build, hash-checked, from
# PyTorch's index; or PyPI's build of the same version, which bundles CUDA (no lock has it).
COPY requirements/torch.lock ./requirements/
RUN case "$TORCH_VARIANT" in \
      cpu)  pip install --require-hashes --no-deps --index-url https://download.pytorch.org/whl/cpu \
              -r requirements/torch.lock ;; \
      cuda) pip install "torch==$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements/torch.lock)" ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac

# then the rest of what the `server` extra needs, every version and file from the locks
COPY requirements ./requirements
RUN pip install --require-hashes -r requirements/server.lock

# and the project itself, whose dependencies are all there now
COPY pyproject.toml ./
COPY mlp_engine ./mlp_engine
COPY store ./store
COPY messaging ./messaging
COPY service ./service
COPY worker ./worker
COPY mlpctl ./mlpctl
RUN pip install --no-deps . \
 && pip check

USER mlp
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MLP_PORT', '8000'), timeout=4)"

ENTRYPOINT ["mlpctl"]
CMD ["api", "--host", "0.0.0.0"]
