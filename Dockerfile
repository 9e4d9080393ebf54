# paxtrain for NVIDIA GPUs (default), Cloud TPU VMs or CPU, selected by a build argument:
#   docker build -t paxtrain:gpu .
#   docker build -t paxtrain:tpu --build-arg ACCELERATOR=tpu .
#   docker build -t paxtrain:cpu --build-arg ACCELERATOR=cpu .
#   docker run --gpus all -v "$PWD/runs:/workspace/runs" paxtrain:gpu fit configs/char_rnn.yaml
# The three differ only in their first stage (the JAX extra; NVIDIA's variables on GPUs), so
# building the CPU image (docker/build_and_smoke.sh) exercises every other line. See
# docker/README.md (what was built and run) and launch/.

# Any image with Python >= 3.11 and its venv module. The same base for all three: JAX's CUDA and
# TPU runtimes are pip wheels, and the host provides the GPU driver or the TPU devices.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG ACCELERATOR=gpu

# All that differs between the three images: the JAX extra, and on GPUs the two variables that
# NVIDIA's container hooks (Container Toolkit, enroot/pyxis) read to give a container the GPUs.
# Each stage sets something: buildah drops an empty stage's image at the end of a build, and an
# empty stage's image is the base itself.
FROM ${BASE_IMAGE} AS cpu-base
ENV PAXTRAIN_JAX_EXTRA=cpu

FROM ${BASE_IMAGE} AS tpu-base
ENV PAXTRAIN_JAX_EXTRA=tpu

# jax[cuda12] runs on NVIDIA drivers >= 525; --build-arg CUDA_MAJOR=13 needs driver >= 580.
FROM ${BASE_IMAGE} AS gpu-base
ARG CUDA_MAJOR=12
ENV PAXTRAIN_JAX_EXTRA=cuda${CUDA_MAJOR} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# An unknown ACCELERATOR fails here: no stage is named so, and no image "<ACCELERATOR>-base".
# hadolint ignore=DL3006
FROM ${ACCELERATOR}-base

# A virtual environment, so the same lines work on bases whose system Python is
# externally managed (PEP 668, e.g. Debian's python3).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# JAX first, alone in its layer: the accelerator wheels are gigabytes and change only with the
# build arguments, so editing paxtrain does not download them again. The bounds match pyproject.
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install "jax[${PAXTRAIN_JAX_EXTRA}]>=0.10,<0.11"

WORKDIR /opt/paxtrain
COPY pyproject.toml README.md ./
COPY paxtrain ./paxtrain
# With the recipes extra, so that every recipe shipped in the package runs.
RUN pip install "/opt/paxtrain[recipes]" && rm -rf /opt/paxtrain

# Training runs as an unprivileged user, named by number so that Kubernetes' runAsNonRoot can
# check it; runs/ is where a volume goes. configs/ links to the packaged configs, as in the
# repository, so `fit configs/char_rnn.yaml` works as `fit char_rnn` does.
RUN groupadd --gid 1000 paxtrain \
    && useradd --create-home --uid 1000 --gid 1000 paxtrain \
    && mkdir -p /workspace/runs && chown -R paxtrain:paxtrain /workspace \
    && ln -s "$(python3 -c 'from paxtrain.config.packaged import packaged_configs_dir as d; print(d())')" /workspace/configs
WORKDIR /workspace
USER 1000:1000

ENTRYPOINT ["paxtrain"]
CMD ["env"]
