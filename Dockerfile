# paxtrain for NVIDIA GPUs (default) or Cloud TPU VMs, selected by a build argument:
#   docker build -t paxtrain:gpu .
#   docker build -t paxtrain:tpu --build-arg ACCELERATOR=tpu .
#   docker run --gpus all -v "$PWD/runs:/workspace/runs" paxtrain:gpu fit configs/char_rnn.yaml
# See docker/README.md (what has and has not been built) and launch/ (Slurm, TPU pods).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# gpu: JAX with the CUDA libraries as pip wheels (no CUDA base image needed; the host provides
# the driver). CUDA 13, as the JAX installation guide recommends, needs driver >= 580; older
# drivers: --build-arg CUDA_MAJOR=12. tpu: JAX with libtpu. cpu: for trying the image anywhere.
ARG ACCELERATOR=gpu
ARG CUDA_MAJOR=13

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# JAX first, alone in its layer: the accelerator wheels are gigabytes and change only with the
# build arguments, so editing paxtrain does not download them again. The bounds match pyproject.
RUN case "${ACCELERATOR}" in \
        gpu) extra="cuda${CUDA_MAJOR}" ;; \
        tpu) extra="tpu" ;; \
        cpu) extra="cpu" ;; \
        *) echo "ACCELERATOR must be gpu, tpu or cpu; got '${ACCELERATOR}'" >&2; exit 1 ;; \
    esac \
    && pip install "jax[${extra}]>=0.7,<0.11"

WORKDIR /opt/paxtrain
COPY pyproject.toml README.md ./
COPY paxtrain ./paxtrain
RUN pip install . && rm -rf /opt/paxtrain

# Training runs as an unprivileged user; runs/ is where a volume goes.
RUN useradd --create-home --uid 1000 paxtrain \
    && mkdir -p /workspace/runs && chown -R paxtrain:paxtrain /workspace
WORKDIR /workspace
COPY --chown=paxtrain:paxtrain configs ./configs
COPY --chown=paxtrain:paxtrain recipes ./recipes
USER paxtrain

ENTRYPOINT ["paxtrain"]
CMD ["env"]
