#!/usr/bin/env bash
# Proof that the CPU serving image builds and serves, without a Docker engine (buildah + podman + runc):
# build -> run with a model repository mounted -> wait for /readyz -> classify -> SIGTERM -> exit 0.
#
#   deploy/container-check.sh [MODEL_REPOSITORY]      (default: models/, e.g. after `make demo`)
#
# BASE_IMAGE (default localhost/debian-python:bookworm) must exist locally when no registry is
# reachable; deploy/base-image.sh makes it with debootstrap. PORT (default 18080) is used on loopback.
# CPUS (e.g. 1) runs the container under a CPU quota: the worker count must follow it.
set -euo pipefail

cd "$(dirname "$0")/.."
models=$(realpath "${1:-models}")
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-python:bookworm}
IMAGE=${IMAGE:-localhost/fastformers-serve:check}
PORT=${PORT:-18080}
NAME=ffs-container-check-$$
podman=(podman --cgroup-manager=cgroupfs --runtime "$(command -v runc)")

# Behind a TLS-intercepting proxy pip needs its CA inside the build too.
proxy_ca=()
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    proxy_ca=(--volume "$PIP_CERT:/run/proxy-ca.crt:ro" --build-arg PIP_CERT=/run/proxy-ca.crt)
fi

started=$(date +%s)
buildah bud --isolation chroot --network host --ulimit nofile=20000:20000 --quiet --format docker \
    "${proxy_ca[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" . > /dev/null
echo "built $IMAGE in $(( $(date +%s) - started )) s; size $("${podman[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# The image runs as uid 10001: give it a world-readable copy of the repository.
repo=$(mktemp -d)
trap 'rm -rf "$repo"; "${podman[@]}" rm -f "$NAME" > /dev/null 2>&1 || true' EXIT
cp -r "$models/." "$repo/" && chmod -R a+rX "$repo"

"${podman[@]}" run -d --name "$NAME" --network=host --ulimit nofile=20000:20000 \
    --ulimit nproc=1000:1000 --health-interval=disable -e FFS_PORT="$PORT" -e FFS_HOST=127.0.0.1 ${CPUS:+--cpus "$CPUS"} \
    -v "$repo:/models:ro" "$IMAGE" > /dev/null

for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$PORT/readyz" > /dev/null 2>&1; then break; fi
    sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/readyz" > /dev/null || { "${podman[@]}" logs "$NAME" | tail -20; exit 1; }
# A single-text task if the repository has one (the request below sends plain sentences).
task=$(curl -fsS "http://127.0.0.1:$PORT/v1/models" | python3 -c "import json, sys; models = json.load(sys.stdin)['models']; print(next((m for m in models if m['input_kind'] == 'single'), models[0])['task'])")
echo "ready after $(( $(date +%s) - started )) s; classifying with task $task"
# The image's HEALTHCHECK, run once by hand (no systemd here for podman's periodic timer).
"${podman[@]}" healthcheck run "$NAME" && echo "image HEALTHCHECK: healthy"
echo "workers: $(curl -fsS "http://127.0.0.1:$PORT/v1/pools" | python3 -c "import json, sys; print(sum(len(p['workers']) for p in json.load(sys.stdin)['pools']))") (CPU quota ${CPUS:-none})"
curl -fsS -X POST "http://127.0.0.1:$PORT/v1/classify/$task" -H 'content-type: application/json' \
    -d '{"inputs": ["a wonderful, moving film", "dull and tedious"]}'
echo

"${podman[@]}" stop --time 40 "$NAME" > /dev/null
code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")
echo "stopped with exit code $code after $(( $(date +%s) - started )) s in all"
test "$code" = 0
