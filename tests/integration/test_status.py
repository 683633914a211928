"""The status page and /api/sessions on the metrics listener, with a real relay (and a real browser)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from .conftest import TIMEOUT, handshake, metrics_port
from .test_browser import MS, browser, shot  # noqa: F401  (browser: the module's Chromium fixture)


def get(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_api_sessions_shows_live_sessions_totals_and_recent_closes(start_server):
    server = start_server("--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    rx, _ = handshake(server, "rx", ["tx"])
    tx, _ = handshake(server, "tx", ["rx"])
    tx.sock.sendall(b"x" * 1000)
    assert rx.recv_exactly(1000) == b"x" * 1000
    gone, _ = handshake(server, "gone")
    gone.close()
    server.wait_for_log('session closed chid="gone"')
    code, headers, body = get(port, "/api/sessions")
    assert code == 200 and headers["Content-Type"] == "application/json"
    snap = json.loads(body)
    assert snap["sessions"] == 2 and snap["shown"] == 2 and snap["draining"] is False
    rows = {r["chid"]: r for r in snap["rows"]}
    assert rows["tx"]["in"] == 1000 and rows["rx"]["out"] == 1000 and rows["tx"]["recvers"] == ["rx"]
    assert (
        rows["tx"]["transport"] == "tcp" and rows["tx"]["mode"] == "raw" and rows["tx"]["peer"].startswith("127.0.0.1:")
    )
    assert snap["bytes_in"] == 1000 and snap["closed"] == {"client_closed": 1}
    assert [c["chid"] for c in snap["recent_closes"]] == ["gone"]


def test_a_status_token_guards_the_page_and_the_api_but_not_metrics(start_server):
    server = start_server("--metrics", "127.0.0.1:0", "--status-token", "s3cret")
    port = metrics_port(server)
    assert get(port, "/api/sessions")[0] == 401
    assert get(port, "/status")[0] == 401
    assert get(port, "/api/sessions", token="wrong")[0] == 401
    assert get(port, "/api/sessions", token="s3cret")[0] == 200
    assert get(port, "/status?token=s3cret")[0] == 200
    assert get(port, "/metrics")[0] == 200


def test_the_status_page_shows_live_sessions_in_a_browser(browser, start_server):  # noqa: F811
    server = start_server("--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    keep = [handshake(server, "alice", ["bob"]), handshake(server, "bob", ["alice"])]
    keep[0][0].sock.sendall(b"y" * 5000)
    assert keep[1][0].recv_exactly(5000)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{port}/status", timeout=MS)
    page.wait_for_selector("#rows td:text-is('alice')", timeout=MS)
    page.wait_for_selector("#rows td:text-is('bob')", timeout=MS)
    assert "2 sessions" in page.inner_text("#totals")
    shot(page, "status")
    page.close()
    assert not errors, errors


@pytest.mark.parametrize("path", ["/", "/metricsx", "/status/../etc"])
def test_other_paths_get_404(start_server, path):
    server = start_server("--metrics", "127.0.0.1:0")
    assert get(metrics_port(server), path)[0] == 404
