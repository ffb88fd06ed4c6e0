#!/bin/sh
# The operator install: MCR in its own virtual environment under PREFIX, its commands linked into BINDIR,
# the systemd unit into UNITDIR, the sample config into CONFDIR (when none is there), and the control
# group. Everything it adds is listed in PREFIX/install-manifest, which `uninstall` undoes, and nothing else.
#   packaging/install.sh install|uninstall   (settings from the environment; see the Makefile's `install`)
set -eu
action=${1:?usage: install.sh install|uninstall}
PYTHON=${PYTHON:-python3}
PREFIX=${PREFIX:-/opt/mcr}
BINDIR=${BINDIR:-/usr/local/bin}
UNITDIR=${UNITDIR:-/etc/systemd/system}
CONFDIR=${CONFDIR:-/etc/mcr}
MCR_GROUP=${MCR_GROUP-mcr}  # empty: no group is created
COMMANDS="multicast_relay mcrd control_client mcrctl traffic_generator mcrgen traffic_sink mcrsink"
manifest=$PREFIX/install-manifest
here=$(cd "$(dirname "$0")" && pwd)
say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

systemd_reload() {
    if [ "$UNITDIR" = /etc/systemd/system ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl daemon-reload || true
    fi
}

install_mcr() {
    [ -e "$manifest" ] && die "MCR is already installed in $PREFIX (make uninstall PREFIX=$PREFIX first)"
    for c in $COMMANDS; do
        if [ -e "$BINDIR/$c" ] || [ -L "$BINDIR/$c" ]; then
            die "$BINDIR/$c exists and is not ours: remove it or choose another BINDIR"
        fi
    done
    [ -e "$UNITDIR/mcrd.service" ] && die "$UNITDIR/mcrd.service exists and is not ours: remove it or choose another UNITDIR"
    [ -e "$PREFIX" ] && die "$PREFIX exists: choose an empty PREFIX"
    # built from a copy of the sources, so that the build leaves nothing in the checkout
    tree=$(mktemp -d)
    cp -r "$here/../pyproject.toml" "$here/../README.md" "$here/../src" "$tree/"
    if ! "$here/venv.sh" "$PYTHON" "$PREFIX" "$tree"; then
        rm -rf "$PREFIX" "$tree"
        exit 1
    fi
    rm -rf "$tree"
    : >"$manifest"
    echo "venv $PREFIX" >>"$manifest"
    mkdir -p "$BINDIR"
    for c in $COMMANDS; do
        ln -s "$PREFIX/bin/$c" "$BINDIR/$c"
        echo "link $BINDIR/$c" >>"$manifest"
    done
    mkdir -p "$UNITDIR"
    sed "s|^ExecStart=/usr/local/bin/multicast_relay|ExecStart=$PREFIX/bin/multicast_relay|" \
        "$here/systemd/mcrd.service" >"$UNITDIR/mcrd.service"
    chmod 0644 "$UNITDIR/mcrd.service"
    echo "file $UNITDIR/mcrd.service" >>"$manifest"
    if [ ! -e "$CONFDIR/mcr.toml" ]; then
        mkdir -p "$CONFDIR"
        install -m 0640 "$here/mcr.toml" "$CONFDIR/mcr.toml"
        echo "config $CONFDIR/mcr.toml" >>"$manifest"
    fi
    if [ -n "$MCR_GROUP" ] && ! getent group "$MCR_GROUP" >/dev/null; then
        groupadd --system "$MCR_GROUP" || die "cannot create the control group '$MCR_GROUP' (run as root, or MCR_GROUP=)"
        echo "group $MCR_GROUP" >>"$manifest"
    fi
    systemd_reload
    say "MCR installed in $PREFIX; commands in $BINDIR; unit $UNITDIR/mcrd.service${MCR_GROUP:+; control group $MCR_GROUP}"
    say "start it with: systemctl enable --now mcrd   (configuration: $CONFDIR/mcr.toml)"
}

uninstall_mcr() {
    [ -e "$manifest" ] || die "no MCR install in $PREFIX ($manifest is missing)"
    while read -r kind path; do
        case $kind in
            link) [ -L "$path" ] && [ "$(readlink "$path")" = "$PREFIX/bin/$(basename "$path")" ] && rm -f "$path" ;;
            file) rm -f "$path" ;;
            config)
                if cmp -s "$path" "$here/mcr.toml"; then rm -f "$path"; rmdir "$(dirname "$path")" 2>/dev/null || true
                else say "kept $path: it was changed since it was installed"; fi ;;
            group) groupdel "$path" 2>/dev/null || say "kept group $path: it could not be removed" ;;
            venv) ;;  # last, below
        esac
    done <"$manifest"
    rm -rf "$PREFIX"
    systemd_reload
    say "MCR removed from $PREFIX"
}

case $action in
    install) install_mcr ;;
    uninstall) uninstall_mcr ;;
    *) die "usage: install.sh install|uninstall" ;;
esac
