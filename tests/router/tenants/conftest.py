"""Real Redis topologies for the tenant store: a three-node Cluster and a Sentinel-managed master with a replica.

Every process is Debian's ``redis-server`` on free ports (a Sentinel is
``redis-server <conf> --sentinel``; the cluster is joined with
``redis-cli --cluster create``). Tests that use these fixtures are marked
``redis`` like those using the shared ``redis_server``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import OwnProcess, free_port, until_stopped

SERVICE = "tenants"
_FIXTURES = {"redis_cluster", "redis_sentinel", "sentinel_set"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; `make test` installs Debian's redis-server and redis-tools")
    return path


def _wait_ping(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode}")
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer on port {port}")


def _until(what: str, check: object, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Node(OwnProcess):
    """One redis-server process (data node or Sentinel); ``kill``: it vanishes mid-conversation, as a crashed host does."""

    def __init__(self, workdir: Path, *args: str, port: int | None = None, sentinel: bool = False) -> None:
        self.port = port or free_port()
        self.dir = workdir / f"n{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        base = ["--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "no", "--dir", str(self.dir), "--save", "",
                "--appendonly", "no", *self.args]  # fmt: skip
        if self.sentinel:
            conf = self.dir / "sentinel.conf"  # Sentinel rewrites its config: one file of its own
            conf.write_text("\n".join(self.args) + "\n")
            cmd = [_binary("redis-server"), str(conf), "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--protected-mode", "no", "--dir", str(self.dir)]  # fmt: skip
        else:
            cmd = [_binary("redis-server"), *base]
        self.proc = subprocess.Popen(cmd, stdout=open(self.dir / "log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        _wait_ping(self.port, self.proc)

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, **kw)  # type: ignore[arg-type]


class SentinelSet:
    """A master, one replica and one Sentinel (quorum 1, down after 400 ms) for service ``tenants``.

    The URL also names a Sentinel that is not running, first, so every connection
    exercises skipping an unreachable Sentinel.
    """

    def __init__(self, workdir: Path) -> None:
        # the default waits 5 s for more replicas before a full sync; DEBUG SLEEP stands in for a lagging replica
        args = ("--repl-diskless-sync-delay", "0", "--enable-debug-command", "local")
        self.master = Node(workdir, *args)
        self.replica = Node(workdir, *args, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel = Node(workdir, f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1",
                             f"sentinel down-after-milliseconds {SERVICE} 400", f"sentinel failover-timeout {SERVICE} 3000",
                             sentinel=True)  # fmt: skip
        self.dead_sentinel = free_port()
        self.url = f"redis+sentinel://127.0.0.1:{self.dead_sentinel},127.0.0.1:{self.sentinel.port}/{SERVICE}/0"
        self.nodes = {self.master.port: self.master, self.replica.port: self.replica}
        self.wait_ready()

    def master_port(self) -> int:
        _, port = self.sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def current_master(self) -> Node:
        return self.nodes[self.master_port()]

    def wait_ready(self) -> None:
        """The replica is in sync and Sentinel knows it, so a failover has somewhere to go."""
        master = self.current_master()
        others = [n for n in self.nodes.values() if n is not master]

        def ready() -> bool:
            infos = [n.client().info("replication") for n in others]
            replicas = self.sentinel.client().sentinel_slaves(SERVICE)
            return all(i.get("master_link_status") == "up" for i in infos) and any(
                r["master-link-status"] == "ok" and not r["is_sdown"] for r in replicas
            )

        _until("replica in sync and known to Sentinel", ready)
        # and streaming: after a full sync the master holds the stream back until the replica's first ACK (up to 1 s)
        _until("a write acknowledged by the replica", lambda: master.client().set("ready", 1) and master.client().wait(1, 100) >= 1)
        master.client().delete("ready")

    def failover(self) -> tuple[int, float]:
        """``SENTINEL FAILOVER``; returns the old master's port and how long Sentinel took to name the new one."""
        old = self.master_port()
        t0 = time.monotonic()
        self.sentinel.client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        _until("Sentinel to name a new master", lambda: self.master_port() != old)
        return old, time.monotonic() - t0

    def stop(self) -> None:
        for n in (self.sentinel, self.replica, self.master):
            n.stop()


class ClusterSet:
    """Three primaries, no replicas, joined with ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = []
        for _ in range(3):
            port = free_port()
            self.nodes.append(Node(workdir, "--cluster-enabled", "yes", "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                                   "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()), port=port))  # fmt: skip
        subprocess.run([_binary("redis-cli"), "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)  # fmt: skip
        _until("cluster_state:ok on every node", lambda: all(n.client().cluster("info")["cluster_state"] == "ok" for n in self.nodes))
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])  # the third is found from them

    def flush(self) -> None:
        for n in self.nodes:
            n.client().flushall()
            n.client().script_flush()

    def keys_by_node(self) -> dict[int, list[str]]:
        return {n.port: sorted(k.decode() for k in n.client().scan_iter(count=1000)) for n in self.nodes}

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    yield from until_stopped(ClusterSet(tmp_path_factory.mktemp("cluster")))


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A Sentinel set shared by tests that never fail it over (flush before use)."""
    yield from until_stopped(SentinelSet(tmp_path_factory.mktemp("sentinel")))


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A Sentinel set of the test's own, to fail over."""
    yield from until_stopped(SentinelSet(tmp_path))
