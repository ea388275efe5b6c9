#!/usr/bin/env bash
# Runs inside a stack image build (see run/Dockerfile, build/Dockerfile):
# installs a package list on a Debian or Ubuntu base, makes the en_US.UTF-8
# locale and the unprivileged `slug` user, then removes everything apt and
# dpkg leave behind, so that the layer holds only the installed files.
#
#   setup.sh PACKAGES_FILE
#
# PACKAGES_FILE: one package per line, `#` comments; `a|b` installs the first
# alternative that the distribution knows (Ubuntu 24.04's t64 renames).
# SLUG_UID / SLUG_GID: ids of the `slug` user (default 1000).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
list=$1
uid=${SLUG_UID:-1000}
gid=${SLUG_GID:-1000}

# Root builds in some sandboxes cannot drop to _apt; downloads as root are
# fine here, the packages are verified by apt's signatures either way.
echo 'APT::Sandbox::User "root";' >/etc/apt/apt.conf.d/90slugstack-sandbox

apt-get update -qq

packages=()
while read -r line; do
  line=${line%%#*}
  line=${line//[[:space:]]/}
  [ -n "$line" ] || continue
  chosen=
  IFS='|' read -r -a alternatives <<<"$line"
  for name in "${alternatives[@]}"; do
    if [ -n "$(apt-cache show --no-all-versions "$name" 2>/dev/null | head -n1)" ]; then
      chosen=$name
      break
    fi
  done
  if [ -z "$chosen" ]; then
    echo "setup.sh: none of '$line' is available on this base" >&2
    exit 1
  fi
  packages+=("$chosen")
done <"$list"

echo "-----> Installing ${#packages[@]} packages from $list"
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

if [ -f /usr/sbin/locale-gen ] && [ ! -e /usr/lib/locale/locale-archive ]; then
  # Debian's locale-gen reads /etc/locale.gen; Ubuntu's takes the argument.
  if [ -f /etc/locale.gen ] && grep -q '^# *en_US.UTF-8 UTF-8' /etc/locale.gen; then
    sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
  elif [ -f /etc/locale.gen ] && ! grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen; then
    echo 'en_US.UTF-8 UTF-8' >>/etc/locale.gen
  fi
  locale-gen en_US.UTF-8 >/dev/null
fi

if ! getent passwd slug >/dev/null; then
  # ubuntu:24.04 ships a user `ubuntu` with uid 1000; Heroku's stack images
  # drop it too, so that the app user has the conventional first uid.
  other=$(getent passwd "$uid" | cut -d: -f1 || true)
  if [ -n "$other" ]; then userdel --remove "$other" 2>/dev/null || userdel "$other"; fi
  other=$(getent group "$gid" | cut -d: -f1 || true)
  if [ -n "$other" ]; then groupdel "$other"; fi
  groupadd --gid "$gid" slug
  useradd --uid "$uid" --gid slug --home-dir /app --no-create-home --shell /bin/bash slug
fi
install -d -o slug -g slug -m 0755 /app

# What the image holds, for people and tools that compare stacks (Heroku
# publishes the same list for its stacks).
mkdir -p /usr/share/slugstack
dpkg-query -W -f '${Package}\t${Version}\n' | sort >"/usr/share/slugstack/installed-packages-$(basename "$(dirname "$list")").txt"

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old \
  /var/lib/dpkg/*-old /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log \
  /tmp/* /root/.cache /root/.npm
# Documentation is not needed at run time; licences stay.
find /usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find /usr/share/doc -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf /usr/share/man/* /usr/share/info/*
