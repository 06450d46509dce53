#!/usr/bin/env bash
# Installs the system packages the test suite needs (Debian): chromium for the browser test, a Java
# runtime for Spark, Maven to fetch the Spark engine's jars (bronze_assets/lib/spark/jars.py) and
# node/npm for Azurite, the ADLS test server (scripts/install-azurite.sh).
# Called by `make test` and `.ci/run`. Without root/sudo or apt-get it installs nothing and says
# what is missing; the browser test then skips with the same instruction.
set -euo pipefail
PACKAGES=()
[ -x /usr/bin/chromium ] || PACKAGES+=(chromium)
command -v java >/dev/null || PACKAGES+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || PACKAGES+=(maven)
command -v npm >/dev/null || PACKAGES+=(nodejs npm)
[ ${#PACKAGES[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
fi
if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null; then
    echo "install-system-deps: cannot install ${PACKAGES[*]} (needs root and apt-get);" \
         "run: sudo apt-get install -y ${PACKAGES[*]}  — the browser test and the ADLS tests are" \
         "skipped and the Spark tests fail until then" >&2
    exit 0
fi
echo "install-system-deps: installing ${PACKAGES[*]} from Debian" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
