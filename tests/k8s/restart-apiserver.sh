#!/usr/bin/env bash
# restart-apiserver.sh DIR [restart|stop|start] - stop and/or start again only
# the kube-apiserver of a cluster made by start-cluster.sh DIR, with the very
# same command line (read from /proc/PID/cmdline) and the same etcd, so the
# stored objects and their resourceVersions survive. Tests use it to cut
# watches the way a control-plane upgrade does.
#
#   stop     SIGTERM the apiserver (SIGKILL after 10 s), save its command line
#            to DIR/apiserver.cmdline
#   start    start it again from DIR/apiserver.cmdline, wait for /readyz,
#            update APISERVER_PID(_START) in DIR/env, and restart the watchdog
#            (it exits with the apiserver) if WATCHED_PID is still alive
#   restart  stop, then start (the default)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[restart-apiserver %5ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[restart-apiserver] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 DIR [restart|stop|start]" >&2; exit 2; }
DIR=$(cd "$1" && pwd -P)
ACTION=${2:-restart}
ENV=$DIR/env
[[ -f "$ENV" ]] || die "no $ENV; start the cluster with start-cluster.sh first"
TIMEOUT=${PODSIGHT_K8S_START_TIMEOUT:-60}

val() { sed -n "s/^$1=//p" "$ENV" | head -n 1; }
pid_start() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null || true; }
ours() {  # ours PID START: still the process start-cluster.sh (or we) started?
    local pid=$1 start=$2
    [[ "$pid" =~ ^[0-9]+$ && -d /proc/$pid ]] || return 1
    [[ -n "$start" && "$(pid_start "$pid")" == "$start" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR" || return 1
}
zombie() { [[ "$(awk '{sub(/^.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null)" == Z ]]; }
set_env() {  # set_env KEY VALUE: rewrite one line of DIR/env atomically
    local k=$1 v=$2
    { grep -v "^$k=" "$ENV" || true; echo "$k=$v"; } >"$ENV.tmp"
    mv -f "$ENV.tmp" "$ENV"
}

do_stop() {
    local pid start i
    pid=$(val APISERVER_PID); start=$(val APISERVER_PID_START)
    ours "$pid" "$start" || die "kube-apiserver (pid $pid) of $DIR is not running"
    cp "/proc/$pid/cmdline" "$DIR/apiserver.cmdline"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        { ours "$pid" "$start" && ! zombie "$pid"; } || { log "stopped kube-apiserver (pid $pid)"; return 0; }
        sleep 0.1
    done
    log "kube-apiserver (pid $pid) did not stop after 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

do_start() {
    [[ -s "$DIR/apiserver.cmdline" ]] || die "no $DIR/apiserver.cmdline; run '$0 $DIR stop' first"
    local args=() pid deadline server token ca watched wd
    mapfile -d '' -t args <"$DIR/apiserver.cmdline"
    pid=$(val APISERVER_PID)
    if ours "$pid" "$(val APISERVER_PID_START)"; then die "kube-apiserver (pid $pid) is already running"; fi
    setsid "${args[@]}" >>"$DIR/apiserver.log" 2>&1 </dev/null &
    pid=$!
    server=$(val K8S_SERVER); token=$(val K8S_TOKEN); ca=$(val K8S_CA_FILE)
    deadline=$((SECONDS + TIMEOUT))
    until [[ "$(curl -fsS --max-time 3 --cacert "$ca" -H "Authorization: Bearer $token" "$server/readyz" 2>/dev/null || true)" == ok ]]; do
        kill -0 "$pid" 2>/dev/null || die "kube-apiserver exited during start-up (log: $DIR/apiserver.log)"
        (( SECONDS < deadline )) || { kill -TERM "$pid"; die "kube-apiserver not ready within ${TIMEOUT}s"; }
        sleep 0.2
    done
    set_env APISERVER_PID "$pid"
    set_env APISERVER_PID_START "$(pid_start "$pid")"
    log "kube-apiserver ready again (pid $pid)"
    watched=$(val WATCHED_PID)
    if [[ -n "$watched" ]] && kill -0 "$watched" 2>/dev/null; then
        # same watchdog as start-cluster.sh: it ended when the old apiserver did
        setsid bash -c 'w=$1 a=$2 d=$3 s=$4
            while kill -0 "$w" 2>/dev/null && kill -0 "$a" 2>/dev/null; do sleep 1; done
            kill -0 "$a" 2>/dev/null && exec "$s" "$d"
            exit 0' podsight-k8s-watchdog "$watched" "$pid" "$DIR" "$HERE/stop-cluster.sh" \
            >>"$DIR/watchdog.log" 2>&1 </dev/null &
        wd=$!
        set_env WATCHDOG_PID "$wd"
        set_env WATCHDOG_PID_START "$(pid_start "$wd")"
    fi
}

case "$ACTION" in
    stop) do_stop ;;
    start) do_start ;;
    restart) do_stop; do_start ;;
    *) echo "usage: $0 DIR [restart|stop|start]" >&2; exit 2 ;;
esac
