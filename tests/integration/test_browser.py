"""The web client in a real headless Chromium (Debian's, driven by playwright), against a real relay.

The browser comes from the system (tests/system-deps.sh installs Debian's
``chromium`` as root); playwright never downloads one. Without it these tests
skip and say why. A screenshot of each page is kept in ``.artifacts/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TIMEOUT, ServerProcess, handshake, ws_port
from .test_tools import E2E_KEY, FWD, relay, wait_online

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
MS = int(TIMEOUT * 1000)

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extras)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (make test installs it as root with apt)")
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, start_server):
    server = start_server("--ws-port", "0")
    context = browser.new_context(accept_downloads=True)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(f"http://127.0.0.1:{ws_port(server)}/", timeout=MS)
    p.server = server  # type: ignore[attr-defined]
    yield p
    context.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_chat_between_a_tab_forwarding_chat_and_a_raw_client(page):
    server: ServerProcess = page.server
    page.fill("#chid", "web")
    page.click("#join")
    page.wait_for_selector("text=joined as web", timeout=MS)
    raw, _ = handshake(server, "carol")  # an nc-style client: broadcasts its bytes
    raw.sock.sendall(b"hello from carol")
    page.wait_for_selector("text=carol: hello from carol", timeout=MS)
    chat = subprocess.Popen(
        [*FWD, "chat", relay(server), "--chid", "alice"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    said = threading.Condition()

    def read() -> None:
        assert chat.stdout is not None
        for text in chat.stdout:
            with said:
                lines.append(text.rstrip("\n"))
                said.notify_all()

    threading.Thread(target=read, daemon=True).start()
    page.wait_for_selector("text=alice joined", timeout=MS)
    assert chat.stdin is not None
    chat.stdin.write("hello from alice\n")
    chat.stdin.flush()
    page.wait_for_selector("text=alice: hello from alice", timeout=MS)
    page.fill("#say", "hi all")
    page.press("#say", "Enter")
    with said:
        assert said.wait_for(lambda: "web: hi all" in lines, TIMEOUT), lines
    # The raw client got the payloads, no headers: alice's line, then the tab's.
    assert raw.recv_exactly(22) == b"hello from alicehi all"
    chat.stdin.close()
    assert chat.wait(TIMEOUT) == 0
    page.wait_for_selector("text=alice left", timeout=MS)
    log = page.inner_text("#log")
    assert (
        log.index("carol joined")
        < log.index("alice joined")
        < log.index("alice: hello from alice")
        < log.index("alice left")
    )
    shot(page, "chat")


def test_a_sealed_file_from_forwarding_send_is_received_in_the_page(page, tmp_path):
    server: ServerProcess = page.server
    src = tmp_path / "photo.bin"
    src.write_bytes(os.urandom(20 << 20))
    page.fill("#key", E2E_KEY)
    page.fill("#recv-as", "tab")
    page.click("#recv-form button")
    wait_online(server, "tab")
    sender = subprocess.Popen(
        [*FWD, "send", relay(server), str(src), "--to", "tab", "--e2e-key", E2E_KEY, "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, err = sender.communicate(timeout=6 * TIMEOUT)
    assert sender.returncode == 0, err  # the page confirmed, sealed, with the right hash
    page.wait_for_selector("#recv-status.ok", timeout=MS)
    with page.expect_download(timeout=MS) as download:
        page.click("#download")
    saved = tmp_path / "saved.bin"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "photo.bin"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    shot(page, "received-file")


def test_a_file_sent_from_the_page_is_received_by_forwarding_recv(page, tmp_path):
    server: ServerProcess = page.server
    src = tmp_path / "from-the-page.bin"
    src.write_bytes(os.urandom(5 << 20))
    out = tmp_path / "got.bin"
    receiver = subprocess.Popen(
        [*FWD, "recv", relay(server), "--chid", "desk", "-o", str(out), "--e2e-key", E2E_KEY, "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_online(server, "desk")
    page.fill("#key", E2E_KEY)
    page.fill("#send-to", "desk")
    page.set_input_files("#file", str(src))
    page.click("#send-form button")
    _, err = receiver.communicate(timeout=6 * TIMEOUT)
    assert receiver.returncode == 0, err
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    page.wait_for_selector("#send-status.ok", timeout=MS)
    assert "desk has from-the-page.bin" in page.inner_text("#send-status")
    shot(page, "sent-file")


@pytest.mark.parametrize("mode", ["raw", "framed"])
def test_a_page_that_closes_its_session_sees_a_clean_close(page, mode):
    """The relay answers the page's close frame: wasClean, code 1000; the library does not report "lost"."""
    result = page.evaluate(
        """async (mode) => {
            const { connect } = await import("/forwarding.js");
            const ch = await connect(undefined, { chid: "closing-" + mode, mode });
            const closed = new Promise((resolve) =>
                ch.ws.addEventListener("close", (e) => resolve({ code: e.code, clean: e.wasClean })));
            await ch.close();
            const event = await closed;
            return { ...event, reported: ch.closed && ch.closed.code };
        }""",
        mode,
    )
    assert result == {"code": 1000, "clean": True, "reported": "closed"}, result
    assert 'reason="client_closed"' in page.server.closed_line(f"closing-{mode}")
