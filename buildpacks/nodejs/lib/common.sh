# shellcheck shell=bash
# Shared shell helpers for this buildpack (sourced by bin/*).
# Each bundled buildpack carries its own copy so that it can be fetched alone.

# Heroku-style output: steps start with "-----> ", everything else is
# indented by 7 spaces.
header() { echo "-----> $*"; }
info() { echo "       $*"; }
warn() {
  echo >&2 "-----> Warning: $1"
  shift
  local line
  for line in "$@"; do echo >&2 "       $line"; done
}
# error TITLE [DETAIL...]: print a clear failure and exit 1.
error() {
  echo >&2 "-----> Error: $1"
  shift
  local line
  for line in "$@"; do echo >&2 "       $line"; done
  exit 1
}

# Indent a command's output (stdout) line by line without buffering.
indent() { sed -u 's/^/       /'; }

# export_env_dir ENV_DIR [NAME...]: export the app's config vars (one file
# per var in ENV_DIR) into the compile environment, except those that would
# break the build machinery and the NAMEs the calling buildpack adds (python:
# PYTHONHOME, PYTHONPATH).
export_env_dir() {
  local env_dir=$1 path name
  shift
  [ -d "$env_dir" ] || return 0
  for path in "$env_dir"/*; do
    [ -f "$path" ] || continue
    name=$(basename "$path")
    case "$name" in
      PATH | GIT_DIR | CPATH | CPPATH | LD_PRELOAD | LIBRARY_PATH | LD_LIBRARY_PATH) continue ;;
    esac
    [[ " $* " == *" $name "* ]] && continue
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    export "$name=$(cat "$path")"
  done
}

# True when every directory above PATH (and PATH itself) can be traversed by
# any user: the interpreter or tool must also work for the unprivileged user
# the app runs as (e.g. interpreters under a mode-700 /root are excluded).
world_reachable() {
  local p
  p=$(readlink -f -- "$1") || return 1
  [ -x "$p" ] || return 1
  [ "$(( 0$(stat -c %a "$p") & 01 ))" -ne 0 ] || return 1
  p=$(dirname -- "$p")
  while :; do
    [ "$(( 0$(stat -c %a "$p") & 01 ))" -ne 0 ] || return 1
    [ "$p" = / ] && return 0
    p=$(dirname -- "$p")
  done
}

# Human-readable size of a directory (for cache summaries).
dir_size() { du -sh -- "$1" 2>/dev/null | cut -f1; }

# The stack's python3 (3.8+) that the nodejs helpers run with: the system
# one first (an interpreter under a private home, such as pyenv's in /root,
# is not usable by the unprivileged build user).
find_python() {
  local c
  for c in /usr/bin/python3 /usr/local/bin/python3 "$(command -v python3 || true)"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if "$c" -I -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# version_at_least VERSION MINIMUM: whether a dotted VERSION (1.2.3, from
# a tool's --version) is MINIMUM or newer; an empty VERSION is not.
version_at_least() {
  [ -n "$1" ] || return 1
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

# --- Dependency layers -----------------------------------------------------------
# What the app installed (python: the relocated virtualenv; nodejs:
# node_modules) is kept in CACHE_DIR with a key: a digest of everything that
# decides it. A build whose key matches copies it instead of running the
# installer, once its content matches the digest recorded when it was made.

# layer_key: the sha256 of what is on stdin (the caller's inputs: lock files,
# runtime version, relevant variables) plus this buildpack's own files, the
# stack (OS release, architecture, C library) and every config var in ENV_DIR
# (name and value: any of them may change what an install script builds).
layer_key() {
  {
    cat
    echo "buildpack"
    (cd "$BP_DIR" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    echo "stack"
    cat /etc/os-release 2>/dev/null || true
    uname -m
    getconf GNU_LIBC_VERSION 2>/dev/null || true
    echo "config vars"
    if [ -n "${ENV_DIR:-}" ] && [ -d "$ENV_DIR" ]; then
      (cd "$ENV_DIR" && find . -maxdepth 1 -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
    fi
  } | sha256sum | cut -c1-64
}

# file_digests FILE...: "NAME SHA256" for each FILE that exists, "NAME -" else.
file_digests() {
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then
      echo "$f $(sha256sum <"$f" | cut -c1-64)"
    else
      echo "$f -"
    fi
  done
}
