"""TLS hellos: the parser against hellos OpenSSL itself writes (Python's ssl, in memory),
and `podsight flows --tls` and `podsight serve --tls` against curl in the lab."""

from __future__ import annotations

import ssl
import subprocess
import time

import pytest
from flowsrun import FlowsRun
from servehelp import Serve

from podsight.gadgets.flows.tls import parse
from podsight.lab import EXTERNAL_WEB


def _hellos(tmp_path, *, max_version=None, alpn=("h2", "http/1.1"), sni="api.example.test"):
    """A ClientHello and the ServerHello answering it, written by OpenSSL."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=api.example.test"],
                   check=True, capture_output=True)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE
    if max_version is not None:
        cctx.maximum_version = max_version
    if alpn:
        cctx.set_alpn_protocols(list(alpn))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    sctx.set_alpn_protocols(["http/1.1"])
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname=sni)
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    client_hello = c_out.read()
    s_in.write(client_hello)
    with pytest.raises(ssl.SSLWantReadError):
        server.do_handshake()
    return client_hello, s_out.read()


def test_tls13_client_and_server_hello(tmp_path):
    ch, sh = _hellos(tmp_path)
    c = parse(ch)
    assert c is not None and c.kind == "client"
    assert c.sni == "api.example.test" and c.alpn == ("h2", "http/1.1")
    assert c.versions[0] == "TLS 1.3" and "TLS 1.2" in c.versions
    s = parse(sh)
    assert s is not None and s.kind == "server"
    assert s.versions == ("TLS 1.3",) and s.cipher.startswith("TLS_AES_")


def test_tls12_client(tmp_path):
    ch, sh = _hellos(tmp_path, max_version=ssl.TLSVersion.TLSv1_2, alpn=())
    c = parse(ch)
    assert c is not None and c.sni == "api.example.test" and c.alpn == ()
    assert "TLS 1.3" not in c.versions
    s = parse(sh)
    assert s is not None and s.versions == ("TLS 1.2",) and "ECDHE" in s.cipher


def test_cut_short_and_not_tls(tmp_path):
    ch, _ = _hellos(tmp_path)
    for n in range(0, len(ch)):
        parse(ch[:n])  # never raises, whatever the cut
    # Cut after the SNI: the name is still there.
    cut = parse(ch[:ch.index(b"api.example.test") + len(b"api.example.test")])
    assert cut is not None and cut.sni == "api.example.test"
    assert parse(b"GET / HTTP/1.1\r\n\r\n") is None
    assert parse(b"") is None


def _curl(lab, *args: str) -> None:
    out = lab.exec("mypod", ["curl", "-sk", "-o", "/dev/null", "--resolve",
                             f"shop.example.test:443:{EXTERNAL_WEB}", *args,
                             "https://shop.example.test/"],
                   capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.root
def test_flows_tls_fields_for_curl_tls13_and_tls12(lab, tmp_path):
    db = tmp_path / "flows.db"
    with FlowsRun("-p", "mypod", "--tls", "--interval", "0.2", "--sqlite", str(db)) as t:
        _curl(lab)
        _curl(lab, "--tls-max", "1.2", "--http1.1")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and t.peek().count('"cipher"') < 2:
            time.sleep(0.1)
    flows = t.stop().records
    tls = [f["tls"] for f in flows if "tls" in f and f["dport"] == 443]
    modern = [x for x in tls if x.get("version") == "TLS 1.3"]
    legacy = [x for x in tls if x.get("version") == "TLS 1.2"]
    assert modern and legacy, tls
    assert modern[0]["sni"] == "shop.example.test" and "h2" in modern[0]["alpn"]
    assert modern[0]["offered"][0] == "TLS 1.3" and modern[0]["cipher"].startswith("TLS_AES")
    assert legacy[0]["sni"] == "shop.example.test" and "TLS 1.3" not in legacy[0]["offered"]
    assert legacy[0]["alpn"] == ["http/1.1"] and "ECDHE" in legacy[0]["cipher"]
    rows = subprocess.run(["sqlite3", str(db), "select distinct tls_sni, tls_version from "
                           "flows where tls_sni is not null order by tls_version"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert rows == ["shop.example.test|TLS 1.2", "shop.example.test|TLS 1.3"]


@pytest.mark.root
def test_serve_tls_names_the_external_peer(lab):
    with Serve("-p", "mypod", "--tls") as s:
        _curl(lab)
        deadline = time.monotonic() + 30
        edge = None
        while time.monotonic() < deadline:
            edge = s.edge("p/default/mypod->x/shop.example.test:443")
            if edge and edge["detail__connections"] == 1:
                break
            time.sleep(0.2)
        assert edge and edge["detail__connections"] == 1, s.json("/api/graph.json")
        assert edge["detail__bytes_received"] > 0
        names = {n["title"] for n in s.json("/api/graph.json")["nodes"]}
        assert EXTERNAL_WEB not in names
