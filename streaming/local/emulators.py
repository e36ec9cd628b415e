"""Start, stop and inspect the local Pub/Sub, Bigtable and Cloud Storage emulators.

Pub/Sub and Bigtable run as ``gcloud beta emulators <name> start`` (gcloud spawns a java child
for Pub/Sub and the ``cbtemulator`` binary for Bigtable); Cloud Storage runs as
``python -m gcp_storage_emulator start --in-memory`` (the ``gcp-storage-emulator`` package, a
dev dependency), which google-cloud-storage and Beam's ``gs://`` file system reach through
``STORAGE_EMULATOR_HOST``. Each runs in its own process group, bound to 127.0.0.1 on a free
port. A state directory (``FRAUDSTREAM_EMULATOR_DIR``, else ``.emulators/``
in the working directory) holds ``<name>.json`` (pid, host, port, started_at), ``<name>.log``
and a ``<name>.lock`` that serialises start/stop across processes. The process id recorded is
the group id, so stopping signals the whole tree. Emulators outlive the process that started
them (``fraudstream emulators up`` then ``down``); call :func:`stop` or :func:`down` to end them.

The module imports nothing heavy at load time: ``grpc`` is imported only to probe readiness.
Process groups are read with ``psutil``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

DEFAULT_PROJECT = "demo-project"  # Beam rejects project ids shorter than 6 characters.
DEFAULT_BIGTABLE_INSTANCE = "demo-instance"
HOST = "127.0.0.1"
NAMES = ("pubsub", "bigtable", "gcs")
STATE_DIR_ENV = "FRAUDSTREAM_EMULATOR_DIR"
DEFAULT_STATE_DIR = ".emulators"

_ENV_VARS = {
    "pubsub": "PUBSUB_EMULATOR_HOST",
    "bigtable": "BIGTABLE_EMULATOR_HOST",
    "gcs": "STORAGE_EMULATOR_HOST",
}
_GCLOUD = ("pubsub", "bigtable")  # started through gcloud; gcs is a Python package
# A cheap real RPC per emulator; each request message is just ``{parent: <resource>}``.
_PROBES = {
    "pubsub": ("/google.pubsub.v1.Publisher/ListTopics", f"projects/{DEFAULT_PROJECT}"),
    "bigtable": (
        "/google.bigtable.admin.v2.BigtableTableAdmin/ListTables",
        f"projects/{DEFAULT_PROJECT}/instances/{DEFAULT_BIGTABLE_INSTANCE}",
    ),
}
_LOG_MARKER = "=== fraudstream: starting "
_STOP_GRACE_S = 10.0
_ENDED = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # started by this process, reaped on stop


class EmulatorError(RuntimeError):
    """An emulator failed to start or to answer; the message ends with its log tail."""


@dataclass(frozen=True)
class EmulatorInfo:
    """A running emulator: ``pid`` is the gcloud process and the id of its process group."""

    name: str
    host: str
    port: int
    pid: int

    @property
    def address(self) -> str:
        """``host:port``, the value of the emulator's environment variable."""
        return f"{self.host}:{self.port}"

    @property
    def env_var(self) -> str:
        """``PUBSUB_EMULATOR_HOST`` or ``BIGTABLE_EMULATOR_HOST``."""
        return _ENV_VARS[self.name]


# --------------------------------------------------------------------------- availability


def gcloud_available(names: Iterable[str] = NAMES) -> str | None:
    """Return None if the emulators in ``names`` can be started, else a human reason."""
    names = tuple(names)
    for name in names:
        _check_name(name)
    if "gcs" in names and importlib.util.find_spec("gcp_storage_emulator") is None:
        return (
            "the gcp-storage-emulator package is not installed (pip install gcp-storage-emulator)"
        )
    names = tuple(n for n in names if n in _GCLOUD)
    if not names:
        return None
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return "gcloud not found on PATH (install the Google Cloud SDK)"
    root = Path(os.path.realpath(gcloud)).parent.parent
    if not (root / "lib" / "surface").is_dir():
        return None  # Unknown SDK layout (a wrapper script?): let start() report any problem.
    if not (root / "lib" / "surface" / "beta").is_dir():
        return "the gcloud beta component is not installed (gcloud components install beta)"
    for name in names:
        _check_name(name)
        component = f"{name}-emulator"
        if not (root / "platform" / component).is_dir():
            return (
                f"the {name} emulator component is not installed "
                f"(gcloud components install {component})"
            )
        if name == "pubsub" and shutil.which("java") is None:
            return "java not found on PATH (the Pub/Sub emulator needs a Java 11+ runtime)"
    return None


