#!/usr/bin/env bash
# Installs the system tools the test suite drives (OCR, QR decoding, a headless
# browser, a Redis server that tests may stall without disturbing TEST_REDIS_URL's). On Debian as root it uses apt-get; elsewhere it says what to install.
# Tests whose tool is missing skip with that reason, or fail under REQUIRE_SERVICES=1.
set -euo pipefail

# tool on PATH -> Debian package that provides it
declare -A TOOLS=(
  [tesseract]=tesseract-ocr
  [zbarimg]=zbar-tools
  [chromium]=chromium
  [redis-server]=redis-server
)

missing=()
for tool in "${!TOOLS[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${TOOLS[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-test-tools: please install these packages: ${missing[*]}" >&2
  echo "install-test-tools: tests that need them will be skipped" >&2
fi
