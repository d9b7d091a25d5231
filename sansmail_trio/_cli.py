"""The `sansmail-trio` command: argument parsing and the small administrative commands.

Each command loads the configuration the same way (`--config FILE`, else ./sansmail.toml,
else the embedded default), so `user add` writes to the same data_dir that `serve` reads.
Bad input of any kind ends in one clear line on stderr and exit status 1, never a
traceback; argparse's usage errors keep their exit status 2.

`user add/passwd/del`, `newaliases` and `reload` are in force in every process of a
running server when they exit 0: each announces its change through
``<data_dir>/generations`` (`sansmail.storage.generations`) after writing it, and the
servers' stores look at that before each lookup.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import pathlib
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from sansmail import __version__
from sansmail.config import (
    DEFAULT_CONFIG_TOML,
    Config,
    ConfigError,
    load_config,
    parse_size,
    warnings,
)
from sansmail.mail.address import (
    Address,
    AddressError,
    MailboxId,
    canonical_domain,
    parse_address,
)
from sansmail.mail.aliases import role_account_problems
from sansmail.mail.envelope import check_queue_id
from sansmail.mail.sieve import SieveError
from sansmail.mail.sieve import parse_bytes as parse_sieve
from sansmail.mail.sieve._parser import DEFAULT_MAX_SIZE as SIEVE_MAX_SIZE
from sansmail.storage.aliasfile import Aliases, AliasSource
from sansmail.storage.dkimkeys import KeyExistsError, key_path, write_key
from sansmail.storage.generations import Counter, bump
from sansmail.storage.maildir import MaildirStore, recalculate_usage
from sansmail.storage.queue import (
    Queue,
    QueueStore,
    UnknownQueueIdError,
    format_mailq,
    mailq_json_lines,
)
from sansmail.storage.sieve import (
    SieveQuota,
    SieveQuotaError,
    SieveScripts,
    SieveStore,
    SieveStoreError,
    valid_script_name,
)
from sansmail.storage.users import UserError, Users, UserStore
from sansmail_trio import _cli_admin as admin
from sansmail_trio import _cli_mailbox, _cli_storage
from sansmail_trio._control import ControlError
from sansmail_trio._privileges import PrivilegeError, become, claim, resolve, resolve_uid
from sansmail_trio._tls import tls_files_problem

if TYPE_CHECKING:
    from sansmail.storage.pg import Database

__all__ = ["main"]

PROG = "sansmail-trio"

_LDH_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\Z")


class CommandError(Exception):
    """A user error: str() is the one line to print."""


# --- help texts -------------------------------------------------------------------------

_MAIN_HELP = f"""\
sansmail: a mail server: SMTP, submission, POP3, IMAP and ManageSieve, with metrics
and client autoconfiguration.

Configuration: --config FILE, else ./sansmail.toml when it exists, else the embedded
default (domain "localhost", data in ./sansmail-data, listeners on 127.0.0.1 ports
2525 smtp, 2587 submission, 2465 submissions, 2110 pop3, 2995 pop3s, 2143 imap,
2993 imaps, 2190 managesieve, 2980 metrics). --config may come before or after the
command.

Where mail lives: each user's mailbox is a Maildir at
<data_dir>/mail/<domain>/<local-part>/ (new/, cur/, tmp/); users are kept in
<data_dir>/users.json; the outbound queue is <data_dir>/queue/.

examples:
  {PROG} check-config --config /etc/sansmail.toml
  printf '%s\\n' 'secret' | {PROG} user add alice@example.test --password-stdin
  {PROG} serve --config /etc/sansmail.toml
"""

_SERVE_HELP = f"""\
Run every listener of the configuration until SIGINT or SIGTERM. The configuration is
checked first; any problem is printed as file:line: key: message and nothing is started.
Services not built yet in this version are logged and skipped, and so is each key that
is accepted but not in force yet (the warnings of check-config). The first signal stops
accepting and lets transactions in flight finish (smtp.shutdown_grace); a second one
stops at once. `{PROG} user add/passwd/del`, `newaliases` and `reload` are in force in
every server process by the time they exit, without a restart.

Started as root with mail_owner set, it binds the listeners, then runs as that user
(its group and groups too) and gives it data_dir; as root without mail_owner it warns.
Run as root, the commands that write in data_dir switch to mail_owner first. See
contrib/ for a systemd unit.

examples:
  {PROG} serve                       # ./sansmail.toml, or the embedded default
  {PROG} serve --config /etc/sansmail.toml
"""

_CHECK_HELP = f"""\
Validate the configuration without starting anything: print each problem as
file:line: key: message and exit 1, or print warnings (things that work but may not be
what you want) and one "config OK" line, and exit 0.

The embedded default configuration, used when there is no file, is:

{DEFAULT_CONFIG_TOML}
example:
  {PROG} check-config --config /etc/sansmail.toml
"""

_USER_HELP = f"""\
Manage the users who receive mail and may log in. Users live in <data_dir>/users.json
(passwords stored as argon2id hashes); each user's mail is in the Maildir
<data_dir>/mail/<domain>/<local-part>/. An address's domain must be one of the
configured domains. A change is in force in a running server, in every one of its
processes, by the time the command exits: the next RCPT or login sees it.

