#!/usr/bin/env bash
# Build the CPU image (or the GPU or TPU one) from a Debian base made here, then run it:
# `paxtrain env`, a short `paxtrain fit` that checkpoints into a mounted runs/, and a second
# container that resumes from those checkpoints and must match an uninterrupted run. Needs root,
# podman and debootstrap (`apt-get install -y podman debootstrap`); without them it says so and
# exits 0.
#
#   docker/build_and_smoke.sh            # rebuilds the image, reuses the base image once made
#   docker/build_and_smoke.sh gpu        # the GPU (or tpu) image: with no GPU here, JAX falls
#                                        # back to the CPU, so this checks the image, not the GPU
#   PAXTRAIN_DOCKER_WORK=/scratch docker/build_and_smoke.sh
#
# The containers are started by chroot into the image's files (see run_image below), because
# `podman run` cannot start any container in this sandbox (crun's setrlimit is refused).
# Every command is explained in docker/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${PAXTRAIN_DOCKER_WORK:-/var/tmp/paxtrain-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/paxtrain-base:bookworm
ACCELERATOR=${1:-cpu}
IMAGE=localhost/paxtrain:$ACCELERATOR
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# Small enough for 2 cores: the point is that training, checkpoints and resume work in the image.
# The schedule spans 60 steps in every run, so a 30-step run continued to 60 must train exactly
# as a 60-step run does.
SMALL=(model.embed_dim=16 model.hidden_dim=32 data.seq_len=32 data.batch_size=8
    data.eval_batches=1 optimizer.learning_rate.warmup_steps=5 optimizer.horizon=60
    trainer.eval_every=15 trainer.log_every=10 trainer.checkpoint.every_steps=10)

case "$ACCELERATOR" in
    cpu | tpu | gpu) ;;
    *) echo "build_and_smoke: the accelerator must be cpu, tpu or gpu; got '$ACCELERATOR'" >&2; exit 2 ;;
esac
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "build_and_smoke: skipped: podman and debootstrap are not installed" \
        "(apt-get install -y podman debootstrap)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "build_and_smoke: needs root (debootstrap, chroot and bind mounts)" >&2
    exit 2
fi

# vfs: the only storage driver that works without overlay mounts; it copies every layer.
podman() { command podman --storage-driver vfs "$@"; }
phase() { echo "== $1 (${SECONDS}s)"; }
mkdir -p "$WORK"

# 1. The base: a minimal Debian 12 (Python 3.11, like python:3.11-slim-bookworm), imported as an
#    image. The host's CA bundle goes in so pip trusts what this host trusts (here PyPI is reached
#    through a TLS-intercepting proxy); PIP_CERT points pip at it.
if ! podman image exists "$BASE"; then
    phase "debootstrap bookworm -> $BASE"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$WORK/rootfs" "$MIRROR"
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    cp "$CA_BUNDLE" "$WORK/rootfs$CA_BUNDLE"
    tar -C "$WORK/rootfs" -c . | podman import --change "ENV PIP_CERT=$CA_BUNDLE" - "$BASE"
    rm -rf "$WORK/rootfs"
fi

# 2. The image. --layers=false: with vfs each cached layer is a full copy (~1 GB each, 15 GB
#    in all); without them a rebuild takes a few minutes and the storage holds two copies.
phase "build $IMAGE"
old_image=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman build --isolation chroot --layers=false --build-arg BASE_IMAGE="$BASE" \
    --build-arg ACCELERATOR="$ACCELERATOR" -t "$IMAGE" .
new_image=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then
    podman rmi "$old_image" >/dev/null
fi
phase "built"

