#!/usr/bin/env bash
# Installs the Debian packages the test suite and benchmarks run for real, when missing:
# etcd (topology store and benchmark peer), strace (the fsync-ordering test), promtool
# (alert rule checks), and what the install compiles the C ring hash with (a C compiler and
# Python's headers). Runs apt-get as root, or through sudo; does nothing when all are there.
# Arguments name the commands to check (e.g. `etcd etcdctl` for make cluster TOPOLOGY=etcd;
# `python-headers` checks for the Python.h of $PYTHON); none: all of them.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
declare -A PACKAGE_OF=(
    [etcd]=etcd-server
    [etcdctl]=etcd-client
    [strace]=strace
    [promtool]=prometheus
    [cc]=gcc
    [python-headers]="python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3)-dev"
)

# Whether a command is there; `cc` is the compiler $PYTHON builds extensions with, and
# `python-headers` its Python.h.
present() {
    case "$1" in
        cc) command -v "$("$PYTHON" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])' 2>/dev/null || echo cc)" >/dev/null 2>&1 ;;
        python-headers) [ -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)/Python.h" ] ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

commands=("$@")
[ ${#commands[@]} -eq 0 ] && commands=("${!PACKAGE_OF[@]}")
missing=()
for command in "${commands[@]}"; do
    package="${PACKAGE_OF[$command]:?"unknown command $command (known: ${!PACKAGE_OF[*]})"}"
    present "$command" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for command in "${commands[@]}"; do
    present "$command" || {
        echo "still missing after installing ${PACKAGE_OF[$command]}: $command (for $PYTHON)" >&2
        exit 1
    }
done
