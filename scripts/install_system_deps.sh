#!/usr/bin/env bash
# Install the system programs that the deployment tests run for real: nginx (the gRPC load
# balancer of docker-compose.yml) and Prometheus with promtool.
#
# Idempotent: installs only what is missing and does nothing when everything is present.
# Runs apt-get directly as root, through sudo otherwise.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have nginx || missing+=(nginx)
{ have prometheus && have promtool; } || missing+=(prometheus)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_system_deps: nginx, prometheus and promtool are already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: no apt-get here; install ${missing[*]} with your package manager" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "install_system_deps: need root or sudo to install ${missing[*]}" >&2
    exit 1
fi

echo "install_system_deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"

for bin in nginx prometheus promtool; do
    have "$bin" || { echo "install_system_deps: $bin is still missing" >&2; exit 1; }
done
echo "install_system_deps: done"
