"""The control socket: how `sansmail-trio who`, `kick` and `status` reach the processes
of a running server, as ``doveadm`` reaches Dovecot's through its sockets.

Theory of operation:

* Each process of ``sansmail-trio serve`` listens on a Unix socket of its own in
  ``<data_dir>/run/``: ``control-1.sock`` to ``control-N.sock`` for the server processes
  (``processes = N``), ``control-queue.sock`` for the queue runner. A replacement of a
  process that died takes over its name; a socket file left by a crash is replaced at
  start, and the others' stale files answer nothing (connect(2) is refused), which the
  command takes for a process that is gone.
* Only root and the server's own user may ask: the directory is 0700 and the server's
  (after the privilege drop, `_privileges.py`), so nobody else can even reach the
  sockets; and each connection's peer is checked again with ``SO_PEERCRED`` (its uid
  must be 0 or ours), since a directory's mode is easy to loosen by hand.
* One exchange per connection: a request is one JSON object on one line (at most
  `REQUEST_MAX` octets), the answer one JSON object on one line, then the server
  closes. The whole exchange must end within `CONTROL_TIMEOUT` seconds, and at most
  `MAX_CLIENTS` run at once, so a stuck client costs nothing but its own socket.
* The requests: ``{"command": "status"}`` (this process: role, number, pid, its
  parent's, version, start time, listeners, live sessions, and the queue's size where
  the queue runner is), ``{"command": "who"}`` (a row per live session of this process,
  `_session.LiveSession`), ``{"command": "kick", "user": KEY}`` (ends that user's
  sessions here, each with its protocol's closing words and a log line, and returns
  their rows). The command asks every process and puts the answers together
  (`_cli_admin.py`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import pathlib
import socket
import struct
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Final

import attrs
import trio

from sansmail import __version__
from sansmail_trio._log import get_logger
from sansmail_trio._session import LiveSession

__all__ = [
    "CONTROL_TIMEOUT",
    "QUEUE_SOCKET",
    "REQUEST_MAX",
    "ControlError",
    "ProcessInfo",
    "ask",
    "control_sockets",
    "rfc3339",
    "run_dir",
    "serve_control",
    "server_socket_name",
]

log = get_logger("master")

#: Seconds one exchange may take, on either side.
CONTROL_TIMEOUT: Final = 10.0
#: Octets of a request (one JSON line); an answer may be far larger (a `who` of
#: thousands of sessions), up to `ANSWER_MAX`.
REQUEST_MAX: Final = 4096
ANSWER_MAX: Final = 64 * 1024 * 1024
#: Control connections served at once by one process.
MAX_CLIENTS: Final = 16
#: The queue runner's socket name; the servers' are `server_socket_name(n)`.
QUEUE_SOCKET: Final = "control-queue.sock"
#: A sockaddr_un's path holds 108 octets with its NUL (unix(7)).
_SUN_PATH_MAX: Final = 107
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class ControlError(Exception):
    """A control socket cannot be reached or answered badly: str() says why."""


def run_dir(data_dir: pathlib.Path) -> pathlib.Path:
    """Where the control sockets live."""
    return data_dir / "run"


def server_socket_name(number: int) -> str:
    """The socket of server process `number` (from 1)."""
    return f"control-{number}.sock"


@attrs.define
class ProcessInfo:
    """What one process tells about itself (see the module docstring)."""

    #: "server" or "queue".
    role: str
    #: The server process's number from 1 (None: the queue runner).
    number: int | None
    #: Wall-clock seconds since the epoch when it started.
    started: float
    #: Listener name: addresses bound (empty for the queue runner).
    listeners: Mapping[str, list[tuple[str, int]]]
    #: Its live sessions (the registry's own set, read at each request).
    sessions: Collection[LiveSession] = ()
    #: Counts the queue's messages, blocking (None: no queue runner in this process).
    queue_size: Callable[[], int] | None = None
    #: Whether a master process (`_run.py`) started it.
    supervised: bool = False


# --- the server side ----------------------------------------------------------------


async def serve_control(
    data_dir: pathlib.Path,
    name: str,
    info: ProcessInfo,
    *,
    task_status: trio.TaskStatus[pathlib.Path | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer on ``<data_dir>/run/<name>`` until cancelled; `task_status` gets the
    socket's path once it listens (None: it could not be made, which is logged; the
    server runs on without `who`, `kick` and `status` reaching this process)."""
    directory = run_dir(data_dir)
    try:
        sock, path, identity = await trio.to_thread.run_sync(_listen, directory, name)
    except OSError as exc:
        log.warning(
            "control socket %s: %s: who, kick and status will not reach this process",
            directory / name,
            exc.strerror or exc,
        )
        task_status.started(None)
        return
    limit = trio.Semaphore(MAX_CLIENTS)
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with listener, trio.open_nursery() as nursery:
            task_status.started(directory / name)
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # trio passes these on; out of serve_control they would take the
                    # process, and its sessions, down. Out of file descriptors: wait for
                    # some to be released, as the listeners do (`_serve.py`).
                    if exc.errno in _RESOURCE_ERRNOS:
                        log.error("control socket: accept failed (%s); sleeping", exc)
                        await trio.sleep(0.1)
                        continue
                    log.error("control socket: accept failed (%s): no longer served", exc)
                    return
                await limit.acquire()
                nursery.start_soon(_serve_one, stream, info, limit)
    finally:
        # Ours alone: a replacement that bound the name anew keeps its own file.
        with contextlib.suppress(OSError):
            if os.stat(path, follow_symlinks=False).st_ino == identity:
                os.unlink(path)


