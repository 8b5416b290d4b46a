"""NetworkPolicies Kubernetes rejects: the table ``policy check`` must refuse (exit 2, one
line naming the problem), and that ``kubectl apply --dry-run=server`` against the real
kube-apiserver of tests/k8s refuses too (test_policy_kube.py). Each case: an id, the
manifest text, a piece of podsight's message, and whether the 1.20 apiserver can judge
it (it predates ``endPort`` and strict field validation, so it cannot judge those).
"""

from __future__ import annotations

HEAD = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: p
  namespace: default
"""


def spec(text: str) -> str:
    return HEAD + "spec:\n" + "".join(f"  {line}\n" for line in text.strip("\n").splitlines())


BAD: list[tuple[str, str, str, bool]] = [
    ("protocol-lowercase", spec("podSelector: {}\ningress:\n- ports: [{protocol: tcp, port: 80}]"),
     "Unsupported value: 'tcp'", True),
    ("protocol-icmp", spec("podSelector: {}\ningress:\n- ports: [{protocol: ICMP}]"),
     "Unsupported value: 'ICMP'", True),
    ("port-zero", spec("podSelector: {}\ningress:\n- ports: [{port: 0}]"),
     "must be between 1 and 65535", True),
    ("port-too-big", spec("podSelector: {}\ningress:\n- ports: [{port: 70000}]"),
     "must be between 1 and 65535", True),
    ("port-name-digits", spec("podSelector: {}\ningress:\n- ports: [{port: \"8080\"}]"),
     "at least one letter", True),
    ("port-name-upper", spec("podSelector: {}\ningress:\n- ports: [{port: HTTP}]"),
     "alpha-numeric", True),
    ("port-name-double-hyphen", spec("podSelector: {}\ningress:\n- ports: [{port: a--b}]"),
     "consecutive hyphens", True),
    ("port-name-too-long", spec("podSelector: {}\ningress:\n- ports: [{port: abcdefghijklmnop}]"),
     "no more than 15", True),
    ("port-boolean", spec("podSelector: {}\ningress:\n- ports: [{port: true}]"),
     "expected an integer, found a boolean", True),
    ("end-port-below-port", spec("podSelector: {}\ningress:\n- ports: [{port: 90, endPort: 80}]"),
     "must be greater than or equal to `port`", False),
    ("end-port-named", spec("podSelector: {}\ningress:\n- ports: [{port: http, endPort: 90}]"),
     "non-numeric", False),
    ("end-port-without-port", spec("podSelector: {}\ningress:\n- ports: [{endPort: 90}]"),
     "`port` is not specified", False),
    ("peer-empty", spec("podSelector: {}\ningress:\n- from: [{}]"), "must specify a peer", True),
    ("peer-ipblock-and-selector", spec(
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]"),
     "may not specify both ipBlock and another peer", True),
    ("ipblock-no-cidr", spec("podSelector: {}\negress:\n- to: [{ipBlock: {except: [10.0.0.0/9]}}]"),
     "cidr: Required value", True),
    ("ipblock-prefix-33", spec("podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/33}}]"),
     "must be a valid CIDR", True),
    ("ipblock-no-prefix", spec("podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.1}}]"),
     "must be a valid CIDR", True),
    ("ipblock-except-outside", spec(
        "podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]"),
     "strict subset", True),
    ("ipblock-except-equal", spec(
        "podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]"),
     "strict subset", True),
    ("ipblock-except-other-family", spec(
        "podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]"),
     "strict subset", True),
    ("selector-bad-operator", spec(
        "podSelector:\n  matchExpressions: [{key: app, operator: Equals, values: [a]}]"),
     "not a valid selector operator", True),
    ("selector-in-without-values", spec(
        "podSelector:\n  matchExpressions: [{key: app, operator: In}]"),
     "must be specified when `operator` is 'In' or 'NotIn'", True),
    ("selector-exists-with-values", spec(
        "podSelector:\n  matchExpressions: [{key: app, operator: Exists, values: [a]}]"),
     "may not be specified when `operator` is 'Exists'", True),
    ("selector-bad-key", spec("podSelector:\n  matchLabels: {'bad key': x}"),
     "Invalid value: 'bad key'", True),
    ("selector-bad-value", spec("podSelector:\n  matchLabels: {app: '-x-'}"),
     "Invalid value: '-x-'", True),
    ("selector-value-too-long", spec("podSelector:\n  matchLabels: {app: " + "a" * 64 + "}"),
     "no more than 63 characters", True),
    ("selector-is-a-list", spec("podSelector: []"), "expected an object, found a list", True),
    ("policy-type-typo", spec("podSelector: {}\npolicyTypes: [Ingres]"),
     "Unsupported value: 'Ingres'", True),
    ("policy-types-three", spec("podSelector: {}\npolicyTypes: [Ingress, Egress, Ingress]"),
     "more than two policyTypes", True),
    ("policy-types-a-string", spec("podSelector: {}\npolicyTypes: Ingress"),
     "expected a list, found a string", True),
    ("unknown-field", spec("podSelector: {}\ningres: []"), "spec.ingres: unknown field", True),
    ("unknown-peer-field", spec("podSelector: {}\ningress:\n- from: [{pods: {}}]"),
     "unknown field", True),
    # Refused by API servers with strict field validation (1.27 and later); kubectl 1.32
    # against this 1.20 server keeps the last one, so the oracle cannot judge it.
    ("duplicate-key", spec("podSelector: {}\ningress: []\ningress: [{}]"),
     "'ingress' is given twice", False),
    ("no-name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {}\n"
     "spec: {podSelector: {}}\n", "metadata.name: Required value", True),
    ("bad-name", HEAD.replace("name: p", "name: Bad_Name") + "spec: {podSelector: {}}\n",
     "Invalid value: 'Bad_Name'", True),
    ("bad-namespace", HEAD.replace("namespace: default", "namespace: Not-Valid")
     + "spec: {podSelector: {}}\n", "Invalid value: 'Not-Valid'", True),
    ("old-api-version", HEAD.replace("networking.k8s.io/v1", "extensions/v1beta1")
     + "spec: {podSelector: {}}\n", "Unsupported value: 'extensions/v1beta1'", True),
    ("no-api-version", HEAD.replace("apiVersion: networking.k8s.io/v1\n", "")
     + "spec: {podSelector: {}}\n", "apiVersion: Required value", True),
    ("no-kind", HEAD.replace("kind: NetworkPolicy\n", "") + "spec: {podSelector: {}}\n",
     "kind not set", True),
    ("not-yaml", "apiVersion: networking.k8s.io/v1\nkind: [NetworkPolicy\n", "not valid YAML",
     True),
    ("a-scalar", "just words\n", "expected a Kubernetes object", True),
]
