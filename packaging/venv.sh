#!/bin/sh
# Create (or refresh) a virtual environment and pip-install into it what the remaining arguments say.
#   packaging/venv.sh PYTHON VENV PIP-INSTALL-ARGS...     (make: packaging/venv.sh python3 .venv -e '.[test]')
# Never installs into PYTHON itself (PEP 668: a distribution's Python refuses that). Where PYTHON cannot
# make a virtual environment (Debian/Ubuntu without python3-venv) and we are root with apt, python3-venv
# is installed; otherwise, and when the package index cannot be reached, one line says what to do.
set -u
usage="usage: venv.sh PYTHON VENV PIP-INSTALL-ARGS..."
python=${1:?$usage}
venv=${2:?$usage}
shift 2
[ $# -gt 0 ] || { printf '%s\n' "$usage" >&2; exit 2; }
say() { printf '%s\n' "$*" >&2; }

if ! command -v "$python" >/dev/null 2>&1; then
    say "error: no Python at '$python': install python3 (3.11 or newer) or run make PYTHON=/path/to/python3"
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "error: MCR needs Python 3.11 or newer; '$python' is $("$python" -V 2>&1): run make PYTHON=/path/to/python3.11"
    exit 1
fi

make_venv() { "$python" -m venv "$venv" >/dev/null 2>&1; }

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! make_venv; then
        rm -rf "$venv"
        version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "installing python3-venv (python$version-venv): '$python -m venv' needs it"
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python$version-venv"; } \
                >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1
        fi
        if ! make_venv; then
            rm -rf "$venv"
            say "error: '$python -m venv' cannot create $venv: install python3-venv (apt-get install python3-venv python$version-venv) and run make again"
            exit 1
        fi
    fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    reason=$(grep -E '^(ERROR|error)' "$log" | tail -n 1)
    if grep -qiE 'connection|network is unreachable|name resolution|timed out|no matching distribution|proxy' "$log"; then
        say "error: cannot install MCR's Python dependencies into $venv: the package index is unreachable (${reason:-see pip's output}); connect to PyPI or a mirror (PIP_INDEX_URL) and run make again"
    else
        say "error: installing MCR into $venv failed: ${reason:-$(tail -n 1 "$log")}"
    fi
    exit 1
fi
