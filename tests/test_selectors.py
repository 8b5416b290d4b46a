"""Selector syntax as kubectl users type it; bad input is a one-line UserError."""

from __future__ import annotations

import pytest

from podsight.errors import UserError
from podsight.selectors import LabelSelector, NameList, PodSelector

LABELS = {"app": "web", "tier": "front", "team.example.com/owner": "a"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", True), ("app==web", True), ("app!=web", False), ("app!=db", True),
        ("app in (web,db)", True), ("app notin (web,db)", False), ("app notin (db)", True),
        ("tier", True), ("!tier", False), ("missing", False), ("!missing", True),
        ("app=web,tier=front", True), ("app=web,tier=back", False),
        ("team.example.com/owner=a", True), ("missing!=x", True), ("missing in (x)", False),
        ("app in (web, db),!missing", True),
    ],
)
def test_label_selector(selector, expected):
    assert LabelSelector.parse(selector)(LABELS) is expected


@pytest.mark.parametrize("bad", ["app=", "=web", "app in web", "app in (web", "a,,b", "app ~ x",
                                 "app in (we b)"])
def test_bad_label_selectors(bad):
    if bad == "app=":  # an empty value is valid Kubernetes syntax
        assert LabelSelector.parse(bad)({"app": ""})
        return
    with pytest.raises(UserError):
        LabelSelector.parse(bad)


def test_name_lists_with_exclusions():
    only = NameList.parse("-n", "default,shop")
    assert only("default") and only("shop") and not only("kube-system")
    but = NameList.parse("-n", "!kube-system")
    assert but("default") and not but("kube-system")
    with pytest.raises(UserError):
        NameList.parse("-n", "!")
    with pytest.raises(UserError):
        NameList.parse("-n", ",")


def test_pod_selector():
    sel = PodSelector(namespaces=NameList.parse("-n", "shop"),
                      containers=NameList.parse("-c", "!sidecar"))
    assert sel.selects_pods
    assert sel.matches("shop", "frontend", {}, "node1", ["app"])
    assert not sel.matches("shop", "frontend", {}, "node1", ["sidecar"])
    assert not sel.matches("default", "web", {}, "node1", ["app"])
    assert not PodSelector().selects_pods
