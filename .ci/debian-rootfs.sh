#!/usr/bin/env bash
# Builds (once) the Debian root filesystem that the real-workload tests use as
# a lower layer, and prints its path. The tree is cached between runs under
# $STRATA_TEST_CACHE (default /var/cache/strata-test); it is built in a
# temporary directory and renamed into place, so an interrupted build never
# leaves a half tree behind.
set -euo pipefail
cache=${STRATA_TEST_CACHE:-/var/cache/strata-test}
dest=$cache/bookworm-minbase
if [ -x "$dest/bin/sh" ]; then
  echo "$dest"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed" >&2; exit 1; }
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
debootstrap --variant=minbase bookworm "$tmp/root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 || {
  echo "debootstrap failed; see $cache/debootstrap.log" >&2
  tail -20 "$cache/debootstrap.log" >&2
  exit 1
}
rm -rf "$dest"
mv "$tmp/root" "$dest"
echo "$dest"
