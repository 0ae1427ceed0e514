#!/usr/bin/env bash
# Installs the system tools the test suite drives (OCR, QR decoding, a headless
# browser, a Redis server that tests may stall without disturbing TEST_REDIS_URL's, and
# the npm tools that generate and type-check a TypeScript client from the OpenAPI
# document). On Debian as root it uses apt-get and npm; elsewhere it says what to install.
# Tests whose tool is missing skip with that reason, or fail under REQUIRE_SERVICES=1.
set -euo pipefail

# tool on PATH -> Debian package that provides it
declare -A TOOLS=(
  [tesseract]=tesseract-ocr
  [zbarimg]=zbar-tools
  [chromium]=chromium
  [redis-server]=redis-server
  [npm]=npm
)

# npm tool on PATH -> pinned package that provides it (the client generation test)
declare -A NPM_TOOLS=(
  [openapi-typescript]=openapi-typescript@7.13.0
  [tsc]=typescript@5.9.3
)

missing=()
for tool in "${!TOOLS[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${TOOLS[$tool]}")
done

install_npm_tools() {
  local wanted=()
  for tool in "${!NPM_TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || wanted+=("${NPM_TOOLS[$tool]}")
  done
  [ ${#wanted[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v npm >/dev/null 2>&1; then
    echo "install-test-tools: installing ${wanted[*]}"
    npm install --global --no-fund --no-audit --loglevel=error "${wanted[@]}"
  else
    echo "install-test-tools: please run: npm install --global ${wanted[*]}" >&2
  fi
}

if [ ${#missing[@]} -eq 0 ]; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-test-tools: please install these packages: ${missing[*]}" >&2
  echo "install-test-tools: tests that need them will be skipped" >&2
fi
install_npm_tools
