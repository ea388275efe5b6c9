#!/usr/bin/env bash
# Build the run and build stack images, skipping each one whose inputs
# (base image id, Dockerfile, package list, setup.sh) have not changed since
# it was last built. Prints the two image names when done.
#
#   stack-images/build.sh
#
# Environment:
#   BASE_IMAGE     base of the run stack; default: the Debian 12 image that
#                  debootstrap-base.sh makes (no registry needed).
#                  e.g. BASE_IMAGE=docker.io/library/ubuntu:24.04
#   RUN_IMAGE      default localhost/slugstack-run:latest
#   BUILD_IMAGE    default localhost/slugstack-build:latest
#   CONTAINER_CLI  podman (default) or docker
#   PODMAN_FLAGS   global flags, e.g. "--storage-driver vfs --runtime runc"
#   BUILD_FLAGS    extra flags for `build` (e.g. "--ulimit nofile=16384:16384")
#   FORCE=1        rebuild even when the inputs are unchanged
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cli=${CONTAINER_CLI:-podman}
read -r -a cli_flags <<<"${PODMAN_FLAGS:-}"
read -r -a build_flags <<<"${BUILD_FLAGS:-}"
run_image=${RUN_IMAGE:-localhost/slugstack-run:latest}
build_image=${BUILD_IMAGE:-localhost/slugstack-build:latest}

log() { echo "-----> $*" >&2; }
c() { "$cli" "${cli_flags[@]}" "$@"; }

if [ "$(basename "$cli")" = podman ]; then
  # One commit per stage instead of one per instruction: with the vfs
  # storage driver every layer is a full copy of the filesystem. Caching is
  # done here, by input hash, instead of by layer.
  build_flags+=(--layers=false --pull=missing)
fi

base=${BASE_IMAGE:-}
if [ -z "$base" ]; then
  base=$("$here/debootstrap-base.sh")
fi

image_id() { c image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
label() { c image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }

# build_stack NAME IMAGE BASE: build stack-images/NAME/Dockerfile on BASE.
build_stack() {
  local name=$1 image=$2 from=$3 from_id inputs start
  from_id=$(image_id "$from")
  if [ -z "$from_id" ] && [ "$(basename "$cli")" = docker ]; then
    c pull "$from" >/dev/null
    from_id=$(image_id "$from")
  fi
  inputs=$(
    {
      echo "base $from_id"
      cat "$here/setup.sh" "$here/$name/Dockerfile" "$here/$name/packages.txt"
    } | sha256sum | cut -c1-64
  )
  if [ -z "${FORCE:-}" ] && [ "$(label "$image" io.slugstack.inputs)" = "$inputs" ]; then
    log "$image is up to date (inputs ${inputs:0:12})"
    return
  fi
  log "building $image from $from"
  start=$(date +%s)
  c build "${build_flags[@]}" \
    --build-arg "BASE_IMAGE=$from" \
    --label "io.slugstack.inputs=$inputs" \
    -f "$here/$name/Dockerfile" -t "$image" "$here" >&2
  log "$image built in $(($(date +%s) - start)) s"
}

build_stack run "$run_image" "$base"
build_stack build "$build_image" "$run_image"
echo "$run_image"
echo "$build_image"
