#!/usr/bin/env bash
# start-cluster.sh DIR - start etcd + kube-apiserver on 127.0.0.1 (free ports
# picked automatically) with fresh state under DIR.
#
# Writes DIR/kubeconfig, DIR/env (KEY=value lines: KUBECONFIG, KUBECTL,
# K8S_SERVER, K8S_TOKEN, ETCD_ENDPOINT, *_PID, WATCHED_PID ...), DIR/etcd.log,
# DIR/apiserver.log, DIR/pki/. Prints KUBECONFIG=DIR/kubeconfig on stdout
# (progress goes to stderr). Stop with stop-cluster.sh DIR; restart only the
# apiserver (same flags, same etcd data) with restart-apiserver.sh DIR.
#
#   PODSIGHT_K8S_CACHE           where build-apiserver.sh put the binary
#                                (default: $HOME/.cache/podsight-k8s)
#   PODSIGHT_KUBE_APISERVER      explicit kube-apiserver binary
#   PODSIGHT_K8S_WATCH_PID=PID   also start a watchdog that stops the cluster
#                                when process PID exits (e.g. the pytest process)
#   PODSIGHT_K8S_START_TIMEOUT   seconds to wait for readiness (default 60)
#   PODSIGHT_K8S_APISERVER_ARGS  extra kube-apiserver flags (space separated)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[start-cluster %5ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[start-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
DIR=$(cd "$1" && pwd -P)
[[ "$DIR" =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR must be a path without spaces or special characters: $DIR"

CACHE=${PODSIGHT_K8S_CACHE:-${HOME:-/root}/.cache/podsight-k8s}
APISERVER=${PODSIGHT_KUBE_APISERVER:-$CACHE/bin/kube-apiserver}
[[ -x "$APISERVER" ]] || die "no kube-apiserver at $APISERVER; run $HERE/build-apiserver.sh first (PODSIGHT_K8S_CACHE=$CACHE)"
ETCD=$(command -v etcd || true)
[[ -n "$ETCD" ]] || die "etcd not found (package etcd-server; build-apiserver.sh installs it)"
command -v openssl >/dev/null || die "openssl not found"
command -v curl >/dev/null || die "curl not found"
if [[ -x "$CACHE/bin/kubectl" ]]; then KUBECTL=$CACHE/bin/kubectl; else KUBECTL=$(command -v kubectl || true); fi
TIMEOUT=${PODSIGHT_K8S_START_TIMEOUT:-60}

# ----------------------------------------------------------------- helpers
# start time of a pid (field 22 of /proc/PID/stat), to tell a reused pid apart
pid_start() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null || true; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# refuse to start over a running cluster in the same DIR
if [[ -f "$DIR/env" ]]; then
    for k in ETCD APISERVER; do
        p=$(sed -n "s/^${k}_PID=//p" "$DIR/env" | head -n 1)
        s=$(sed -n "s/^${k}_PID_START=//p" "$DIR/env" | head -n 1)
        if alive "$p" && [[ "$(pid_start "$p")" == "$s" ]]; then
            die "a cluster is already running in $DIR ($k pid $p); run $HERE/stop-cluster.sh $DIR first"
        fi
    done
fi

# ports in use (any state) on this host, from /proc/net/tcp{,6}
used_ports() {
    local f
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $f ]] && awk 'NR > 1 { n = split($2, a, ":"); print a[n] }' "$f"
    done | sort -u | while read -r h; do echo $((16#$h)); done
}
# pick N distinct free ports below the ephemeral range
pick_ports() {
    local n=$1 lo=20000 hi eph used=" " p out=() tries=0
    eph=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    hi=$((eph - 1)); (( hi > lo + 1000 )) || { lo=10000; hi=19999; }
    used+="$(used_ports | tr '\n' ' ')"
    while (( ${#out[@]} < n && tries < 1000 )); do
        tries=$((tries + 1))
        p=$(( lo + (RANDOM * 32768 + RANDOM) % (hi - lo) ))
        [[ "$used" == *" $p "* ]] && continue
        used+="$p "; out+=("$p")
    done
    (( ${#out[@]} == n )) || return 1
    echo "${out[@]}"
}

ETCD_PID= APISERVER_PID=
# kill a pid we started if it is still ours (its command line mentions DIR)
kill_ours() {
    local p=$1
    [[ -n "$p" && -r /proc/$p/cmdline ]] || return 0
    tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF -- "$DIR" || return 0
    kill -TERM "$p" 2>/dev/null || true
}
cleanup_on_fail() {
    local rc=$?
    trap - ERR EXIT
    if (( rc != 0 )); then
        kill_ours "$APISERVER_PID"; kill_ours "$ETCD_PID"
        wait 2>/dev/null || true
        [[ -f "$DIR/env" ]] && mv -f "$DIR/env" "$DIR/env.failed"
        printf '[start-cluster] failed; logs in %s\n' "$DIR" >&2
    fi
    exit "$rc"
}
trap cleanup_on_fail EXIT
trap 'exit 1' ERR

# ----------------------------------------------------------------- fresh state
rm -rf "$DIR/etcd-data" "$DIR/pki"
rm -f "$DIR/kubeconfig" "$DIR/env" "$DIR/env.failed" "$DIR/etcd.log" "$DIR/apiserver.log" \
      "$DIR/watchdog.log" "$DIR/tokens.csv"
mkdir -p "$DIR/pki"
chmod 700 "$DIR/pki"

# ----------------------------------------------------------------- certs, keys, token
T0=$SECONDS
PKI=$DIR/pki
cat >"$PKI/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = podsight-test
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = IP:127.0.0.1, IP:10.96.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc
EOF
(
    cd "$PKI"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
    openssl req -config openssl.cnf -x509 -new -key ca.key -sha256 -days 3650 \
        -subj /CN=podsight-test-ca -extensions ca_ext -out ca.crt
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out apiserver.key 2>/dev/null
    openssl req -config openssl.cnf -new -key apiserver.key -subj /CN=kube-apiserver -out apiserver.csr
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
        -extfile openssl.cnf -extensions server_ext -out apiserver.crt 2>/dev/null
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
    chmod 600 ca.key apiserver.key sa.key
) || die "openssl failed"
TOKEN=$(openssl rand -hex 24)
printf '%s,podsight-admin,podsight-admin,"system:masters"\n' "$TOKEN" >"$PKI/tokens.csv"
chmod 600 "$PKI/tokens.csv"
log "certs, keys and token made in $((SECONDS - T0)) s"

# ----------------------------------------------------------------- etcd
start_etcd() {
    local pc=$1 pp=$2
    setsid "$ETCD" --name podsight --data-dir "$DIR/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$pc" --advertise-client-urls "http://127.0.0.1:$pc" \
        --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
        --initial-cluster "podsight=http://127.0.0.1:$pp" --initial-cluster-state new \
        --initial-cluster-token "podsight-$$" \
        --logger zap --log-outputs stderr --log-level warn \
        >"$DIR/etcd.log" 2>&1 </dev/null &
    ETCD_PID=$!
}
wait_etcd() {
    local pc=$1 deadline=$((SECONDS + 20))
    while (( SECONDS < deadline )); do
        alive "$ETCD_PID" || return 1
        if curl -fsS --max-time 2 "http://127.0.0.1:$pc/health" 2>/dev/null | grep -q '"health":"true"'; then return 0; fi
        sleep 0.2
    done
    return 1
}
for attempt in 1 2 3; do
    read -r ETCD_PORT ETCD_PEER_PORT API_PORT < <(pick_ports 3) || die "could not pick free ports"
    log "starting etcd on 127.0.0.1:$ETCD_PORT (peer $ETCD_PEER_PORT)"
    rm -rf "$DIR/etcd-data"
    start_etcd "$ETCD_PORT" "$ETCD_PEER_PORT"
    if wait_etcd "$ETCD_PORT"; then break; fi
    kill -TERM "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true
    if (( attempt < 3 )) && grep -q 'address already in use' "$DIR/etcd.log"; then
        log "port clash, retrying with other ports"; continue
    fi
    tail -n 20 "$DIR/etcd.log" >&2 || true
    die "etcd did not become healthy (log: $DIR/etcd.log)"
done
log "etcd ready (pid $ETCD_PID)"

# ----------------------------------------------------------------- kube-apiserver
start_apiserver() {
    local port=$1
    # shellcheck disable=SC2086
    setsid "$APISERVER" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$port" --insecure-port=0 \
        --cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --token-auth-file="$PKI/tokens.csv" --anonymous-auth=false \
        --authorization-mode=RBAC \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-cluster-ip-range=10.96.0.0/16 \
        --disable-admission-plugins=ServiceAccount \
        --allow-privileged=true \
        --endpoint-reconciler-type=none \
        --profiling=false --v=1 \
        ${PODSIGHT_K8S_APISERVER_ARGS:-} \
        >"$DIR/apiserver.log" 2>&1 </dev/null &
    APISERVER_PID=$!
}
api_get() {  # api_get PATH -> prints body, fails on non-2xx
    curl -fsS --max-time 3 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$API_PORT$1" 2>/dev/null
}
wait_apiserver() {
    local deadline=$((SECONDS + TIMEOUT))
    while (( SECONDS < deadline )); do
        alive "$APISERVER_PID" || return 1
        if [[ "$(api_get /readyz || true)" == ok ]] && api_get /api/v1/namespaces/default >/dev/null; then
            return 0
        fi
        sleep 0.25
    done
    return 1
}
T1=$SECONDS
for attempt in 1 2 3; do
    log "starting kube-apiserver on 127.0.0.1:$API_PORT"
    start_apiserver "$API_PORT"
    if wait_apiserver; then break; fi
    if alive "$APISERVER_PID"; then why="did not become ready within ${TIMEOUT}s"; else why="exited during start-up"; fi
    kill -TERM "$APISERVER_PID" 2>/dev/null || true; wait "$APISERVER_PID" 2>/dev/null || true
    if (( attempt < 3 )) && grep -q 'address already in use' "$DIR/apiserver.log"; then
        read -r API_PORT < <(pick_ports 1) || die "could not pick a free port"
        log "port clash, retrying on $API_PORT"; continue
    fi
    tail -n 30 "$DIR/apiserver.log" >&2 || true
    die "kube-apiserver $why (log: $DIR/apiserver.log)"
done
log "kube-apiserver ready (pid $APISERVER_PID) after $((SECONDS - T1)) s"

# sanity: a JSON create carrying maps, as a server-side dry run (stores nothing).
# A kube-apiserver 1.20 built with Go >= 1.18 and the original vendored
# reflect2 1.0.1 panics here.
body='{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"podsight-selftest","labels":{"a":"b"},"annotations":{"c":"d"}}}'
curl -fsS --max-time 10 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -X POST "https://127.0.0.1:$API_PORT/api/v1/namespaces?dryRun=All" -d "$body" >/dev/null 2>&1 \
    || die "kube-apiserver failed a dry-run JSON create (see $DIR/apiserver.log); if it panicked in reflect2, rebuild with $HERE/build-apiserver.sh --rebuild"

# ----------------------------------------------------------------- kubeconfig, env
SERVER=https://127.0.0.1:$API_PORT
CA_DATA=$(base64 -w0 <"$PKI/ca.crt")
umask 077
cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: podsight
  cluster:
    server: $SERVER
    certificate-authority-data: $CA_DATA
users:
- name: podsight-admin
  user:
    token: $TOKEN
contexts:
- name: podsight
  context:
    cluster: podsight
    user: podsight-admin
    namespace: default
current-context: podsight
EOF

WATCHDOG_PID=
if [[ -n "${PODSIGHT_K8S_WATCH_PID:-}" ]]; then
    # exits when the cluster is stopped; runs stop-cluster.sh when the watched pid exits
    setsid bash -c 'w=$1 a=$2 d=$3 s=$4
        while kill -0 "$w" 2>/dev/null && kill -0 "$a" 2>/dev/null; do sleep 1; done
        kill -0 "$a" 2>/dev/null && exec "$s" "$d"
        exit 0' podsight-k8s-watchdog "$PODSIGHT_K8S_WATCH_PID" "$APISERVER_PID" "$DIR" "$HERE/stop-cluster.sh" \
        >"$DIR/watchdog.log" 2>&1 </dev/null &
    WATCHDOG_PID=$!
fi

cat >"$DIR/env.tmp" <<EOF
KUBECONFIG=$DIR/kubeconfig
KUBECTL=$KUBECTL
K8S_SERVER=$SERVER
K8S_TOKEN=$TOKEN
K8S_CA_FILE=$PKI/ca.crt
ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
ETCD_PID=$ETCD_PID
ETCD_PID_START=$(pid_start "$ETCD_PID")
APISERVER_PID=$APISERVER_PID
APISERVER_PID_START=$(pid_start "$APISERVER_PID")
WATCHDOG_PID=$WATCHDOG_PID
WATCHDOG_PID_START=$( [[ -n "$WATCHDOG_PID" ]] && pid_start "$WATCHDOG_PID" || true)
WATCHED_PID=${PODSIGHT_K8S_WATCH_PID:-}
CLUSTER_DIR=$DIR
EOF
mv -f "$DIR/env.tmp" "$DIR/env"
log "cluster up in $SECONDS s: $SERVER (env: $DIR/env)"
echo "KUBECONFIG=$DIR/kubeconfig"
