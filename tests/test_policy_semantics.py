"""The checker against the semantics table (tests/policy_cases.py): every case's verdict is
the one the Kubernetes documentation gives. No root; the lab enforces the same cases in
test_policy_lab.py and must agree."""

from __future__ import annotations

import pytest
from policy_cases import CASES, WORLDS, Case, address

from podsight.analysis.policy import Checker, Connection
from podsight.analysis.policy.documents import Document
from podsight.analysis.policy.policies import collect
from podsight.analysis.policy.world import from_documents


def world_of(name: str):
    items = WORLDS[name]["items"]
    return from_documents([Document(f"{name}[{i}]", o) for i, o in enumerate(items)], name)


def judge(case: Case):
    world = world_of(case.world)
    policies = collect([Document(f"{case.id}[{i}]", p) for i, p in enumerate(case.policies)])
    checker = Checker(policies.policies, world)
    objects = WORLDS[case.world]
    conn = Connection(case.proto, address(objects, case.src, case.family), 40000,
                      address(objects, case.dst, case.family), case.port)
    return checker.check(conn)


def test_the_table_covers_what_the_issue_asks():
    assert len(CASES) >= 40
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    words = " ".join(ids)
    for needed in ("ipv6", "ingress-ipblock", "end-port", "exists-missing-key",
                   "does-not-exist-missing-key", "notin-missing-key", "named-port-protocol",
                   "udp-only-isolates-tcp", "sctp-only-isolates-tcp", "loopback",
                   "ns-and-pod-selector-and", "ns-or-pod-selector", "egress-empty-no-types",
                   "from-empty-list", "ports-empty-list", "ingress-empty-list", "union",
                   "both-ends", "egress-ipblock-except", "egress-ipblock-pod-ip"):
        assert needed in words, needed
    assert {c.expected for c in CASES} == {"allowed", "denied"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_verdict(case: Case):
    verdict = judge(case)
    assert verdict.verdict == case.expected, f"{case.doc}: {verdict.reason}"
    if case.reason:
        assert case.reason in verdict.reason
    if case.allowed_by is not None:
        sides = [s for s in (verdict.egress, verdict.ingress) if s is not None and s.policies]
        assert any(s.allowed_by == case.allowed_by for s in sides), verdict


def test_both_directions_are_reported():
    case = next(c for c in CASES if c.id == "both-ends-egress-ok-ingress-no")
    v = judge(case)
    assert v.egress is not None and v.egress.verdict == "allowed"
    assert v.egress.allowed_by == ("default/client-out",)
    assert v.ingress is not None and v.ingress.verdict == "denied"
    assert v.ingress.policies == ("default/deny-ingress",) and v.ingress.allowed_by == ()


def test_service_verdict_names_the_backend():
    case = next(c for c in CASES if c.id == "service-port-is-not-target")
    v = judge(case)
    assert v.service == "default/web" and v.backend in ("default/web-1", "default/web-2")
    assert v.backend_port == 8080


def test_verdicts_are_cached_per_tuple():
    world = world_of("LAB")
    case = next(c for c in CASES if c.id == "pod-selector-own-ns")
    checker = Checker(collect([Document("p", p) for p in case.policies]).policies, world)
    first = checker.check(Connection("tcp", "10.244.0.10", 40000, "10.244.0.11", 80))
    second = checker.check(Connection("tcp", "10.244.0.10", 40001, "10.244.0.11", 80))
    assert first.decision is second.decision and checker.distinct == 1
    checker.check(Connection("tcp", "10.244.0.10", 40001, "10.244.0.11", 9090))
    assert checker.distinct == 2
    # another pod alike in namespace, labels, ports and node: the same decision
    dev = checker.check(Connection("tcp", "10.244.0.15", 1, "10.244.0.11", 80))
    assert checker.distinct == 3  # dev/client is in another namespace: another class
    assert dev.verdict == "denied" and first.verdict == "allowed"