# --------------------------------------------------------------------------- public API


def start(
    name: str, state_dir: Path | None = None, timeout: float = 90.0, *, port: int | None = None
) -> EmulatorInfo:
    """Start emulator ``name`` and wait until it answers a real RPC.

    Returns the running one unchanged if the state file names a live emulator. ``port`` pins
    the port (default: a free one). Raises EmulatorError, with the log tail, if the process
    exits or does not answer within ``timeout`` seconds; nothing is left running then.
    """
    _check_name(name)
    directory = resolve_state_dir(state_dir)
    with _locked(directory, name):
        return _current(directory, name) or _start_locked(name, directory, timeout, port)


def stop(name: str, state_dir: Path | None = None) -> bool:
    """Stop emulator ``name`` (SIGTERM to its group, then SIGKILL); True if one was running.

    Idempotent: a missing or stale state file just gets cleaned up. The log file is kept.
    """
    _check_name(name)
    directory = resolve_state_dir(state_dir)
    with _locked(directory, name):
        return _stop_locked(name, directory)


def restart(name: str, state_dir: Path | None = None, timeout: float = 90.0) -> EmulatorInfo:
    """Stop emulator ``name`` and start it again on the port its state file records.

    Works after a crash too (stale state file); with no state file it starts on a new port.
    The Bigtable emulator keeps data in memory only: tables and rows are gone afterwards.
    """
    _check_name(name)
    directory = resolve_state_dir(state_dir)
    with _locked(directory, name):
        previous = _read_state(directory, name)
        port = previous.port if previous else None
        _stop_locked(name, directory)
        if port is not None:
            _wait_port_free(port, timeout=min(timeout, 15.0))
        return _start_locked(name, directory, timeout, port)


def status(state_dir: Path | None = None) -> dict[str, EmulatorInfo | None]:
    """Map each emulator name to its running EmulatorInfo, or None; removes stale state files."""
    directory = resolve_state_dir(state_dir)
    return {name: _current(directory, name) for name in NAMES}


def up(
    names: Iterable[str] = NAMES, state_dir: Path | None = None, timeout: float = 90.0
) -> dict[str, EmulatorInfo]:
    """Start the emulators in ``names`` concurrently; see :func:`start`.

    If one fails its error is raised and the others are left running (``down`` stops them).
    """
    names = tuple(names)
    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        futures = {name: pool.submit(start, name, state_dir, timeout) for name in names}
    return {name: future.result() for name, future in futures.items()}


def down(names: Iterable[str] = NAMES, state_dir: Path | None = None) -> dict[str, bool]:
    """Stop the emulators in ``names``; maps each name to whether one was running."""
    return {name: stop(name, state_dir) for name in names}


@contextlib.contextmanager
def running(name: str, state_dir: Path) -> Iterator[EmulatorInfo]:
    """Emulator ``name`` started in ``state_dir`` with the client libraries pointed at it
    (``os.environ``) for the block; stopped and the environment restored after it."""
    info = start(name, state_dir)
    env = env_for({name: info})
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield info
    finally:
        stop(name, state_dir)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def env_for(infos: dict[str, EmulatorInfo]) -> dict[str, str]:
    """Environment variables that point the Google client libraries at ``infos``
    (google-cloud-storage wants a URL: ``http://host:port``)."""
    env = {
        info.env_var: f"http://{info.address}" if info.name == "gcs" else info.address
        for info in infos.values()
    }
    env["PUBSUB_PROJECT_ID"] = DEFAULT_PROJECT
    return env