# 3. run_image RUNS ARGS...: what `docker run --rm --read-only --tmpfs /tmp --tmpfs HOME
#    -v RUNS:/workspace/runs IMAGE ARGS...` does, by hand: the image's files mounted read-only
#    (a fresh copy per container takes vfs ~2 minutes), a private /proc, /sys (read-only), /dev
#    and /tmp, the runs/ volume, and the image's own User, Env, WorkingDir and Entrypoint read
#    from its config.
config() { podman image inspect --format "$1" "$IMAGE"; }
root="$WORK/root"
mounted=()
bind() { mount "$@" && mounted=("${@: -1}" "${mounted[@]}"); } # unmounted in reverse order
release() {
    local target
    for target in "${mounted[@]}"; do umount "$target"; done
    if [ ${#mounted[@]} -gt 0 ]; then podman image umount "$IMAGE" >/dev/null; fi
    mounted=()
}
trap release EXIT
run_image() {
    local runs=$1
    shift
    local user home workdir env entrypoint status=0
    mkdir -p "$root"
    bind --bind "$(podman image mount "$IMAGE")" "$root"
    mount -o remount,bind,ro "$root"
    user=$(config '{{.Config.User}}')
    home=$(awk -F: -v uid="${user%%:*}" '$3 == uid {print $6}' "$root/etc/passwd")
    # The device files a container gets, bound one by one onto a tmpfs, and /dev/shm (Python's
    # multiprocessing locks, which tensorboardX uses, live there), as Docker does.
    bind -t tmpfs -o mode=755 tmpfs "$root/dev"
    for device in null zero random urandom; do
        touch "$root/dev/$device"
        bind --bind "/dev/$device" "$root/dev/$device"
    done
    mkdir "$root/dev/shm"
    bind -t tmpfs -o mode=1777,size=64m tmpfs "$root/dev/shm"
    bind -t proc proc "$root/proc"
    bind -t sysfs -o ro sysfs "$root/sys" # libtpu's tcmalloc counts the CPUs there
    bind -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    bind -t tmpfs -o "uid=${user%%:*},mode=700" tmpfs "$root$home"
    bind --bind "$runs" "$root/workspace/runs"

    workdir=$(config '{{.Config.WorkingDir}}')
    mapfile -t env < <(config '{{range .Config.Env}}{{.}}{{"\n"}}{{end}}' | grep .)
    mapfile -t entrypoint < <(config '{{range .Config.Entrypoint}}{{.}}{{"\n"}}{{end}}' | grep .)
    chroot --userspec="$user" "$root" /usr/bin/env -i "${env[@]}" HOME="$home" \
        /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "${entrypoint[@]}" "$@" || status=$?
    release
    return "$status"
}

# 4. The smoke run, as the image's non-root user, into a runs/ on this host.
runs="$WORK/runs"
rm -rf "$runs"
mkdir -p "$runs"
chown "$(config '{{.Config.User}}')" "$runs"

phase "container 1: paxtrain env"
run_image "$runs" env

phase "container 2: fit 30 steps"
run_image "$runs" fit configs/char_rnn.yaml run_dir=runs/smoke trainer.max_steps=30 "${SMALL[@]}"
ls "$runs/smoke/checkpoints/30" >/dev/null

phase "container 3: the same command to 60 steps resumes from step 30"
run_image "$runs" fit configs/char_rnn.yaml run_dir=runs/smoke trainer.max_steps=60 "${SMALL[@]}" |
    tee "$WORK/resume.log"
grep -q "resumed from runs/smoke/checkpoints at step 30" "$WORK/resume.log"

phase "container 4: 60 steps without a break, to compare"
run_image "$runs" fit configs/char_rnn.yaml run_dir=runs/straight trainer.max_steps=60 "${SMALL[@]}"
resumed=$(grep '"eval/loss"' "$runs/smoke/metrics.jsonl" | tail -n 1)
straight=$(grep '"eval/loss"' "$runs/straight/metrics.jsonl" | tail -n 1)
if [ "$resumed" != "$straight" ]; then
    echo "build_and_smoke: the resumed run differs from the uninterrupted one:" >&2
    echo "  resumed:  $resumed" >&2
    echo "  straight: $straight" >&2
    exit 1
fi
echo "resumed == uninterrupted at step 60: $resumed"
echo "checkpoints on the host, owned by uid $(stat -c %u "$runs/smoke/checkpoints/60"):"
ls "$runs/smoke/checkpoints"
phase "build_and_smoke: done"
