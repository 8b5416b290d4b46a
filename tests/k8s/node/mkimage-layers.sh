#!/usr/bin/env bash
# mkimage-layers.sh OUT.tar NAME:TAG ENTRYPOINT_JSON CMD_JSON LAYER.tar[=SHA256]...
# Write an OCI image archive (for "ctr images import") from ready layer tars,
# bottom layer first, with no registry or daemon: mkimage.sh's format with
# several uncompressed layers, so that a cached base layer is reused as is
# and only the top layer changes. A layer's sha256 may be given to save
# hashing it again.
set -euo pipefail
[[ $# -ge 5 ]] || { echo "usage: $0 OUT.tar NAME:TAG ENTRYPOINT_JSON CMD_JSON LAYER.tar[=SHA256]..." >&2; exit 2; }
out=$1 ref=$2 ep=$3 cmd=$4; shift 4
tag=${ref##*:}
t=$(mktemp -d "$(dirname "$out")/.mkimage-XXXXXX"); trap 'rm -rf "$t"' EXIT
mkdir -p "$t/blobs/sha256"
diffs=() layers=()
for spec in "$@"; do
    f=${spec%%=*} d=
    [[ $spec == *=* ]] && d=${spec#*=}
    [[ -n $d ]] || d=$(sha256sum "$f" | cut -d' ' -f1)
    # same filesystem: a hard link costs nothing; else copy
    ln "$f" "$t/blobs/sha256/$d" 2>/dev/null || cp "$f" "$t/blobs/sha256/$d"
    diffs+=("\"sha256:$d\"")
    layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$(stat -c %s "$f")}")
done
join() { local IFS=,; echo "$*"; }
printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/opt/podsight/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"podsight mkimage-layers.sh"}]}' \
    "$ep" "$cmd" "$(join "${diffs[@]}")" >"$t/config.json"
cd_=$(sha256sum "$t/config.json" | cut -d' ' -f1); cs=$(stat -c %s "$t/config.json")
mv "$t/config.json" "$t/blobs/sha256/$cd_"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$cd_" "$cs" "$(join "${layers[@]}")" >"$t/manifest.json"
md=$(sha256sum "$t/manifest.json" | cut -d' ' -f1); ms=$(stat -c %s "$t/manifest.json")
mv "$t/manifest.json" "$t/blobs/sha256/$md"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$md" "$ms" "$ref" "$tag" >"$t/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$t/oci-layout"
tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$t" -cf "$out.tmp" oci-layout index.json blobs
mv -f "$out.tmp" "$out"
echo "$out: $ref (manifest sha256:$md)"