def resolve_state_dir(state_dir: Path | None = None) -> Path:
    """The state directory: the argument, else $FRAUDSTREAM_EMULATOR_DIR, else ./.emulators."""
    chosen = state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(chosen).absolute()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- internals


def _check_name(name: str) -> None:
    if name not in _ENV_VARS:
        raise ValueError(f"unknown emulator {name!r}; expected one of {NAMES}")


def _state_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.json"


def _log_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.log"


@contextlib.contextmanager
def _locked(directory: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<name>.lock`` so concurrent start/stop calls serialise."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(directory: Path, name: str) -> EmulatorInfo | None:
    try:
        data = json.loads(_state_file(directory, name).read_text())
        return EmulatorInfo(name, str(data["host"]), int(data["port"]), int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(directory: Path, info: EmulatorInfo) -> None:
    data = {
        "name": info.name,
        "pid": info.pid,
        "host": info.host,
        "port": info.port,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "log": str(_log_file(directory, info.name)),
    }
    tmp = _state_file(directory, info.name).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(_state_file(directory, info.name))


def _remove_state(directory: Path, name: str) -> None:
    _state_file(directory, name).unlink(missing_ok=True)
    shutil.rmtree(directory / f"{name}-data", ignore_errors=True)


def _current(directory: Path, name: str) -> EmulatorInfo | None:
    """The emulator named by the state file if its process group lives; else clean up, None."""
    info = _read_state(directory, name)
    if info is not None and _is_emulator_group(info.pid):
        return info
    if _state_file(directory, name).exists():
        _remove_state(directory, name)
    return None


def _group_members(pgid: int) -> list[psutil.Process]:
    """The processes of group ``pgid`` that still run (zombies excluded)."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            in_group = os.getpgid(process.pid) == pgid
        except (ProcessLookupError, PermissionError):  # exited meanwhile, or not ours to see
            continue
        if in_group and process.info["status"] not in _ENDED:
            members.append(process)
    return members


def _group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` runs (zombies excluded)."""
    return bool(_group_members(pgid))


def _is_emulator_group(pgid: int) -> bool:
    """Alive, and not a reused pid: a member's command line names an emulator."""
    return any(_looks_like_emulator(process) for process in _group_members(pgid))


def _looks_like_emulator(process: psutil.Process) -> bool:
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # empty while it execs: give it the benefit of the doubt
    return not cmdline or any("emulator" in part for part in cmdline)


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it is our exited child; False while our child still runs."""
    child = _CHILDREN.get(pid)
    if child is None:
        return True  # not started by this process: its parent (or init) reaps it
    if child.poll() is None:
        return False
    del _CHILDREN[pid]
    return True


def _kill_group(pgid: int) -> None:
    """SIGTERM the emulator, then its gcloud parent (the group), then SIGKILL what is left."""
    # The emulator (java / cbtemulator) goes first: gcloud then reaps it and exits by itself, so
    # no orphaned zombie is left to an init that may be slow or a test runner that never reaps.
    children = [process for process in _group_members(pgid) if process.pid != pgid]
    for process in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()  # SIGTERM, unless the pid was reused meanwhile
    if not (children and _wait_group_gone(pgid, _STOP_GRACE_S)):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            if _wait_group_gone(pgid, 5.0):
                break


def _wait_group_gone(pgid: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        if _reap(pgid) and not _group_alive(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _stop_locked(name: str, directory: Path) -> bool:
    info = _read_state(directory, name)
    running = info is not None and _is_emulator_group(info.pid)
    if info is not None:
        if running:
            _kill_group(info.pid)
        _reap(info.pid)  # also after a crash, when the leader we started is a zombie
    _remove_state(directory, name)
    return running


def _command(name: str, port: int, directory: Path) -> list[str]:
    if name == "gcs":
        return [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", HOST,
                "--port", str(port), "--in-memory"]  # fmt: skip
    base = ["gcloud", "beta", "emulators", name, "start", f"--host-port={HOST}:{port}"]
    if name == "pubsub":
        data_dir = directory / "pubsub-data"
        data_dir.mkdir(parents=True, exist_ok=True)  # gcloud writes env.yaml there
        base += [f"--project={DEFAULT_PROJECT}", f"--data-dir={data_dir}"]
    return base


def _start_locked(name: str, directory: Path, timeout: float, port: int | None) -> EmulatorInfo:
    info = _launch(name, directory, port if port is not None else free_port())
    try:
        _wait_ready(info, directory, timeout)
    except BaseException as exc:
        _stop_locked(name, directory)
        lost_race = isinstance(exc, EmulatorError) and "already in use" in str(exc).lower()
        if port is None and lost_race:  # the free port was taken meanwhile: one more try
            return _start_locked(name, directory, timeout, free_port())
        raise
    return info


def _launch(name: str, directory: Path, port: int) -> EmulatorInfo:
    log_path = _log_file(directory, name)
    env = dict(os.environ)
    env.update(
        CLOUDSDK_CORE_DISABLE_PROMPTS="1", CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1"
    )
    with open(log_path, "ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"{_LOG_MARKER}{name} on {HOST}:{port} at {stamp}\n".encode())
        log.flush()
        child = subprocess.Popen(
            _command(name, port, directory),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=env,
            start_new_session=True,  # own process group: stop() signals the whole tree
        )
    _CHILDREN[child.pid] = child
    info = EmulatorInfo(name, HOST, port, child.pid)
    _write_state(directory, info)
    return info


def _wait_ready(info: EmulatorInfo, directory: Path, timeout: float) -> None:
    """Poll with a real RPC until the emulator answers; raise EmulatorError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        code = _CHILDREN[info.pid].poll()  # _launch registered it
        if code is not None:
            problem = f"exited (code {code}) before answering"
        elif "already in use" in _log_since_start(directory, info.name).lower():
            problem = "could not bind its port (already in use)"  # the JVM would hang on
        elif time.monotonic() >= deadline:
            problem = f"did not answer within {timeout:g} s"
        elif _answers(info, min(2.0, deadline - time.monotonic())):
            return
        else:
            time.sleep(0.2)
            continue
        raise EmulatorError(
            f"the {info.name} emulator on {info.address} {problem}\n"
            f"{_log_tail(directory, info.name)}"
        )


def _answers(info: EmulatorInfo, timeout: float) -> bool:
    """True if the emulator answers its probe RPC with anything but 'unavailable'."""
    if info.name == "gcs":
        return _answers_http(info, timeout)
    import grpc  # deferred, with numpy (feast_wire): keeps this module fast to import

    from streaming.store.bigtable.feast_wire import varint

    method, parent = _PROBES[info.name]
    request = b"\x0a" + varint(len(parent.encode())) + parent.encode()  # field 1: parent
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(info.address, options=options) as channel:
        try:
            channel.unary_unary(method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return True


def _answers_http(info: EmulatorInfo, timeout: float) -> bool:
    """True if the storage emulator lists the buckets of the default project."""
    import urllib.error
    import urllib.request

    url = f"http://{info.address}/storage/v1/b?project={DEFAULT_PROJECT}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_port_free(port: int, timeout: float) -> None:
    """Wait until 127.0.0.1:``port`` can be bound again (the old listener has closed)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise EmulatorError(f"port {HOST}:{port} is still in use") from None
        time.sleep(0.1)


def _log_since_start(directory: Path, name: str) -> str:
    """The emulator's log from its latest start on ('' if there is none)."""
    try:
        text = _log_file(directory, name).read_text(errors="replace")
    except OSError:
        return ""
    return text[max(text.rfind(_LOG_MARKER), 0) :]


def _log_tail(directory: Path, name: str, lines: int = 40) -> str:
    """The last ``lines`` lines of the emulator's log since its latest start."""
    tail = "\n".join(_log_since_start(directory, name).splitlines()[-lines:])
    return f"--- last lines of {_log_file(directory, name)} ---\n{tail}"
