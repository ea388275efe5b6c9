#!/usr/bin/env bash
# Make a Debian root filesystem with debootstrap and import it as a local
# container image, so that the stack images can be built on a machine that
# reaches Debian's mirror but no container registry.
#
#   stack-images/debootstrap-base.sh [IMAGE]     (default localhost/debian-bookworm-base:latest)
#
# The rootfs tarball is cached outside the repository (SLUGSTACK_CACHE, default
# /var/cache/slugstack as root, else ${XDG_CACHE_HOME:-~/.cache}/slugstack) and
# reused while it is younger than SLUGSTACK_MAX_AGE_DAYS (default 30), so only
# the first run on a machine pays for debootstrap. The image is re-imported
# only when it is missing or older than the tarball.
#
# Environment:
#   SUITE            Debian suite (default bookworm)
#   MIRROR           Debian mirror (default http://deb.debian.org/debian)
#   SECURITY_MIRROR  security mirror (default http://deb.debian.org/debian-security)
#   CONTAINER_CLI    podman (default) or docker
#   PODMAN_FLAGS     global flags for podman (e.g. "--storage-driver vfs")
#   REFRESH=1        rebuild the tarball even when the cached one is fresh
set -euo pipefail

image=${1:-localhost/debian-bookworm-base:latest}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
security_mirror=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
cli=${CONTAINER_CLI:-podman}
read -r -a cli_flags <<<"${PODMAN_FLAGS:-}"
if [ "$(id -u)" = 0 ]; then
  cache=${SLUGSTACK_CACHE:-/var/cache/slugstack}
else
  cache=${SLUGSTACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slugstack}
fi
max_age_days=${SLUGSTACK_MAX_AGE_DAYS:-30}
tarball=$cache/debian-$suite-minbase-$arch.tar.gz

log() { echo "-----> $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "debootstrap-base.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || {
  echo "debootstrap-base.sh: debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
}
mkdir -p "$cache"

# One builder at a time per cache: a second CI job waits instead of racing.
exec 9>"$cache/.lock"
flock 9

fresh=
if [ -s "$tarball" ] && [ -z "${REFRESH:-}" ] &&
  [ -n "$(find "$tarball" -mtime "-$max_age_days" 2>/dev/null)" ]; then
  fresh=1
fi

if [ -z "$fresh" ]; then
  log "debootstrap --variant=minbase $suite ($arch) from $mirror"
  start=$(date +%s)
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  chmod 0755 "$rootfs" # becomes the image's /: mktemp's 0700 would lock out non-root users
  trap 'rm -rf "$rootfs" "$tarball.tmp"' EXIT
  # minbase: essential + apt only. The stack Dockerfiles add everything else,
  # so this image is the same kind of thing as debian:12 from a registry.
  debootstrap --variant=minbase --arch="$arch" "$suite" "$rootfs" "$mirror" \
    >"$cache/debootstrap.log" 2>&1 || {
    tail -n 30 "$cache/debootstrap.log" >&2
    echo "debootstrap-base.sh: debootstrap failed (full log: $cache/debootstrap.log)" >&2
    exit 1
  }

  # What the official debian image does to a fresh debootstrap: apt sources
  # with updates and security, no caches or logs, dpkg and apt tuned for
  # containers (no docs, no recommends, no fsync).
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'force-unsafe-io' >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  # The container engine provides these at run time.
  rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hosts"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* \
    "$rootfs"/usr/share/doc/*/changelog* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  # Mounted by the engine; keep the mount points but no device nodes.
  rm -rf "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/*

  log "packing $tarball"
  tar --numeric-owner --xattrs -C "$rootfs" -czf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  trap - EXIT
  log "debootstrap done in $(($(date +%s) - start)) s ($(du -h "$tarball" | cut -f1))"
else
  log "using cached $tarball ($(du -h "$tarball" | cut -f1))"
fi

# Import when the image is missing or older than the tarball.
created=$("$cli" "${cli_flags[@]}" image inspect --format '{{.Created.Unix}}' "$image" 2>/dev/null || true)
if [ -n "$created" ] && [ "$created" -ge "$(stat -c %Y "$tarball")" ]; then
  log "$image is up to date"
else
  log "importing $tarball as $image"
  quiet=()
  [ "$(basename "$cli")" != podman ] || quiet=(--quiet)
  "$cli" "${cli_flags[@]}" import "${quiet[@]}" \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --message "debootstrap --variant=minbase $suite $mirror" \
    "$tarball" "$image" >/dev/null
fi
echo "$image"