With [storage] backend = "postgresql" the users (and their mail) are in the database
every node shares instead: the command writes it, and the next RCPT or password login
on any node sees the change (the node asks the database whether the users changed
since it read them); the rest (SCRAM logins) take it when the node re-reads the users,
which a NOTIFY asks for at the commit, milliseconds after the command exits.

examples:
  {PROG} user add alice@example.test              # prompts for the password twice
  printf '%s\\n' 'secret' | {PROG} user add bob@example.test --password-stdin
  {PROG} user passwd alice@example.test
  {PROG} user del bob@example.test
  {PROG} user list
  {PROG} user quota alice@example.test 10G          # her own storage limit
  {PROG} user quota alice@example.test none         # no limit for her
  {PROG} user quota alice@example.test default      # [quota] storage again
  {PROG} user quota alice@example.test              # her limit and usage
"""

_QUOTA_ARG_HELP = (
    'the storage limit: octets or a size like "500M", "10G"; "none" (no limit) or'
    ' "default" (the [quota] storage of the configuration)'
)

_NEWALIASES_HELP = f"""\
Check the aliases file (the `aliases` key of the configuration; /etc/aliases format)
and every include file it names: print each problem as file:line: message and exit 1,
or print how many aliases it holds and exit 0. postmaster or abuse addresses that reach
nobody are reported as warnings: their mail goes to the postmaster Maildir.

It also loads them: once it exits, every process of a running server uses the file
as it now stands, for the next RCPT, without a restart. A file with problems is used
all the same, without the entries that have them (and the exit status is 1).

An edit made without newaliases, to the aliases file or to an include file (which,
as in Postfix, needs no newaliases), is picked up by a running server within about a
second; run newaliases after it to have it in force at once.

With [storage] backend = "postgresql", every node delivers with the aliases in the
database, and newaliases is how they get there: it reads the aliases file and its
include files on this machine and stores their text in the database, in one
transaction, and every node takes them at once. There, an edit to the aliases file or
to an include file is in force only after newaliases.

examples:
  {PROG} newaliases --config /etc/sansmail.toml
"""

_QUEUE_HELP = f"""\
The outbound queue, <data_dir>/queue/: messages waiting for delivery to other hosts.

  queue list            every queued message, like mailq: queue id, size, arrival
                        time (UTC) and sender, then each recipient still pending,
                        with the reason of its last failure; --json: one
                        JSON object per message and line, with the keys of
                        Postfix's postqueue -j
  queue flush           ask the running server to retry every deferred message now,
                        like postqueue -f
  queue delete ID...    delete messages, like postsuper -d; queue delete ALL
                        deletes every message

examples:
  {PROG} queue list
  {PROG} queue list --json | jq -r 'select(.queue_name == "deferred") | .queue_id'
  {PROG} queue delete 18BD5E1A2C8F0004A001
  {PROG} queue flush --config /etc/sansmail.toml
"""

_STDIN_HELP = (
    "read the password from the first line of standard input (no prompt, no echo); "
    "without it, the password is asked twice on the terminal"
)


_RELOAD_HELP = f"""\
Like SIGHUP to every server process: users and aliases are re-read before the next
lookup (hand edits of users.json, the aliases file and its include files included),
and the TLS certificate and key within a second. The configuration file itself is
read only at start: restart serve to apply a change to it. Exits 1 when no server has
ever run on the configured data_dir.

example:
  {PROG} reload --config /etc/sansmail.toml
"""

_DKIM_HELP = f"""\
DKIM signing keys. `dkim keygen DOMAIN` makes a key for DOMAIN under the selector
dkim.selector of the configuration (or --selector), stores it in
<data_dir>/dkim/<domain>/<selector>.key (mode 0600; the TXT record beside it in
<selector>.txt), and prints the DNS record to publish. Once the record is published,
mail leaving for other hosts with a From address in DOMAIN is signed (the server reads
new keys within a second; no restart). A key is never replaced without --force.

examples:
  {PROG} dkim keygen example.com
  {PROG} dkim keygen example.com --selector s2024 --algorithm ed25519
"""

_DNS_RECORDS_HELP = f"""\
Print, in zone-file form, the DNS records DOMAIN (one of the configured domains) needs
for this server: MX, SPF, DKIM (from the keys of `{PROG} dkim keygen`), DMARC,
MTA-STS (with the policy to serve), TLS-RPT, the SRV records mail clients look for
(RFC 6186: the listeners configured, port 0 for the services not offered), the
autoconfig and autodiscover names, and a reminder of the PTR record to ask for.

With --check, ask the configured resolver ([dns] nameservers) for each record, and
for the PTR record of each address of hostname, and print one line per record: ok,
missing, different (with what is published) or failed (no answer). Exits 1 when a
required record (MX, an address for hostname, SPF, or the DKIM key of dkim.selector)
is not published as printed.

examples:
  {PROG} dns-records example.com --config /etc/sansmail.toml >> example.com.zone
  {PROG} dns-records example.com --check
