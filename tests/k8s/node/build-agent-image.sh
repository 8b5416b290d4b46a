#!/usr/bin/env bash
# build-agent-image.sh - build the podsight agent image offline (no registry,
# no container daemon) as a two-layer OCI archive for the test node's containerd.
#
#   build-agent-image.sh [--base-only] [--rebuild-base]
#
# Layer 1, the base (cached): a Debian 12 minbase root filesystem from
# debootstrap (the same mirror as the host's apt sources) with Python,
# libbpf1, libpcap and iproute2, plus a venv in /opt/podsight holding
# podsight's runtime dependencies from PyPI. It is keyed by the recipe
# version, the Debian package list and pyproject.toml's dependency list, so
# only a change there rebuilds it (about 2 min).
# Layer 2, per code change (about 5 s): the podsight wheel of this checkout,
# unpacked into that venv, with its entry points.
#
#   PODSIGHT_K8S_CACHE       cache dir (default: $HOME/.cache/podsight-k8s);
#                            this script uses $CACHE/agent-image
#   PODSIGHT_DEBIAN_MIRROR   Debian mirror (default: the host's apt sources,
#                            else http://deb.debian.org/debian)
#
# Output (stdout, last two lines): AGENT_IMAGE=localhost/podsight/agent:TAG
# and AGENT_IMAGE_TAR=PATH. The tag is the wheel layer's digest: never latest.
# Needs root (debootstrap, chroot) only when the base is (re)built.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
CACHE=${PODSIGHT_K8S_CACHE:-${HOME:-/root}/.cache/podsight-k8s}
OUT=$CACHE/agent-image
SUITE=bookworm
PY=${PYTHON:-python3}
BASE_ONLY=0; REBUILD_BASE=0
for a in "$@"; do
    case "$a" in
        --base-only) BASE_ONLY=1 ;;
        --rebuild-base) REBUILD_BASE=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "build-agent-image: unknown argument: $a" >&2; exit 2 ;;
    esac
