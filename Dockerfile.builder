# syntax=docker/dockerfile:1
# The builder image: build stack + slugbuilder + the bundled buildpacks.
# A git-push backend starts it once per build:
#
#   git archive HEAD | podman run -i --rm localhost/slugbuilder > slug.tgz
#   git archive HEAD | podman run -i --rm -v myapp-cache:/cache -v ./env:/env:ro \
#       localhost/slugbuilder > slug.tgz
#
# Build it from the repository root after `cargo build --release -p slugbuilder`
# (scripts/container-e2e does all of this; see stack-images/README.md):
#
#   podman build --format docker -f Dockerfile.builder -t localhost/slugbuilder .
#
# The binary comes from the build context, not from a Rust stage: containers
# here reach no registry for a Rust image and no rustup download. A glibc
# binary built on Debian 12 (glibc 2.36) runs on both stacks (Debian 12,
# Ubuntu 24.04 has 2.39); a static musl one runs anywhere:
#   --build-arg SLUGBUILDER_BIN=target/x86_64-unknown-linux-musl/release/slugbuilder
ARG STACK_IMAGE=localhost/slugstack-build:latest

# Only the binary, so that the final image takes exactly one file from the
# context and nothing else of target/ reaches any layer.
FROM scratch AS bin
ARG SLUGBUILDER_BIN=target/release/slugbuilder
COPY ${SLUGBUILDER_BIN} /slugbuilder

FROM ${STACK_IMAGE}
USER root
COPY --from=bin /slugbuilder /usr/local/bin/slugbuilder
COPY buildpacks/ /buildpacks/
# Fail the image build, not the first app build, when the binary does not
# run on this stack (wrong libc or architecture). /cache is where a cache
# volume goes: owned by the build user so that a new named volume inherits
# that. /env is the (empty by default) ENV_DIR mount point.
RUN slugbuilder --version \
 && install -d -o slug -g slug -m 0755 /cache \
 && install -d -m 0755 /env
# One container per build: the container's own network namespace (podman
# and docker give each container one) is the build's, so steps share it
# (--network host) rather than need slirp4netns and /dev/net/tun inside.
# The build log's sandbox line says so.
ENV CACHE_PATH=/cache \
    ENV_PATH=/env \
    BUILDPACK_PATH=/buildpacks \
    SLUGBUILDER_NETWORK=host
LABEL org.opencontainers.image.title="slugbuilder" \
      org.opencontainers.image.description="Build stack + slugbuilder + bundled buildpacks: source tar on stdin, slug on stdout"
USER slug
WORKDIR /tmp
ENTRYPOINT ["slugbuilder"]
