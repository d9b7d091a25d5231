"""`sansmail-trio who`, `kick` and `status`: the commands that ask the running server,
through the control socket of each of its processes (`_control.py`), and put the
answers together, as ``doveadm who`` and ``doveadm kick`` do for Dovecot.

Each command asks every process whose socket is in ``<data_dir>/run/`` (the server
processes and the queue runner); a socket nobody listens on any more (a process that
died) is skipped. When no process answers, the server is not running: one line, exit 1.
A process that answers with an error or not in time is reported on stderr; the others'
answers are still used, and the exit status is 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Container, Mapping, Sequence
from typing import Any

from sansmail.config import Config
from sansmail.mail.address import AddressError, parse_address
from sansmail_trio._control import ControlError, ask, control_sockets, rfc3339, run_dir

__all__ = ["KICK_HELP", "STATUS_HELP", "WHO_HELP", "kick", "print_table", "status", "who"]

_PROG = "sansmail-trio"

WHO_HELP = f"""\
The live sessions of the running server, in every server process, like doveadm who:
one line per user and service with the number of sessions, the server processes'
pids, the client addresses and when the oldest began. Sessions that have not logged
in (SMTP from other servers, clients before their login) are listed as
"(not logged in)". --json prints every session as one object of a JSON array: its
session id (the <...> on each of its log lines), service, user (null before a login),
client address and port, since (RFC 3339, UTC) and pid.

examples:
  {_PROG} who
  {_PROG} who --json --config /etc/sansmail.toml
  grep "<$({_PROG} who --json | jq -r '.[0].session')>" /var/log/sansmail.log
"""

KICK_HELP = f"""\
End every session of USER, in every server process, like doveadm kick: each client
gets its protocol's closing words (IMAP's and ManageSieve's BYE, POP3's -ERR, SMTP's
421), nothing is deleted or marked as a POP3 QUIT would, and the log has a line
"kicked by the administrator" for each. A session in the middle of an SMTP transaction
or an IMAP command ends when that is done. Prints the sessions ended; exits 1 when USER
had none. A user can log in again at once: change the password (user passwd) or delete
the user (user del) first to keep them out.

examples:
  {_PROG} kick alice@example.test
  {_PROG} user passwd alice@example.test && {_PROG} kick alice@example.test
"""

STATUS_HELP = f"""\
The running server: its version, when it started and for how long, the listeners,
each process with its pid (the master, the server processes and the queue runner),
the live sessions and the messages in the queue. --json prints one JSON object with
the same (times as RFC 3339, UTC; uptime in seconds). Exits 1 with one line when the
server is not running.

examples:
  {_PROG} status
  {_PROG} status --json --config /etc/sansmail.toml