done
T0=$SECONDS
log() { printf '[agent-image %4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { printf '[agent-image] ERROR: %s\n' "$*" >&2; exit 1; }

# Keep this list in step with deploy/Containerfile (the image for registries).
DEBS=(python3 python3-venv libbpf1 libpcap0.8 iproute2 ca-certificates)
RECIPE="podsight agent base 1 ($SUITE minbase + venv /opt/podsight)"
# pyproject's runtime dependencies, one per line (tomllib: Python 3.11's standard library)
DEPS=$(cd "$ROOT" && "$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]))')
KEY=$(printf '%s\n' "$RECIPE" "${DEBS[@]}" "$DEPS" | sha256sum | cut -c1-16)
BASE=$OUT/base-$KEY
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

mirror() {
    [[ -n ${PODSIGHT_DEBIAN_MIRROR:-} ]] && { echo "$PODSIGHT_DEBIAN_MIRROR"; return; }
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ' || true)
    echo "${m:-http://deb.debian.org/debian}"
}

# Stage 1 (cached on its own, so that a failure later does not repeat it): debootstrap.
debootstrap_rootfs() {
    local dkey dir tmp m
    dkey=$(printf '%s\n' "$SUITE" "${DEBS[@]}" | sha256sum | cut -c1-16)
    dir=$OUT/debootstrap-$dkey
    if [[ -f $dir/.done ]]; then echo "$dir"; return; fi
    [[ $(id -u) == 0 ]] || die "building the base needs root (debootstrap, chroot)"
    command -v debootstrap >/dev/null || die "no debootstrap (apt-get install debootstrap; make setup-test does)"
    m=$(mirror)
    tmp=$(mktemp -d "$OUT/.debootstrap-XXXXXX")
    log "debootstrap --variant=minbase $SUITE from $m (with ${DEBS[*]})"
    debootstrap --variant=minbase --include="$(IFS=,; echo "${DEBS[*]}")" "$SUITE" "$tmp/rootfs" "$m" \
        >"$tmp/debootstrap.log" 2>&1 || { tail -n 20 "$tmp/debootstrap.log" >&2; rm -rf "$tmp"; die "debootstrap failed"; }
    rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/*
    touch "$tmp/rootfs/.done"
    find "$OUT" -maxdepth 1 -name 'debootstrap-*' -exec rm -rf {} +
    mv "$tmp/rootfs" "$dir"; rm -rf "$tmp"
    echo "$dir"
}

# Stage 2: the dependencies. The wheels are fetched by the host's pip (its index, proxy
# and CA settings apply; the chroot has none of them), for the image's Python, and
# installed in the chroot with no network.
build_base() {
    local deb tmp rootfs
    deb=$(debootstrap_rootfs)
    tmp=$(mktemp -d "$OUT/.base-XXXXXX")
    rootfs=$tmp/rootfs
    # shellcheck disable=SC2064
    trap "umount -l '$rootfs/proc' 2>/dev/null || true; rm -rf '$tmp'" EXIT
    cp -a "$deb" "$rootfs"; rm -f "$rootfs/.done"
    local pyv
    pyv=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    mapfile -t deps <<<"$DEPS"
    log "wheels for Python $pyv: $(echo "$DEPS" | paste -sd' ')"
    "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
        --python-version "$pyv" --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform linux_x86_64 --implementation cp \
        -d "$tmp/wheels" "${deps[@]}" >"$tmp/pip-download.log" 2>&1 \
        || { tail -n 20 "$tmp/pip-download.log" >&2; die "pip download of the dependencies failed"; }
    mkdir -p "$rootfs/tmp/wheels"; cp "$tmp"/wheels/* "$rootfs/tmp/wheels/"
    mount -t proc proc "$rootfs/proc"
    chroot "$rootfs" python3 -m venv /opt/podsight
    chroot "$rootfs" env -i PATH=/usr/bin:/bin HOME=/root /opt/podsight/bin/pip install -q \
        --no-index --find-links /tmp/wheels --no-cache-dir --disable-pip-version-check \
        "${deps[@]}" >"$tmp/pip.log" 2>&1 \
        || { tail -n 20 "$tmp/pip.log" >&2; die "pip install of the dependencies failed"; }
    umount "$rootfs/proc"
    rm -rf "$rootfs/tmp/wheels" "$rootfs/root/.cache"
    find "$rootfs/opt/podsight" -name __pycache__ -prune -exec rm -rf {} +
    log "base layer tar ($(du -sh "$rootfs" | cut -f1))"
    mkdir -p "$tmp/out"
    tar --sort=name --numeric-owner --mtime=@0 -C "$rootfs" -cf "$tmp/out/layer.tar" .
    sha256sum "$tmp/out/layer.tar" | cut -d' ' -f1 >"$tmp/out/layer.sha256"
    chroot "$rootfs" python3 --version >"$tmp/out/python-version"
    printf '%s\n' "$RECIPE" "${DEBS[@]}" "$DEPS" >"$tmp/out/KEY"
    rm -rf "$BASE"; mv "$tmp/out" "$BASE"
    rm -rf "$tmp"; trap - EXIT
    # older bases (other dependency sets) are dead weight
    find "$OUT" -maxdepth 1 -name 'base-*' ! -name "base-$KEY" -exec rm -rf {} +
}

(( REBUILD_BASE )) && rm -rf "$BASE"
if [[ -f $BASE/layer.sha256 ]]; then
    log "base $KEY cached ($(du -h "$BASE/layer.tar" | cut -f1))"
else
    build_base
    log "base $KEY built"
fi
(( BASE_ONLY )) && { echo "AGENT_BASE=$BASE"; exit 0; }

# ------------------------------------------------------------ layer 2: the wheel
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
log "pip wheel $ROOT"
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$W/wheel" "$ROOT" >"$W/pip.log" 2>&1 \
    || { tail -n 20 "$W/pip.log" >&2; die "pip wheel failed"; }
whl=$(ls "$W"/wheel/podsight-*.whl)
pyver=$(sed -E 's/^Python ([0-9]+\.[0-9]+).*/\1/' "$BASE/python-version")
L=$W/layer
SP=$L/opt/podsight/lib/python$pyver/site-packages
mkdir -p "$SP" "$L/opt/podsight/bin"
"$PY" -m zipfile -e "$whl" "$SP"
# the wheel's console scripts, written as pip would write them for the image's venv
"$PY" - "$SP" "$L/opt/podsight/bin" <<'EOF'
import configparser, pathlib, sys
sp, bindir = map(pathlib.Path, sys.argv[1:])
ep = configparser.ConfigParser()
ep.read(next(sp.glob("podsight-*.dist-info")) / "entry_points.txt")
for name, target in ep["console_scripts"].items():
    mod, func = target.split(":")
    f = bindir / name
    f.write_text(f"#!/opt/podsight/bin/python3\nimport sys\nfrom {mod} import {func}\n"
                 f"sys.exit({func}())\n")
    f.chmod(0o755)
EOF
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$L" -cf "$W/wheel-layer.tar" .
wd=$(sha256sum "$W/wheel-layer.tar" | cut -d' ' -f1)
TAG=dev-${wd:0:12}
REF=localhost/podsight/agent:$TAG
TAR=$OUT/images/agent-$TAG.tar
mkdir -p "$OUT/images"
if [[ ! -f $TAR ]]; then
    "$HERE/mkimage-layers.sh" "$TAR" "$REF" '["/opt/podsight/bin/podsight"]' '["agent"]' \
        "$BASE/layer.tar=$(cat "$BASE/layer.sha256")" "$W/wheel-layer.tar=$wd" >&2
fi
touch "$TAR"
# keep the newest archive only: each holds a copy of the base layer (~390 MB)
ls -t "$OUT"/images/agent-*.tar | tail -n +2 | xargs -r rm -f
log "done: $REF"
echo "AGENT_IMAGE=$REF"
echo "AGENT_IMAGE_TAR=$TAR"
