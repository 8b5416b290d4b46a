"""Benchmark the Kubernetes identity cache at cluster scale: memory, lookup, watch event.

Loads 40,000 pods (owned by 2,000 ReplicaSets of 400 Deployments, on 200
nodes) and 5,000 services into a KubeCache, through the very code path the
informer threads run: JSON List pages of 500 items (bytes, as the API sends
them, including managedFields and status noise) into
``Informer.apply_list_page``/``apply_list``, and watch events as JSON lines
into ``Informer.apply_watch_line``. Pushing 40k pods through a real
apiserver would mostly measure etcd; ``--kubeconfig`` does that too, on
whatever the cluster holds (``--populate N`` creates N pods first).

Reports: RSS growth and tracemalloc size of the loaded cache, decode rate,
median cost of one lookup over 1M lookups, and the cost of applying one
watch event. Targets: cache <= 150 MB, lookup <= 2 us, watch event < 1 ms.
Never run as a timed test.

    .venv/bin/python bench/identity.py [--pods 40000] [--services 5000]
    .venv/bin/python bench/identity.py --kubeconfig /tmp/kc/kubeconfig --populate 2000
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from podsight.identity.kube import KubeCache

PAGE = 500


# ------------------------------------------------------------------ workload
def _rv(i: int) -> str:
    return str(1_000_000 + i)


def pod_json(i: int, *, ip: str | None = None, rv: int = 0, phase: str = "Running",
             extra_label: str | None = None) -> dict[str, Any]:
    """A pod as a Deployment makes it, with the fields a real API response carries."""
    dep = i // 100  # 400 deployments x 100 pods
    rs = f"app-{dep}-5d8f7c{dep % 10}b9"
    ns = f"team-{dep % 50}"
    name = f"{rs}-{i:05x}q"
    node = f"node-{i % 200}"
    ip = ip or f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    labels = {"app": f"app-{dep}", "pod-template-hash": f"5d8f7c{dep % 10}b9",
              "tier": "backend", "version": "v1"}
    if extra_label:
        labels["rollout"] = extra_label
    ts = "2024-05-01T10:00:00Z"
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "generateName": rs + "-", "namespace": ns,
            "uid": f"6f1c2a4e-{i:04x}-4b1d-9a77-0c2d{i:08x}",
            "resourceVersion": _rv(rv or i), "creationTimestamp": ts, "labels": labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": ts,
                            "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                 "uid": f"aa11bb22-{dep:04x}-4c3d-8e9f-00112233{dep:04x}",
                                 "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update",
                 "apiVersion": "v1", "time": ts, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {
                     ".": {}, "f:app": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {
                     ".": {}, f"k:{{\"uid\":\"{dep}\"}}": {}}},
                     "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                         ".": {}, "f:image": {}, "f:name": {}, "f:ports": {}, "f:resources": {}}},
                         "f:dnsPolicy": {}, "f:restartPolicy": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": ts,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {
                     "f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {},
                     "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}},
            ],
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-x1", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "containers": [
                {"name": "app", "image": f"registry.example.com/app-{dep}:1.4.2",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                 "env": [{"name": "LOG_LEVEL", "value": "info"}],
                 "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                               "requests": {"cpu": "100m", "memory": "128Mi"}},
                 "volumeMounts": [{"name": "kube-api-access-x1", "readOnly": True,
                                   "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"},
                {"name": "envoy", "image": "registry.example.com/envoy:1.29",
                 "ports": [{"name": "admin", "containerPort": 15000, "protocol": "TCP"}],
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"},
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "serviceAccount": "default", "nodeName": node, "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": phase,
            "conditions": [{"type": t, "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": ts}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "hostIP": f"192.168.{(i % 200) // 256}.{i % 200}", "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": ts,
            "containerStatuses": [
                {"name": c, "state": {"running": {"startedAt": ts}}, "lastState": {},
                 "ready": True, "restartCount": 0, "image": f"registry.example.com/{c}:1",
                 "imageID": "registry.example.com/x@sha256:" + "ab" * 32,
                 "containerID": "containerd://" + f"{i:064x}", "started": True}
                for c in ("app", "envoy")],
            "qosClass": "Burstable",
        },
    }


def service_json(i: int) -> dict[str, Any]:
    ip = f"10.96.{i // 256}.{i % 256}"
    return {
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": f"svc-{i}", "namespace": f"team-{i % 50}",
                     "uid": f"5e7a-{i:08x}", "resourceVersion": _rv(i),
                     "creationTimestamp": "2024-05-01T10:00:00Z",
                     "labels": {"app": f"app-{i % 400}"},
                     "managedFields": [{"manager": "kubectl", "operation": "Update",
                                        "apiVersion": "v1", "fieldsType": "FieldsV1",
                                        "fieldsV1": {"f:spec": {"f:ports": {}}}}]},
        "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80,
                            "targetPort": 8080}],
                 "selector": {"app": f"app-{i % 400}"}, "clusterIP": ip, "clusterIPs": [ip],
                 "type": "ClusterIP", "sessionAffinity": "None", "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack"},
        "status": {"loadBalancer": {}},
    }


def pages(make: Callable[[int], dict[str, Any]], n: int) -> Iterator[bytes]:
    """List pages exactly as the API sends them (bytes, continue tokens)."""
    for start in range(0, n, PAGE):
        items = [make(i) for i in range(start, min(n, start + PAGE))]
        more = start + PAGE < n
        yield json.dumps({"kind": "List", "apiVersion": "v1", "metadata": {
            "resourceVersion": _rv(n), **({"continue": f"tok{start}"} if more else {})},
            "items": items}, separators=(",", ":")).encode()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ phases
def load(cache: KubeCache, n_pods: int, n_svcs: int) -> tuple[float, int]:
    """Feed List bodies through the informers; returns (seconds spent applying, bytes)."""
    spent, size = 0.0, 0
    inf = cache.informers
    small = {
        "nodes": [{"metadata": {"name": f"node-{i}", "uid": f"n{i}", "labels": {
            "kubernetes.io/hostname": f"node-{i}", "topology.kubernetes.io/zone": f"z{i % 3}"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": f"192.168.{i // 256}.{i % 256}"},
                {"type": "Hostname", "address": f"node-{i}"}]}} for i in range(200)],
        "namespaces": [{"metadata": {"name": f"team-{i}", "labels": {"team": str(i)}}}
                       for i in range(50)],
        "replicasets": [{"metadata": {
            "name": f"app-{d}-5d8f7c{d % 10}b9", "namespace": f"team-{d % 50}",
            "ownerReferences": [{"kind": "Deployment", "name": f"app-{d}", "controller": True}]}}
            for d in range(400)],
        "jobs": [],
    }
    for name, items in small.items():
        inf[name].apply_list_body({"metadata": {"resourceVersion": "1"}, "items": items})
    for name, make, n in (("pods", pod_json, n_pods), ("services", service_json, n_svcs)):
        collected: dict[Any, Any] = {}
        rv = ""
        for body in pages(make, n):
            size += len(body)
            t0 = time.perf_counter()
            rv, _ = inf[name].apply_list_page(body, collected)
            spent += time.perf_counter() - t0
            del body
        t0 = time.perf_counter()
        inf[name].apply_list(collected, rv)
        spent += time.perf_counter() - t0
        del collected
    return spent, size


def bench_lookups(cache: KubeCache, n_pods: int, n_svcs: int, total: int) -> dict[str, float]:
    rnd = random.Random(1)
    pod_ips = [f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(n_pods)]
    svc_ips = [f"10.96.{i // 256}.{i % 256}" for i in range(n_svcs)]
    misses = [f"203.0.113.{i}" for i in range(256)]
    batch = 1000
    out: dict[str, float] = {}
    for label, fn, ips in (
        ("pod_by_ip (hit)", cache.pod_by_ip, pod_ips),
        ("pod_by_ip (miss)", cache.pod_by_ip, misses),
        ("service_by_ip (hit)", cache.service_by_ip, svc_ips),
    ):
        sample = [rnd.choice(ips) for _ in range(batch)]
        per_batch = []
        for _ in range(total // batch):
            t0 = time.perf_counter_ns()
            for ip in sample:
                fn(ip)
            per_batch.append((time.perf_counter_ns() - t0) / batch)
        out[label] = statistics.median(per_batch)
    # the loop itself, to read the figures above net of it
    sample = pod_ips[:batch]
    noop = [0.0] * 200
    for k in range(200):
        t0 = time.perf_counter_ns()
        for _ip in sample:
            pass
        noop[k] = (time.perf_counter_ns() - t0) / batch
    out["(empty loop)"] = statistics.median(noop)
    return out


def bench_events(cache: KubeCache, n_pods: int, count: int) -> dict[str, float]:
    """MODIFIED (status/label change), and DELETED+ADDED reusing an IP, as JSON lines."""
    rnd = random.Random(2)
    pods = cache.informers["pods"]
    lines: list[tuple[str, bytes]] = []
    for k in range(count):
        i = rnd.randrange(n_pods)
        if k % 2 == 0:
            obj = pod_json(i, rv=n_pods + 10 + k, extra_label=f"r{k}")
            lines.append(("MODIFIED", json.dumps({"type": "MODIFIED", "object": obj}).encode()))
        else:
            obj = pod_json(i, rv=n_pods + 10 + k)
            lines.append(("DELETED", json.dumps({"type": "DELETED", "object": obj}).encode()))
            obj = pod_json(i, rv=n_pods + 11 + k)
            obj["metadata"]["uid"] += "-new"
            lines.append(("ADDED", json.dumps({"type": "ADDED", "object": obj}).encode()))
    times: dict[str, list[float]] = {"MODIFIED": [], "DELETED": [], "ADDED": []}
    for kind, line in lines:
        t0 = time.perf_counter_ns()
        pods.apply_watch_line(line)
        times[kind].append((time.perf_counter_ns() - t0) / 1000)
    everything = [t for ts in times.values() for t in ts]
    everything.sort()
    out = {f"{k} median": statistics.median(v) for k, v in times.items()}
    out["all median"] = statistics.median(everything)
    out["all p99"] = everything[int(len(everything) * 0.99)]
    out["json bytes/event"] = statistics.mean(len(line) for _, line in lines)
    return out


# ------------------------------------------------------------------ real API
def real_api(kubeconfig: str, populate: int) -> None:
    if populate:
        from concurrent.futures import ThreadPoolExecutor

        from kubernetes import client, config

        new_client: Any = config.new_client_from_config  # untyped in the client
        core: Any = client.CoreV1Api(new_client(config_file=kubeconfig))
        ns = f"bench-{int(time.time())}"
        core.create_namespace({"metadata": {"name": ns}})
        t0 = time.perf_counter()

        def one(i: int) -> None:
            body = pod_json(i)
            body["metadata"] = {"name": f"p{i}", "labels": body["metadata"]["labels"]}
            body["spec"] = {"nodeName": body["spec"]["nodeName"],
                            "containers": [{"name": "app", "image": "example.invalid/a:1"}]}
            del body["status"]
            core.create_namespaced_pod(ns, body)
            ip = f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"
            core.patch_namespaced_pod_status(f"p{i}", ns, {"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(populate)))
        print(f"populated {populate} pods in {ns} in {time.perf_counter() - t0:.1f} s")
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    with KubeCache.connect(kubeconfig) as cache:
        cache.wait_synced(600)
        took = time.perf_counter() - t0
        gc.collect()
        print(f"real API: synced {cache.stats()} in {took:.2f} s; "
              f"RSS +{rss_mb() - before:.1f} MB")
        for h in cache.health():
            print(f"  {h.resource}: lists={h.lists} rv={h.resource_version}")


# ------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=40_000)
    ap.add_argument("--services", type=int, default=5_000)
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=5_000, help="watch events (x1.5 lines)")
    ap.add_argument("--kubeconfig", help="also measure a full sync from this real cluster")
    ap.add_argument("--populate", type=int, default=0, help="create N pods there first")
    args = ap.parse_args()

    print(f"python {sys.version.split()[0]}; {args.pods} pods, {args.services} services, "
          f"200 nodes, 400 ReplicaSets")
    gc.collect()
    base = rss_mb()
    cache = KubeCache()
    spent, size = load(cache, args.pods, args.services)
    gc.collect()
    grown = rss_mb() - base
    n = args.pods + args.services
    print(f"load: {size / 1e6:.0f} MB of List JSON decoded+applied in {spent:.2f} s "
          f"({n / spent:,.0f} objects/s, {size / spent / 1e6:.0f} MB/s)")
    print(f"memory: RSS +{grown:.1f} MB after load (target <= 150 MB; includes allocator "
          f"slack from the decoded JSON)")
    assert cache.pod_by_ip("10.64.0.5") is not None
    sample = cache.pod_by_ip("10.64.0.5")
    print(f"  e.g. {sample}")
    print(f"  stats: {cache.stats()}")

    res = bench_lookups(cache, args.pods, args.services, args.lookups)
    print(f"lookups (median of {args.lookups // 1000} batches of 1000 calls, per call):")
    for k, v in res.items():
        print(f"  {k:22s} {v:7.1f} ns")
    ev = bench_events(cache, args.pods, args.events)
    print("watch events applied (json.loads + decode + index update, per event):")
    for k, v in ev.items():
        unit = "" if "bytes" in k else " us"
        print(f"  {k:22s} {v:9.1f}{unit}")

    # tracemalloc on a fresh cache: the bytes the cache itself holds
    del cache
    gc.collect()
    tracemalloc.start()
    cache = KubeCache()
    load(cache, args.pods, args.services)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"memory: tracemalloc {current / 1e6:.1f} MB held by the cache "
          f"(peak while loading {peak / 1e6:.1f} MB)")
    if args.kubeconfig:
        del cache
        gc.collect()
        real_api(args.kubeconfig, args.populate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