"""

_SIEVE_CHECK_HELP = """\
Check a Sieve script (RFC 5228 and the extensions sansmail runs) as ManageSieve's
PUTSCRIPT will: prints nothing and exits 0 when it is good; else prints
FILE:LINE:COLUMN: message on standard error (the first error) and exits 1.
"""

_SIEVE_EXAMPLES = f"""\
examples (Alice is away; her vacation reply, set by an admin, then removed):
  cat > away.sieve <<'EOF'
  require "vacation";
  vacation :days 7 :subject "Away until 2 January"
    "I am away until 2 January. For anything urgent, write to bob@example.test.";
  EOF
  {PROG} sieve check away.sieve
  {PROG} sieve put alice@example.test away away.sieve --activate
  {PROG} sieve list alice@example.test
  {PROG} sieve get alice@example.test away
  {PROG} sieve deactivate alice@example.test        # she is back
  {PROG} sieve delete alice@example.test away
"""

_SIEVE_HELP = f"""\
Sieve scripts (RFC 5228): each user's mail filters, run when mail is delivered to
them. A user's scripts live in <data_dir>/sieve/<domain>/<local-part>/ as NAME.sieve;
the active one, the one run at delivery, is the symbolic link .dovecot.sieve to it
(Pigeonhole's layout). Users manage their own over ManageSieve (RFC 5804); these
commands do the same for an admin, on the users of users.json. A change is in force
for the next message delivered, without a reload. Run as root, the files are written
as mail_owner.

{_SIEVE_EXAMPLES}"""

_SIEVE_QUOTA = SieveQuota()
_SIEVE_ACTION_HELP = {
    "put": f"""\
Store FILE (- or none: standard input) as the user's script NAME, replacing one of
that name. It is checked first, as `{PROG} sieve check` does: a script with an
error is not stored (FILE:LINE:COLUMN: message on standard error, exit 1), nor one
over the user's quota of {_SIEVE_QUOTA.max_scripts} scripts, \
{_SIEVE_QUOTA.max_script_size // 1024} KiB each, {_SIEVE_QUOTA.max_storage // 1024} KiB \
in all.
With --activate it also becomes the user's active script; without it, the active
script stays as it was.
""",
    "get": "Print the user's script NAME, as stored.\n",
    "list": """\
Print the user's scripts, one name a line, sorted, the active one followed by
" (active)"; with --json, one JSON array of {"name": ..., "active": ...} objects.
""",
    "activate": """\
Make the user's script NAME the active one: from the next message on, it is the one
run at delivery (a user has at most one active script).
""",
    "deactivate": """\
Leave the user with no active script: mail is delivered to the INBOX unfiltered
(a site script, [sieve] before, still runs). The scripts are kept.
""",
    "delete": """\
Delete the user's script NAME. The active script cannot be deleted: deactivate it, or
activate another, first.
""",
}

# A string: argparse's class cannot be subscripted at run time.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _build_parser() -> argparse.ArgumentParser:
    # --config is accepted before and after the command: the sub-parsers' copy defaults to
    # SUPPRESS so that, when absent there, it does not overwrite the main parser's value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        type=pathlib.Path,
        default=argparse.SUPPRESS,
        help="the configuration file (default: ./sansmail.toml if it exists, else the "
        "embedded default)",
    )
    raw = argparse.RawDescriptionHelpFormatter

    parser = argparse.ArgumentParser(prog=PROG, description=_MAIN_HELP, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=pathlib.Path,
        default=None,
        help="the configuration file (default: ./sansmail.toml if it exists, "
        "else the embedded default)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: Subcommands,
        name: str,
        summary: str,
        run: Callable[[argparse.Namespace], int],
        description: str | None = None,
        *,
        parent: str = "",
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description or summary,
            formatter_class=raw,
        )
        sub.set_defaults(run=run, command_name=f"{parent} {name}".strip())
        return sub

    def group(name: str, summary: str, description: str | None = None) -> Subcommands:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description or summary,
            formatter_class=raw,
        )
        return sub.add_subparsers(dest=f"{name}_action", metavar="ACTION", required=True)

    command(commands, "serve", "run the mail server until SIGINT/SIGTERM", _serve, _SERVE_HELP)
    command(commands, "check-config", "validate the configuration", _check_config, _CHECK_HELP)

    users = group("user", "add, change, delete and list users", _USER_HELP)
    add = command(users, "add", "add a user with a password", _user_add, _USER_HELP, parent="user")
    add.add_argument("address", metavar="ADDRESS", help="the user's mail address")
    add.add_argument("--password-stdin", action="store_true", help=_STDIN_HELP)
    add.add_argument("--quota", metavar="SIZE", help=_QUOTA_ARG_HELP)
    passwd = command(
        users, "passwd", "change a user's password", _user_passwd, _USER_HELP, parent="user"
    )
    passwd.add_argument("address", metavar="ADDRESS", help="the user's mail address")
    passwd.add_argument("--password-stdin", action="store_true", help=_STDIN_HELP)
    delete = command(
        users, "del", "delete a user (the Maildir is kept)", _user_del, _USER_HELP, parent="user"
    )
    delete.add_argument("address", metavar="ADDRESS", help="the user's mail address")
    command(
        users,
        "list",
        "list the users, one address per line",
        _user_list,
        _USER_HELP,
        parent="user",
    )
    quota = command(
        users,
        "quota",
        "show or set a user's storage limit",
        _user_quota,
        _USER_HELP,
        parent="user",
    )
    quota.add_argument("address", metavar="ADDRESS", help="the user's mail address")
    quota.add_argument("size", metavar="SIZE", nargs="?", help=_QUOTA_ARG_HELP)

    command(
        commands,
        "newaliases",
        "check the aliases file and put it in force in a running server",
        _newaliases,
        _NEWALIASES_HELP,
    )

    queue = group("queue", "list the outbound queue, retry it now, delete from it", _QUEUE_HELP)
    queue_list = command(
        queue,
        "list",
        "list queued messages, like mailq",
        _queue_list,
        _QUEUE_HELP,
        parent="queue",
    )
    queue_list.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per message and line, as Postfix's postqueue -j: queue_name, "
        "queue_id, arrival_time, message_size, sender, recipients [{address, delay_reason}]",
    )
    command(
        queue,
        "flush",
        "ask the running server to retry every deferred message now, like postqueue -f",
        _queue_flush,
        _QUEUE_HELP,
        parent="queue",
    )
    delete_id = command(
        queue,
        "delete",
        "delete queued messages, like postsuper -d",
        _queue_delete,
        parent="queue",
    )
    delete_id.add_argument(
        "ids", metavar="ID", nargs="+", help="queue ids shown by `queue list`, or ALL"
    )

    dkim = group("dkim", "DKIM signing keys", _DKIM_HELP)
    keygen = command(
        dkim,
        "keygen",
        "make a signing key under data_dir and print its DNS TXT record",
        _dkim_keygen,
        _DKIM_HELP,
        parent="dkim",
    )
    keygen.add_argument("domain", metavar="DOMAIN", help="the signing domain")
    keygen.add_argument(
        "--algorithm",
        choices=("rsa", "ed25519"),
        default="rsa",
        help="rsa (2048 bits, the default: every receiver checks it) or ed25519 (RFC 8463; "
        "publish it beside an RSA key under another selector, since many receivers do not "
        "check it yet)",
    )
    keygen.add_argument(
        "--force", action="store_true", help="replace the key of that selector if one exists"
    )
    keygen.add_argument(  # last: the contract's usage reads "[--selector NAME] DOMAIN"
        "--selector",
        metavar="NAME",
        help="the DKIM selector (default: dkim.selector of the configuration)",
    )

    records = command(
        commands,
        "dns-records",
        "print the MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT and SRV/autoconfig records to "
        "publish for a domain",
        _dns_records,
        _DNS_RECORDS_HELP,
    )
    records.add_argument("domain", metavar="DOMAIN", help="one of the configured domains")
    records.add_argument(
        "--check", action="store_true", help="look the records up and say which differ"
    )

    sieve = group("sieve", "Sieve scripts: check them, and manage users' scripts", _SIEVE_HELP)
    check = command(
        sieve,
        "check",
        "check a Sieve script: FILE:LINE:COLUMN: message",
        _sieve_check,
        f"{_SIEVE_CHECK_HELP}\n{_SIEVE_EXAMPLES}",
        parent="sieve",
    )
    check.add_argument("file", metavar="FILE", help="the script")
    for action, summary, run, arguments in (
        ("put", "check and store a script for a user", _sieve_put, ("NAME", "FILE|-")),
        ("get", "print a user's script", _sieve_get, ("NAME",)),
        ("list", "list a user's scripts, the active one marked", _sieve_list, ()),
        ("activate", "make a script the user's active one", _sieve_activate, ("NAME",)),
        ("deactivate", "leave the user with no active script", _sieve_deactivate, ()),
        ("delete", "delete a user's script", _sieve_delete, ("NAME",)),
    ):
        description = f"{_SIEVE_ACTION_HELP[action]}\n{_SIEVE_EXAMPLES}"
        sub = command(sieve, action, summary, run, description, parent="sieve")
        sub.add_argument("user", metavar="USER", help="the user's address")
        for metavar in arguments:
            if metavar == "FILE|-":
                sub.add_argument(
                    "file",
                    metavar=metavar,
                    nargs="?",
                    default="-",
                    help="the script (default -: standard input)",
                )
            else:
                sub.add_argument("name", metavar=metavar, help="the script's name")
        if action == "put":
            sub.add_argument(
                "--activate",
                action="store_true",
                help="also make it the user's active script (the one run at delivery)",
            )
        if action == "list":
            sub.add_argument(
                "--json",
                action="store_true",
                help='one JSON array: [{"name": ..., "active": true|false}, ...]',
            )

    status = command(
        commands,
        "status",
        "version, uptime, listeners, processes and queue size of the running server",
        _status,
        admin.STATUS_HELP,
    )
    status.add_argument("--json", action="store_true", help="one JSON object")
    command(
        commands,
        "reload",
        "like SIGHUP: re-read certificates, users and aliases in the running server",
        _reload,
        _RELOAD_HELP,
    )
    who = command(
        commands,
        "who",
        "live sessions by user: service, pids, client addresses, since (doveadm who)",
        _who,
        admin.WHO_HELP,
    )
    who.add_argument("--json", action="store_true", help="a JSON array: one object per session")
    kick = command(
        commands, "kick", "end every session of a user (doveadm kick)", _kick, admin.KICK_HELP
    )
    kick.add_argument("user", metavar="USER", help="the user's address")

    _cli_mailbox.add_commands(command, group)

    _cli_storage.add_commands(command, group)
    return parser


# --- the commands -----------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the other commands need none of the server.
    from sansmail_trio._run import run  # noqa: PLC0415

    # As root: serve binds its ports first and drops privileges itself.
    config = _load(args, as_owner=False)
    owner = config.mail_owner
    if owner is not None and os.geteuid() != 0 and resolve_uid(owner) != os.geteuid():
        # Refused before anything is bound or written, in one line.
        raise CommandError(
            f"mail_owner = {owner!r}: only root can switch to another user: start it as "
            f"root or as {owner}"
        )
    # What the server creates is for mail_owner alone: SQLite's index and journal files
    # take the mode the umask leaves (the stores give their own files 0600 and 0700).
    os.umask(0o077)
    return run(config)


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args, as_owner=False)  # reads only
    found = warnings(config)
    problems: list[str] = []
    if config.aliases is not None:
        # The aliases decide where postmaster mail goes; they replace the plain check.
        source = AliasSource(config.aliases)
        problems = list(source.problems)
        found.extend(_role_warnings(config, source))
    elif config.domains:
        found.extend(_postmaster_warning(config))
    for problem in problems:
        print(problem, file=sys.stderr)
    for warning in found:
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        return 1
    listeners = sum(len(addresses) for addresses in config.listen.values())
    domains = ", ".join(config.domains) or "none"
    print(f"config OK: {config.source_name}, {listeners} listeners, domains {domains}")
    return 0


def _postmaster_warning(config: Config) -> list[str]:
    # CONTRACT.md "Where mail lives": postmaster mail falls back to a bare Maildir that
    # nobody reads unless a user of that name exists.
    domain = config.domains[0]
    key = f"postmaster@{domain}"
    store = _user_store(config)
    if key in store:
        return []
    maildir = config.data_dir / "mail" / domain / "postmaster"
    return [
        f"no user {key}: mail to postmaster goes to the Maildir {maildir}/ "
        f"(create the user with: {PROG} user add {key})"
    ]


def _user_add(args: argparse.Namespace) -> int:
    config = _load(args)
    address = _local_address(config, args.address)
    quota = None if args.quota is None else _quota_size(args.quota)
    password = _read_password(args.password_stdin)
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    user = _user_store(config).add(address, password, quota=quota)
    print(f"added {user.address}")
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    config = _load(args)
    address = _local_address(config, args.address)
    store = _user_store(config)
    # Check before asking for a password that would be thrown away.
    if address.key not in store:
        raise CommandError(f"no such user: {address}")
    store.set_password(address.key, _read_password(args.password_stdin))
    print(f"password changed for {address}")
    return 0


def _user_quota(args: argparse.Namespace) -> int:
    config = _load(args)
    address = _local_address(config, args.address)
    store = _user_store(config)
    if args.size is not None:
        store.set_quota(address.key, _quota_size(args.size))
    user = store.get(address.key)
    if user is None:
        raise CommandError(f"no such user: {address}")
    limit = config.quota.storage if user.quota is None else user.quota
    whose = "[quota] storage" if user.quota is None else "own"
    mailbox = MailboxId(domain=address.domain, local=address.local_part.lower())
    shown = f"{limit} octets ({whose})" if limit else f"none ({whose})"
    if config.storage.backend == "postgresql":
        octets, messages = _database_usage(config, mailbox)
        print(f"{user.address}: limit {shown}, used {octets} octets in {messages} messages")
        return 0
    root = MaildirStore(config.data_dir, hostname=config.hostname).maildir(mailbox)
    if not root.is_dir():
        print(f"{user.address}: limit {shown}, used 0 octets (no mail yet)")
        return 0
    used = recalculate_usage(str(root), limit)
    print(f"{user.address}: limit {shown}, used {used.octets} octets in {used.messages} messages")
    return 0


def _database_usage(config: Config, mailbox: MailboxId) -> tuple[int, int]:
    """(octets, messages) the database counts for `mailbox` (the writers keep it)."""
    from sansmail.storage.pg import DatabaseError  # noqa: PLC0415 (psycopg)
    from sansmail.storage.pg._mailrows import mailbox_key  # noqa: PLC0415

    try:
        with _database(config).transaction() as cur:
            cur.execute(
                "SELECT octets, messages FROM mail_usage WHERE mailbox = %s",
                (mailbox_key(mailbox),),
            )
            row = cur.fetchone()
    except DatabaseError as exc:
        raise CommandError(str(exc)) from None
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _quota_size(text: str) -> int | None:
    if text.lower() == "default":
        return None
    if text.lower() == "none":
        return 0
    try:
        return parse_size(text)
    except ValueError as exc:
        raise CommandError(f"{text!r}: {exc}") from None


def _user_del(args: argparse.Namespace) -> int:
    config = _load(args)
    address = _local_address(config, args.address)
    _user_store(config).delete(address.key)
    print(f"deleted {address} (its Maildir is kept)")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    config = _load(args)
    for user in _user_store(config).list():
        print(user.address)
    return 0


def _newaliases(args: argparse.Namespace) -> int:
    config = _load(args)
    if config.aliases is None:
        print(f"newaliases: no aliases file: {config.source_name} has no 'aliases' key")
        return 0
    source = AliasSource(config.aliases)
    # The file as just read is what every server process uses for its next RCPT, even
    # with problems: a server would take it within a second anyway, without the
    # entries that have them. No data_dir: no server has ever run, nothing to tell.
    if config.storage.backend == "postgresql":
        _import_aliases(config, source)
    elif config.data_dir.is_dir():
        bump(config.data_dir, Counter.ALIASES)
    for problem in source.problems:
        print(problem, file=sys.stderr)
    for warning in _role_warnings(config, source):
        print(f"warning: {warning}", file=sys.stderr)
    if source.problems:
        count = _plural(len(source.problems), "problem")
        raise CommandError(
            f"{count} in {config.aliases} or its include files; a running server uses "
            "the entries without problems"
        )
    aliases = _plural(len(source.table), "alias", "aliases")
    includes = _plural(len(source.include_files), "include file")
    print(f"newaliases: {aliases} in {config.aliases} ({includes})")
    return 0


def _import_aliases(config: Config, source: AliasSource) -> None:
    """On the PostgreSQL backend every node delivers with the aliases in the database:
    put the file and its include files there, and tell the nodes (`PgAliasSource`)."""
    from sansmail.storage.pg import DatabaseError  # noqa: PLC0415 (psycopg)
    from sansmail.storage.pg._aliases import import_aliases  # noqa: PLC0415

    if source.text is None:
        for problem in source.problems:
            print(problem, file=sys.stderr)
        raise CommandError(f"{config.aliases}: cannot be read; the aliases in force are kept")
    try:
        import_aliases(_database(config), source)
    except DatabaseError as exc:
        raise CommandError(f"{exc}; the aliases in force are kept") from None


def _role_warnings(config: Config, source: Aliases) -> list[str]:
    store = _user_store(config)
    return role_account_problems(
        source.table,
        domains=config.domains,
        user_exists=store.__contains__,
        recipient_delimiter=config.recipient_delimiter,
        read_include=source.read_include,
    )


def _queue_list(args: argparse.Namespace) -> int:
    store = _queue_store(_load(args))
    show = mailq_json_lines if args.json else format_mailq
    sys.stdout.write(show(store.list(), now=time.time()))
    return 0


def _queue_flush(args: argparse.Namespace) -> int:
    store = _queue_store(_load(args))
    try:
        store.request_flush()
    except FileNotFoundError:
        # No queue directory: nothing was ever queued, so nothing to retry.
        print("Mail queue is empty: nothing to flush")
        return 0
    print(
        "flush requested: the running server retries every deferred message now "
        "(a stopped server does when it starts)"
    )
    return 0


def _queue_delete(args: argparse.Namespace) -> int:
    store = _queue_store(_load(args))
    ids: list[str] = args.ids
    if "ALL" in ids:
        if len(ids) > 1:
            raise CommandError("ALL deletes every message: give it alone")
        ids = [message.queue_id for message in store.list()]
        if not ids:
            print("Mail queue is empty: nothing deleted")
            return 0
        everything = True
    else:
        everything = False
    status = 0
    for queue_id in ids:
        try:
            check_queue_id(queue_id)
            store.delete(queue_id)
        except ValueError:
            print(
                f"{PROG}: queue delete: {queue_id!r} is not a queue id (upper-case letters "
                "and digits, as queue list shows them)",
                file=sys.stderr,
            )
            status = 1
        except UnknownQueueIdError:
            if not everything:  # with ALL, one delivered meanwhile has left by itself
                print(
                    f"{PROG}: queue delete: {queue_id}: no such message in the queue",
                    file=sys.stderr,
                )
                status = 1
        else:
            print(f"deleted {queue_id}")
    return status


def _dkim_keygen(args: argparse.Namespace) -> int:
    # Imported here: dkimpy and the key code are for this command alone.
    from sansmail.mail import dkim  # noqa: PLC0415

    config = _load(args)
    selector: str = args.selector or config.dkim.selector
    domain: str = args.domain.rstrip(".").lower()
    try:
        domain = canonical_domain(domain)
    except AddressError as exc:
        raise CommandError(f"{args.domain!r} is not a valid domain: {exc}") from None
    try:
        key_path(config.data_dir, domain, selector)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    private_key, txt = dkim.generate(args.algorithm)
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        path = write_key(config.data_dir, domain, selector, private_key, txt, force=args.force)
    except KeyExistsError as exc:
        raise CommandError(str(exc)) from None
    print(dkim.dns_record(domain, selector, txt))
    print(f"; the private key is in {path}; publish the record above in the DNS of {domain}")
    return 0


def _dns_records(args: argparse.Namespace) -> int:
    # Imported here: dkimpy's key code and the resolver are for this command alone.
    import trio  # noqa: PLC0415

    from sansmail.mail import dkim, dnsrecords  # noqa: PLC0415
    from sansmail_trio._dns import Resolver, run_check  # noqa: PLC0415

    config = _load(args)
    try:
        domain = canonical_domain(args.domain.rstrip(".").lower())
    except AddressError as exc:
        raise CommandError(f"{args.domain!r} is not a valid domain: {exc}") from None
    if domain not in config.domains:
        configured = ", ".join(config.domains) or "none"
        raise CommandError(
            f"{domain} is not one of the configured domains ({configured}) in {config.source_name}"
        )
    keys = []
    folder = config.data_dir / "dkim" / domain
    for path in sorted(folder.glob("*.key")) if folder.is_dir() else ():
        try:
            txt = dkim.txt_record(path.read_bytes())
        except dkim.DkimError as exc:
            raise CommandError(f"{path}: {exc}") from None
        keys.append(dnsrecords.DkimKey(selector=path.stem, txt=txt))
    found = dnsrecords.records(config, domain, keys)
    if not args.check:
        sys.stdout.write(dnsrecords.zone_text(config, domain, found))
        return 0
    resolver = Resolver.from_config(config.dns)
    findings = trio.run(run_check, dnsrecords.check(found, hostname=config.hostname), resolver)
    width = max(len(status.value) for status in dnsrecords.Status)
    for finding in findings:
        record = finding.record
        print(f"{finding.status.value:<{width}} {record.kind:<10} {record.line}")
        if finding.status is dnsrecords.Status.DIFFERENT:
            for value in finding.published:
                print(f"{'':<{width}} {'':<10} published: {value}")
    wrong = [f"{f.record.kind} {f.status.value}" for f in dnsrecords.failing(findings)]
    if not any(record.kind == "DKIM" and record.required for record in found):
        wrong.append(
            f"no DKIM key for selector {config.dkim.selector!r} (make one with "
            f"`{PROG} dkim keygen {domain}`)"
        )
    if wrong:
        shown = ", ".join(wrong)
        print(f"{PROG}: dns-records: {domain}: not published as printed: {shown}", file=sys.stderr)
        return 1
    return 0


def _reload(args: argparse.Namespace) -> int:
    config = _load(args)
    if not bump(config.data_dir, Counter.USERS, Counter.ALIASES, Counter.TLS):
        raise CommandError(f"no server has ever run on {config.data_dir}: nothing to reload")
    print(
        "reload requested: every running server process re-reads users and aliases before "
        "its next lookup, and its TLS certificate within a second"
    )
    return 0


def _who(args: argparse.Namespace) -> int:
    return admin.who(_load(args), as_json=args.json)


def _kick(args: argparse.Namespace) -> int:
    return admin.kick(_load(args), args.user)


def _status(args: argparse.Namespace) -> int:
    return admin.status(_load(args), as_json=args.json)


def _sieve_check(args: argparse.Namespace) -> int:
    # Only the script: no configuration is read, so it checks a file before it is put.
    name = args.file
    try:
        with pathlib.Path(name).open("rb") as file:
            raw = file.read(SIEVE_MAX_SIZE + 1)  # a byte more than a script may have
    except OSError as error:
        print(f"{PROG} sieve check: {name}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0 if _sieve_valid(name, raw) else 1


def _sieve_valid(name: str, raw: bytes) -> bool:
    """Whether `raw` is a script sansmail runs; if not, FILE:LINE:COLUMN: message on
    stderr."""
    if len(raw) > SIEVE_MAX_SIZE:
        print(f"{name}:1:1: script is too large (max {SIEVE_MAX_SIZE} bytes)", file=sys.stderr)
        return False
    try:
        parse_sieve(raw)
    except SieveError as error:
        print(f"{name}:{error.position}: {error.message}", file=sys.stderr)
        return False
    return True


def _sieve_put(args: argparse.Namespace) -> int:
    config, address, mailbox = _sieve_user(args)
    scripts = _sieve_store(config)
    name = _sieve_name(args.name)
    limit = scripts.quota.max_script_size
    try:
        if args.file == "-":
            shown = "<stdin>"
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            shown = args.file
            with pathlib.Path(args.file).open("rb") as file:
                raw = file.read(limit + 1)  # a byte more than the quota lets it have
    except OSError as error:
        raise CommandError(f"{args.file}: {error.strerror or error}") from None
    if not _sieve_valid(shown, raw):
        return 1
    try:
        scripts.put(mailbox, name, raw)
        if args.activate:
            scripts.activate(mailbox, name)
    except SieveQuotaError as error:
        raise CommandError(f"{address}: over the Sieve quota ({error.kind}): {error}") from None
    except SieveStoreError as error:
        raise CommandError(f"{address}: {error}") from None
    print(f"stored script {name!r} for {address}{' (active)' if args.activate else ''}")
    return 0


def _sieve_get(args: argparse.Namespace) -> int:
    config, address, mailbox = _sieve_user(args)
    try:
        text = _sieve_store(config).get(mailbox, _sieve_name(args.name))
    except SieveStoreError as error:
        raise CommandError(f"{address}: {error}") from None
    sys.stdout.buffer.write(text)
    sys.stdout.buffer.flush()
    return 0


def _sieve_list(args: argparse.Namespace) -> int:
    config, address, mailbox = _sieve_user(args)
    try:
        listed = _sieve_store(config).list(mailbox)
    except SieveStoreError as error:
        raise CommandError(f"{address}: {error}") from None
    if args.json:
        print(json.dumps([{"name": name, "active": active} for name, active in listed]))
        return 0
    for name, active in listed:
        print(f"{name} (active)" if active else name)
    return 0


def _sieve_activate(args: argparse.Namespace) -> int:
    config, address, mailbox = _sieve_user(args)
    name = _sieve_name(args.name)
    try:
        _sieve_store(config).activate(mailbox, name)
    except SieveStoreError as error:
        raise CommandError(f"{address}: {error}") from None
    print(f"script {name!r} is active for {address}")
    return 0


def _sieve_deactivate(args: argparse.Namespace) -> int:
    config, address, mailbox = _sieve_user(args)
    scripts = _sieve_store(config)
    try:
        was = scripts.active(mailbox)
        scripts.activate(mailbox, None)
    except SieveStoreError as error:
        raise CommandError(f"{address}: {error}") from None
    if was is None:
        print(f"{address} had no active script")
    else:
        print(f"script {was[0]!r} is no longer active for {address}")
    return 0


def _sieve_delete(args: argparse.Namespace) -> int:
    config, address, mailbox = _sieve_user(args)
    name = _sieve_name(args.name)
    try:
        _sieve_store(config).delete(mailbox, name)
    except SieveStoreError as error:
        raise CommandError(f"{address}: {error}") from None
    print(f"deleted script {name!r} of {address}")
    return 0


def _sieve_user(args: argparse.Namespace) -> tuple[Config, Address, MailboxId]:
    """The configuration (as mail_owner, when root) and USER, who must be a user."""
    config = _load(args)
    address = _local_address(config, args.user)
    if address.key not in _user_store(config):
        raise CommandError(f"no such user: {address}")
    return config, address, MailboxId(domain=address.domain, local=address.local_part.lower())


def _sieve_name(name: str) -> str:
    why = valid_script_name(name)
    if why is not None:
        raise CommandError(f"{name!r}: {why}")
    return name


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


# --- helpers ----------------------------------------------------------------------------


def _load(args: argparse.Namespace, *, as_owner: bool = True) -> Config:
    """The configuration; with `as_owner`, root also becomes its ``mail_owner`` first
    (`_as_owner`), so what the command writes in data_dir is the server's."""
    config = load_config(
        args.config, default_hostname=_default_hostname(), check_tls=tls_files_problem
    )
    if as_owner:
        _as_owner(config)
    return config


def _as_owner(config: Config) -> None:
    # Root with a mail_owner runs the command as that user, as Postfix's postsuper runs
    # as its mail_owner: users.json, a DKIM key, a queue file or a generations counter
    # made by root would be closed to the server after its own drop. What root left in
    # data_dir before (a command run before mail_owner was set) is given to the user
    # first; the Maildirs are the server's to claim, not worth a walk per command.
    if os.geteuid() != 0 or config.mail_owner is None:
        return
    account = resolve(config.mail_owner)
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    claim(config.data_dir, account, skip=("mail",))
    become(account)
    os.umask(0o077)


def _default_hostname() -> str:
    # getfqdn() returns whatever the resolver says, which on containers and laptops can
    # be an invalid name; the embedded default must still work there.
    name = socket.getfqdn().rstrip(".")
    return name if _LDH_NAME.match(name) and len(name) <= 253 else "localhost"


def _user_store(config: Config) -> Users:
    # CRAM-MD5 keys are password-equivalent: made only where the mechanism is enabled.
    cram_md5 = "CRAM-MD5" in config.smtp.auth_mechanisms
    if config.storage.backend == "postgresql":
        from sansmail.storage.pg._users import PgUserStore  # noqa: PLC0415 (psycopg)

        return PgUserStore(_database(config), cram_md5=cram_md5)
    return UserStore(config.data_dir / "users.json", cram_md5=cram_md5)


def _sieve_store(config: Config) -> SieveScripts:
    if config.storage.backend == "postgresql":
        from sansmail.storage.pg._sieve import PgSieveStore  # noqa: PLC0415 (psycopg)

        return PgSieveStore(_database(config))
    return SieveStore(config.data_dir)


# The databases this command opened (the backend's stores on one `Database` each), for
# `main` to close when the command ends.
_DATABASES: list[Database] = []


def _database(config: Config) -> Database:
    """The ``[storage] dsn`` database (the accounts commands on the PostgreSQL backend);
    closed by `main` when the command ends."""
    db = _cli_storage._database(config)
    _DATABASES.append(db)
    return db


def _queue_store(config: Config) -> Queue:
    if config.storage.backend == "postgresql":
        from sansmail.storage.pg._queue import PgQueueStore  # noqa: PLC0415 (psycopg)

        # The command claims nothing; the name is only the holder it would be.
        return PgQueueStore(_database(config), node=f"{config.hostname}:cli:{os.getpid()}")
    return QueueStore(config.data_dir / "queue")


def _local_address(config: Config, text: str) -> Address:
    try:
        address = parse_address(text)
    except AddressError as exc:
        raise CommandError(f"{text!r} is not a valid address: {exc}") from None
    if address.domain not in config.domains:
        configured = ", ".join(config.domains) or "none"
        where = "./sansmail.toml" if config.source is None else str(config.source)
        raise CommandError(
            f"{address.domain} is not one of the configured domains ({configured}); "
            f"add it to domains in {where}"
        )
    return address


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError:
            raise CommandError("the password read from standard input is not UTF-8") from None
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        if not sys.stdin.isatty():
            raise CommandError(
                "standard input is not a terminal: use --password-stdin to read the "
                "password from it"
            )
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CommandError("the passwords do not match")
    if not password:
        raise CommandError("empty password refused")
    return password


def _run_closing(args: argparse.Namespace) -> int:
    try:
        status: int = args.run(args)
    finally:
        while _DATABASES:
            _DATABASES.pop().close()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `sansmail-trio`; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    name: str = args.command_name
    try:
        status: int = _run_closing(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (CommandError, UserError, PrivilegeError, ControlError) as exc:
        print(f"{PROG}: {name}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{PROG}: {name}:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return status