def _listen(directory: pathlib.Path, name: str) -> tuple[socket.socket, str, int]:
    """Blocking: make the directory (0700) and bind the socket, replacing a stale file;
    the listening socket, the file's path and its inode (to remove it at the end only
    if it is still ours)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Through a link (run -> /run/sansmail, say): the directory the sockets go in is the
    # one that must be ours, and the one chmod() tightens.
    info = directory.stat()
    if info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"{directory} belongs to uid {info.st_uid}, not to us")
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(directory, name) as path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by a process that died, or by its predecessor
            sock.bind(path)
            sock.listen(MAX_CLIENTS)
            named = directory / name
            return sock, str(named), named.lstat().st_ino
    except OSError:
        sock.close()
        raise


@contextlib.contextmanager
def _short_path(directory: pathlib.Path, name: str) -> Iterator[str]:
    """A path to ``directory/name`` that fits a sockaddr_un: the path itself, or, when
    data_dir is deep, the same file through ``/proc/self/fd`` of the directory held
    open (Linux)."""
    path = os.fsencode(directory / name)
    if len(path) <= _SUN_PATH_MAX:
        yield os.fsdecode(path)
        return
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


async def _serve_one(stream: trio.SocketStream, info: ProcessInfo, limit: trio.Semaphore) -> None:
    try:
        with trio.move_on_after(CONTROL_TIMEOUT):
            async with stream:
                try:
                    answer = await _exchange(stream, info)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the client went away: nothing to answer
                except Exception:  # a bug here must never take the server's nursery down
                    log.exception("control socket: internal error")
                    # Said, not just closed on: `ask` takes a close without a word for a
                    # process on its way out, and the commands would skip this one.
                    answer = {"error": "internal error (see the server's log)"}
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(_dump(answer))
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away: nothing to answer
    except Exception:
        log.exception("control socket: internal error")
    finally:
        limit.release()


async def _exchange(stream: trio.SocketStream, info: ProcessInfo) -> dict[str, Any]:
    """The answer to the one request on `stream` (see the module docstring)."""
    # Read first, even from a peer to be refused: closing on a request still unread
    # would cut its sender off before it reads why (EPIPE, or a reset).
    line = await _read_line(stream, REQUEST_MAX)
    pid, uid, _gid = _PEERCRED.unpack(
        stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    ours = os.geteuid()
    if uid not in {0, ours}:
        log.warning(
            "control socket: refused pid %d of uid %d: only root and uid %d", pid, uid, ours
        )
        return {"error": f"permission denied: only root and uid {ours} may ask this server"}
    if line is None:
        return {"error": f"a request is one JSON line of at most {REQUEST_MAX} octets"}
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json goes
        return {"error": "a request is one JSON object"}
    if not isinstance(request, dict):
        return {"error": "a request is one JSON object"}
    command = request.get("command")
    if command == "status":
        return await _status(info)
    if command == "who":
        return {"sessions": [_row(live) for live in list(info.sessions)]}
    if command == "kick":
        user = request.get("user")
        if not isinstance(user, str) or not user:
            return {"error": "kick needs a user"}
        return {"kicked": _kick(info.sessions, user)}
    return {"error": f"unknown command {command!r}"}


async def _read_line(stream: trio.SocketStream, limit: int) -> bytes | None:
    """One line of at most `limit` octets (without its LF), or None if longer or
    unfinished when the client stopped sending."""
    data = bytearray()
    while b"\n" not in data:
        chunk = await stream.receive_some(limit + 1 - len(data))
        if not chunk:
            return None
        data += chunk
        if len(data) > limit and b"\n" not in data:
            return None
    line, _, _ = bytes(data).partition(b"\n")
    return line


async def _status(info: ProcessInfo) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "role": info.role,
        "process": info.number,
        "pid": os.getpid(),
        "master": os.getppid() if info.supervised else None,
        "version": __version__,
        "started": info.started,
        "listeners": {
            name: [_address(host, port) for host, port in addresses]
            for name, addresses in info.listeners.items()
        },
    }
    if info.role == "server":
        answer["sessions"] = len(info.sessions)
    if info.queue_size is not None:
        try:
            answer["queue"] = await trio.to_thread.run_sync(info.queue_size)
        except OSError as exc:
            answer["queue_error"] = exc.strerror or str(exc)
    return answer


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _row(live: LiveSession) -> dict[str, Any]:
    return {
        "session": live.id,
        "service": live.service,
        "user": live.user,
        "client": live.client[0],
        "port": live.client[1],
        "since": live.since,
        "pid": os.getpid(),
    }


def _kick(sessions: Collection[LiveSession], user: str) -> list[dict[str, Any]]:
    """End `user`'s sessions (the user store's key); their rows."""
    # As keys are made (`Address.key`): casefold() would also take straße for strasse.
    wanted = user.lower()
    kicked = []
    for live in list(sessions):
        if live.user is not None and live.user.lower() == wanted:
            kicked.append(_row(live))
            live.kick()
    return kicked


def _dump(answer: Mapping[str, Any]) -> bytes:
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# --- the command's side (blocking) ------------------------------------------------------


def control_sockets(data_dir: pathlib.Path) -> list[pathlib.Path]:
    """The control sockets in data_dir, servers first by number, then the queue
    runner's; raises ControlError when the directory cannot be read."""
    directory = run_dir(data_dir)
    try:
        names = [entry.name for entry in os.scandir(directory)]
    except FileNotFoundError:
        return []
    except PermissionError:
        raise ControlError(
            f"{directory}: permission denied: run it as root or as the server's user"
        ) from None
    except OSError as exc:
        raise ControlError(f"{directory}: {exc.strerror or exc}") from None

    def order(name: str) -> tuple[int, str]:
        number = name.removeprefix("control-").removesuffix(".sock")
        return (int(number), name) if number.isdigit() else (1 << 30, name)

    found = [n for n in names if n.startswith("control-") and n.endswith(".sock")]
    return [directory / name for name in sorted(found, key=order)]


def ask(path: pathlib.Path, request: Mapping[str, Any]) -> dict[str, Any] | None:
    """Send `request` to the process listening at `path`; its answer, or None when no
    process listens there (a stale socket file). Raises ControlError when one answers
    with an error, or not in time, or cannot be reached for lack of permission."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONTROL_TIMEOUT)
    try:
        with sock, _short_path(path.parent, path.name) as address:
            try:
                sock.connect(address)
            except (ConnectionRefusedError, FileNotFoundError):
                return None
            except PermissionError:
                raise ControlError(
                    f"{path}: permission denied: run it as root or as the server's user"
                ) from None
            sock.sendall(_dump(request))
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > ANSWER_MAX:
                    raise ControlError(f"{path}: answer over {ANSWER_MAX} octets")
    except TimeoutError:
        raise ControlError(f"{path}: no answer within {CONTROL_TIMEOUT:g} s") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    if not data.endswith(b"\n"):
        # Closed without a word: a process on its way out.
        return None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: an answer that is not a JSON object")
    if "error" in answer:
        raise ControlError(f"{path}: {answer['error']}")
    return answer


def rfc3339(stamp: float) -> str:
    """Wall-clock seconds as RFC 3339 UTC, to the second (JSON output)."""
    moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")
