#!/usr/bin/env bash
# Installs wrk, the load generator `make bench` drives (apt-get as root on Debian).
set -euo pipefail
command -v wrk >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends wrk >/dev/null
else
  echo "install-bench-tools: please install wrk" >&2
  exit 1
fi