"""

_NOT_LOGGED_IN = "(not logged in)"


def who(config: Config, *, as_json: bool) -> int:
    answers, failed = _ask_all(config, {"command": "who"})
    rows = [row for answer in answers for row in _rows(answer.get("sessions"))]
    rows.sort(key=lambda row: (row["since"], row["session"]))
    if as_json:
        print(json.dumps([{**row, "since": rfc3339(row["since"])} for row in rows]))
        return failed
    groups: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["user"], row["service"]), []).append(row)
    table = [("USER", "#", "SERVICE", "(PIDS)", "(CLIENTS)", "SINCE")]
    for (user, service), members in sorted(
        groups.items(), key=lambda item: (item[0][0] is None, item[0][0] or "", item[0][1])
    ):
        pids = " ".join(str(p) for p in sorted({row["pid"] for row in members}))
        clients = " ".join(dict.fromkeys(str(row["client"]) for row in members))
        since = min(row["since"] for row in members)
        table.append(
            (
                user or _NOT_LOGGED_IN,
                str(len(members)),
                service,
                f"({pids})",
                f"({clients})",
                _local(since),
            )
        )
    print_table(table)
    return failed


def kick(config: Config, user: str) -> int:
    try:
        key = parse_address(user).key
    except AddressError as exc:
        raise ControlError(f"{user!r} is not a valid address: {exc}") from None
    answers, failed = _ask_all(config, {"command": "kick", "user": key})
    kicked = [row for answer in answers for row in _rows(answer.get("kicked"))]
    if not kicked:
        print(f"{_PROG}: kick: {key} has no sessions", file=sys.stderr)
        return 1
    services: dict[str, int] = {}
    for row in kicked:
        services[row["service"]] = services.get(row["service"], 0) + 1
    shown = ", ".join(f"{service} {count}" for service, count in sorted(services.items()))
    many = "session" if len(kicked) == 1 else "sessions"
    print(f"kicked {len(kicked)} {many} of {key} ({shown})")
    for row in kicked:
        print(f"  {row['service']} {_client(row)} pid {row['pid']} session {row['session']}")
    return failed


def status(config: Config, *, as_json: bool) -> int:
    answers, failed = _ask_all(config, {"command": "status"})
    servers = sorted(
        (a for a in answers if a.get("role") == "server"), key=lambda a: a.get("process") or 0
    )
    runners = [a for a in answers if a.get("role") == "queue"]
    started = min(float(a.get("started", time.time())) for a in answers)
    masters = {a.get("master") for a in answers} - {None}
    listeners: dict[str, list[str]] = {}
    for answer in servers:
        for name, addresses in dict(answer.get("listeners") or {}).items():
            known = listeners.setdefault(name, [])
            known.extend(a for a in addresses if a not in known)
    queue = next((a["queue"] for a in runners + servers if "queue" in a), None)
    sessions = sum(int(a.get("sessions", 0)) for a in servers)
    versions = sorted({str(a.get("version")) for a in answers})
    processes = [
        {
            "role": a.get("role"),
            "process": a.get("process"),
            "pid": a.get("pid"),
            "started": rfc3339(float(a.get("started", started))),
            **({"sessions": a["sessions"]} if "sessions" in a else {}),
            **({"queue": a["queue"]} if "queue" in a else {}),
        }
        for a in servers + runners
    ]
    uptime = max(0, int(time.time() - started))
    if as_json:
        print(
            json.dumps(
                {
                    "version": versions[0] if len(versions) == 1 else versions,
                    "started": rfc3339(started),
                    "uptime": uptime,
                    "master": next(iter(masters)) if len(masters) == 1 else None,
                    "processes": processes,
                    "listeners": listeners,
                    "sessions": sessions,
                    "queue": queue,
                }
            )
        )
        return failed
    print(f"sansmail {', '.join(versions)}: running since {_local(started)} (up {_span(uptime)})")
    if len(masters) == 1:
        print(f"master: pid {next(iter(masters))}")
    for answer in servers:
        count = int(answer.get("sessions", 0))
        print(
            f"server process {answer.get('process')}: pid {answer.get('pid')}, "
            f"{count} {'session' if count == 1 else 'sessions'}"
        )
    for answer in runners:
        print(f"queue runner: pid {answer.get('pid')}")
    for name, addresses in listeners.items():
        print(f"listener {name}: {', '.join(addresses)}")
    print(f"sessions: {sessions}")
    print(f"queue: {'unknown' if queue is None else f'{queue} messages'}")
    return failed


def _ask_all(config: Config, request: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Every live process's answer, and the exit status so far (1 when one of them
    failed; its error is on stderr). Raises ControlError when none answers."""
    answers: list[dict[str, Any]] = []
    errors: list[str] = []
    for path in control_sockets(config.data_dir):
        try:
            answer = ask(path, request)
        except ControlError as exc:
            errors.append(str(exc))
            continue
        if answer is not None:
            answers.append(answer)
    if not answers:
        if errors:
            raise ControlError(errors[0])
        raise ControlError(
            f"the server is not running (no process answers in {run_dir(config.data_dir)})"
        )
    command = request.get("command")
    for error in errors:
        print(f"{_PROG}: {command}: {error}", file=sys.stderr)
    return answers, 1 if errors else 0


def _rows(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, dict)]


def _client(row: Mapping[str, Any]) -> str:
    host = str(row["client"])
    return f"[{host}]:{row['port']}" if ":" in host else f"{host}:{row['port']}"


def _local(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _span(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s"


def print_table(rows: Sequence[tuple[str, ...]], *, numeric: Container[int] = ()) -> None:
    """`rows` (the first one the heading) in aligned columns two spaces apart, the
    columns in `numeric` to the right, as doveadm prints its tables."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
