"""One parser per IMAP command (RFC 9051 §6 and §9, RFC 3501 for the rev1 commands, and
the extensions named where they add syntax), and `PARSERS`, the table from command
name to event type and parser that `_parser` dispatches through."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Final, Literal

from sansmail.imap._arguments import (
    Context,
    Parse,
    RefusalError,
    decode_name,
    read_flag,
    read_flag_list,
    read_keywords,
    read_mailbox,
    read_parameters,
    read_sequence_set,
    utf8_text,
)
from sansmail.imap._condstore import fetch_options, select_options, store_unchangedsince
from sansmail.imap._events import (
    COMPRESS_MECHANISMS,
    LIST_RETURN_OPTIONS,
    LIST_SELECTION_OPTIONS,
    SEARCH_RETURN_OPTIONS,
    SORT_KEYS,
    STATUS_ITEMS,
    THREAD_ALGORITHMS,
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Compress,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Rename,
    Search,
    Select,
    SetQuota,
    Sort,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Thread,
    UidExpunge,
    Unselect,
    Unsubscribe,
)
from sansmail.imap._fetch import parse_fetch_items
from sansmail.imap._grammar import FLAG_RE
from sansmail.imap._lexer import Cursor, ParseError
from sansmail.imap._responses import ResponseCode
from sansmail.imap._search import SearchKey, parse_search_keys
from sansmail.imap._values import Atom, Value
from sansmail.sasl._b64 import decode_base64_strict
from sansmail.sasl._base import SASLError

__all__ = ["PARSERS", "SEARCH_CHARSETS"]


def _no_arguments(kind: type[Command]) -> Parse:
    def parse(_cursor: Cursor, tag: str, _context: Context) -> Command:
        return kind(tag=tag)

    return parse


def _authenticate(cursor: Cursor, tag: str, _context: Context) -> Command:
    """authenticate = "AUTHENTICATE" SP auth-type [SP initial-resp]; initial-resp =
    base64 / "=" (RFC 9051 §9, RFC 4959 §3)."""
    cursor.sp()
    mechanism = cursor.keyword("a SASL mechanism")
    initial: bytes | None = None
    if cursor.take(b" "):
        if cursor.take(b"="):
            initial = b""
        else:
            try:
                initial = decode_base64_strict(cursor.atom("base64"))
            except SASLError:
                raise ParseError("initial response is not base64") from None
    try:
        return Authenticate(tag=tag, mechanism=mechanism, initial_response=initial)
    except ValueError:
        raise ParseError("not a SASL mechanism name") from None


def _login(cursor: Cursor, tag: str, _context: Context) -> Command:
    cursor.sp()
    userid = utf8_text(cursor.astring(), "user name")
    cursor.sp()
    password = utf8_text(cursor.astring(), "password")
    if "\0" in userid or "\0" in password:
        raise ParseError("NUL in LOGIN")
    return Login(tag=tag, userid=userid, password=password)


def _enable(cursor: Cursor, tag: str, _context: Context) -> Command:
    names = []
    while not cursor.at_end():
        cursor.sp()
        names.append(cursor.keyword("a capability"))
    if not names:
        raise ParseError("ENABLE needs a capability")
    return Enable(tag=tag, capabilities=tuple(names))


def _id(cursor: Cursor, tag: str, _context: Context) -> Command:
    """id = "ID" SP id-params-list; "(" *(string SP nstring) ")" / nil (RFC 2971 §4)."""
    cursor.sp()
    if cursor.take(b"NIL"):
        return Id(tag=tag, params=None)
    cursor.open()
    params: list[tuple[str, str | None]] = []
    while not cursor.take(b")"):
        if params:
            cursor.sp()
        field = cursor.string()
        cursor.sp()
        value = cursor.nstring()
        # RFC 2971 §3.3: at most 30 pairs, fields of 30 octets, values of 1024.
        if len(params) == 30 or len(field) > 30 or (value is not None and len(value) > 1024):
            raise ParseError("ID parameters over the limits of RFC 2971")
        params.append(
            (utf8_text(field, "ID field"), None if value is None else utf8_text(value, "ID value"))
        )
    cursor.unnest()
    if any("\0" in f or (v is not None and "\0" in v) for f, v in params):
        raise ParseError("NUL in ID")
    return Id(tag=tag, params=tuple(params))


def _select(readonly: bool) -> Parse:
    def parse(cursor: Cursor, tag: str, context: Context) -> Command:
        cursor.sp()
        mailbox = read_mailbox(cursor, context)
        parameters: tuple[tuple[str, Value], ...] = ()
        if cursor.take(b" "):
            parameters = read_parameters(cursor)
            select_options(parameters)  # RFC 7162's are checked here: BAD if malformed
        return Select(tag=tag, mailbox=mailbox, readonly=readonly, parameters=parameters)

    return parse


def _create(cursor: Cursor, tag: str, context: Context) -> Command:
    """create = "CREATE" SP mailbox [create-params]; RFC 6154 §3: "USE" SP "(" ... ")"."""
    cursor.sp()
    mailbox = read_mailbox(cursor, context)
    uses: list[str] = []
    if cursor.take(b" "):
        cursor.open()
        while True:
            if cursor.keyword("a CREATE parameter") != "USE":
                raise ParseError("unknown CREATE parameter")
            cursor.sp()
            uses.extend(read_flag_list(cursor))
            if cursor.take(b")"):
                break
            cursor.sp()
        cursor.unnest()
    return Create(tag=tag, mailbox=mailbox, special_use=tuple(uses))


def _one_mailbox(kind: type[Delete | Subscribe | Unsubscribe]) -> Parse:
    def parse(cursor: Cursor, tag: str, context: Context) -> Command:
        cursor.sp()
        return kind(tag=tag, mailbox=read_mailbox(cursor, context))

    return parse


def _rename(cursor: Cursor, tag: str, context: Context) -> Command:
    cursor.sp()
    old = read_mailbox(cursor, context)
    cursor.sp()
    return Rename(tag=tag, mailbox=old, new_mailbox=read_mailbox(cursor, context))


def _list(cursor: Cursor, tag: str, context: Context) -> Command:
    """list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    (RFC 9051 §9, from RFC 5258 §6)."""
    cursor.sp()
    selection: list[str] = []
    if cursor.peek() == 0x28:
        selection = read_keywords(cursor, LIST_SELECTION_OPTIONS, "LIST selection option")
        # RFC 5258 §3.1: RECURSIVEMATCH needs another option (besides REMOTE) to modify.
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            raise ParseError("RECURSIVEMATCH alone")
        cursor.sp()
    reference = decode_name(cursor.astring(), context)
    cursor.sp()
    patterns: list[str] = []
    if cursor.peek() == 0x28:
        cursor.open()
        patterns.append(decode_name(cursor.list_mailbox(), context))
        while not cursor.take(b")"):
            cursor.sp()
            patterns.append(decode_name(cursor.list_mailbox(), context))
        cursor.unnest()
    else:
        patterns.append(decode_name(cursor.list_mailbox(), context))
    options: list[str] = []
    status: list[str] = []
    if cursor.take(b" "):
        cursor.expect(b"RETURN")
        cursor.sp()
        cursor.open()
        while not cursor.take(b")"):
            if options or status:
                cursor.sp()
            option = cursor.keyword("a LIST return option")
            if option == "STATUS" and not status:
                cursor.sp()
                status = read_keywords(cursor, STATUS_ITEMS, "STATUS item")
                if not status:
                    raise ParseError("RETURN STATUS needs items")
            elif option in LIST_RETURN_OPTIONS and option not in options:
                options.append(option)
            else:
                raise ParseError("unknown LIST return option")
        cursor.unnest()
    return List(
        tag=tag,
        reference=reference,
        patterns=tuple(patterns),
        selection=tuple(selection),
        return_options=tuple(options),
        status_items=tuple(status),
    )


def _lsub(cursor: Cursor, tag: str, context: Context) -> Command:
    cursor.sp()
    reference = decode_name(cursor.astring(), context)
    cursor.sp()
    return Lsub(tag=tag, reference=reference, pattern=decode_name(cursor.list_mailbox(), context))


def _status(cursor: Cursor, tag: str, context: Context) -> Command:
    cursor.sp()
    mailbox = read_mailbox(cursor, context)
    cursor.sp()
    items = read_keywords(cursor, STATUS_ITEMS, "STATUS item")
    if not items:
        raise ParseError("STATUS needs items")
    return Status(tag=tag, mailbox=mailbox, items=tuple(items))


def _append(cursor: Cursor, tag: str, context: Context) -> Command:
    """append = "APPEND" SP mailbox 1*append-message; append-message = [SP flag-list]
    [SP date-time] SP literal (RFC 9051 §9, RFC 3502 §6.3.11 MULTIAPPEND; literal8 for
    BINARY, RFC 3516 §4.4); append-data =/ "UTF8" SP "(" literal8 ")" once UTF-8 is
    enabled (RFC 6855 §4)."""
    cursor.sp()
    mailbox = read_mailbox(cursor, context)
    cursor.sp()
    first = _append_message(cursor, context)
    more = []
    while cursor.take(b" "):
        # imapclient (3.0, 4.x) writes two spaces between two messages that have no
        # flags or date (one after a literal, one before the next); one more is taken.
        cursor.take(b" ")
        more.append(_append_message(cursor, context))
    return Append(
        tag=tag,
        mailbox=mailbox,
        flags=first.flags,
        date=first.date,
        message=first.message,
        binary=first.binary,
        utf8=first.utf8,
        more=tuple(more),
    )


def _append_message(cursor: Cursor, context: Context) -> AppendMessage:
    flags: tuple[str, ...] = ()
    if cursor.peek() == 0x28:
        flags = read_flag_list(cursor)
        cursor.sp()
    date = None
    if cursor.peek() == 0x22:
        date = cursor.date_time()
        cursor.sp()
    utf8 = context.utf8 and cursor.take(b"UTF8 (")
    if utf8:
        cursor.nest()
    message, binary = cursor.literal(binary_ok=True)
    if utf8:
        if not binary:
            raise ParseError("the UTF8 APPEND data is a literal8 (RFC 6855 §4)")
        cursor.close()
    return AppendMessage(flags=flags, date=date, message=message, binary=binary, utf8=utf8)


def _uid_expunge(cursor: Cursor, tag: str, _context: Context) -> Command:
    cursor.sp()
    return UidExpunge(tag=tag, sequence_set=read_sequence_set(cursor))


def _fetch(cursor: Cursor, tag: str, context: Context) -> Command:
    """fetch = "FETCH" SP sequence-set SP (macro / fetch-att / "(" ... ")")
    [fetch-modifiers] (RFC 9051 §9, RFC 4466 §2.4)."""
    cursor.sp()
    sequence_set = read_sequence_set(cursor)
    cursor.sp()
    items = parse_fetch_items(cursor)
    modifiers: tuple[tuple[str, Value], ...] = ()
    if cursor.take(b" "):
        modifiers = read_parameters(cursor)
        fetch_options(modifiers, uid=context.uid)  # RFC 7162's: BAD if malformed
    return Fetch(
        tag=tag, uid=context.uid, sequence_set=sequence_set, items=items, modifiers=modifiers
    )


_STORE_MODES: Final[dict[bytes, Literal["replace", "add", "remove"]]] = {
    b"": "replace",
    b"+": "add",
    b"-": "remove",
}


def _store(cursor: Cursor, tag: str, context: Context) -> Command:
    """store = "STORE" SP sequence-set [store-modifiers] SP store-att-flags;
    store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))."""
    cursor.sp()
    sequence_set = read_sequence_set(cursor)
    cursor.sp()
    modifiers: tuple[tuple[str, Value], ...] = ()
    if cursor.peek() == 0x28:
        modifiers = read_parameters(cursor)
        store_unchangedsince(modifiers)  # RFC 7162's: BAD if malformed
        cursor.sp()
    sign = b"+" if cursor.take(b"+") else b"-" if cursor.take(b"-") else b""
    cursor.expect(b"FLAGS")
    silent = cursor.take(b".SILENT")
    cursor.sp()
    if cursor.peek() == 0x28:
        flags = read_flag_list(cursor)
    else:
        flag_words = [read_flag(cursor)]
        while cursor.take(b" "):
            flag_words.append(read_flag(cursor))
        flags = tuple(flag_words)
    return Store(
        tag=tag,
        uid=context.uid,
        sequence_set=sequence_set,
        mode=_STORE_MODES[sign],
        silent=silent,
        flags=flags,
        modifiers=modifiers,
    )


def _copy_or_move(kind: type[Copy | Move]) -> Parse:
    def parse(cursor: Cursor, tag: str, context: Context) -> Command:
        cursor.sp()
        sequence_set = read_sequence_set(cursor)
        cursor.sp()
        mailbox = read_mailbox(cursor, context)
        return kind(tag=tag, uid=context.uid, sequence_set=sequence_set, mailbox=mailbox)

    return parse


#: Charsets SEARCH understands, as named in [BADCHARSET (...)] (RFC 9051 §6.4.4: UTF-8
#: must be supported; US-ASCII is the rev1 default). Other names Python knows work too.
SEARCH_CHARSETS: Final = ("UTF-8", "US-ASCII")


def _search(cursor: Cursor, tag: str, context: Context) -> Command:
    """search = "SEARCH" [search-return-opts] SP search-program; search-program =
    ["CHARSET" SP charset SP] search-key *(SP search-key) (RFC 9051 §9)."""
    cursor.sp()
    return_options: tuple[str, ...] | None = None
    if cursor.take(b"RETURN "):
        return_options = tuple(read_keywords(cursor, SEARCH_RETURN_OPTIONS, "SEARCH return option"))
        cursor.sp()
    charset: str | None = None
    if cursor.take(b"CHARSET "):
        raw = cursor.quoted() if cursor.peek() == 0x22 else cursor.atom("a charset")
        charset = raw.decode("ascii", "replace").upper()
        cursor.sp()
    decode = _charset_decoder(charset)
    criteria = parse_search_keys(cursor, decode)
    return Search(
        tag=tag, uid=context.uid, charset=charset, criteria=criteria, return_options=return_options
    )


def _charset_decoder(charset: str | None) -> Callable[[bytes], str]:
    # Without CHARSET the strings are US-ASCII (rev1) or UTF-8 (rev2); UTF-8 covers both.
    name = charset or "UTF-8"
    try:
        codec = codecs.lookup(name)
        # Python also knows codecs that are no text encoding (base64, rot13, zlib), whose
        # decode gives bytes or raises errors of its own; bytes.decode refuses them by
        # this same flag. Found by the fuzz tests (tests/sansmail/fuzz/).
        if not FLAG_RE.fullmatch(name) or not getattr(codec, "_is_text_encoding", True):
            raise LookupError(name)
    except LookupError:
        code = ResponseCode(name="BADCHARSET", data=([Atom(c) for c in SEARCH_CHARSETS],))
        raise RefusalError("unsupported charset", status="NO", code=code) from None

    def decode(data: bytes) -> str:
        try:
            text = codec.decode(data)[0]
        except (UnicodeDecodeError, ValueError):
            raise ParseError(f"search string is not {name}") from None
        if "\0" in text:
            raise ParseError("NUL in a search string")
        return text

    return decode


def _getquota(cursor: Cursor, tag: str, _context: Context) -> Command:
    """getquota = "GETQUOTA" SP quota-root; quota-root = astring (RFC 9208 §5)."""
    cursor.sp()
    try:
        return GetQuota(tag=tag, root=utf8_text(cursor.astring(), "quota root"))
    except ValueError:
        raise ParseError("NUL in a quota root") from None


def _getquotaroot(cursor: Cursor, tag: str, context: Context) -> Command:
    """getquotaroot = "GETQUOTAROOT" SP mailbox (RFC 9208 §5)."""
    cursor.sp()
    return GetQuotaRoot(tag=tag, mailbox=read_mailbox(cursor, context))


def _setquota(cursor: Cursor, tag: str, _context: Context) -> Command:
    """setquota = "SETQUOTA" SP quota-root SP setquota-list; setquota-list = "("
    [setquota-resource *(SP setquota-resource)] ")"; setquota-resource = resource-name
    SP resource-limit; resource-limit = number64 (RFC 9208 §5)."""
    cursor.sp()
    root = utf8_text(cursor.astring(), "quota root")
    cursor.sp()
    cursor.open()
    resources: list[tuple[str, int]] = []
    while not cursor.take(b")"):
        if resources:
            cursor.sp()
        name = cursor.keyword("a quota resource")
        cursor.sp()
        limit = cursor.number(limit=2**63 - 1)
        resources.append((name, limit))
    cursor.unnest()
    try:
        return SetQuota(tag=tag, root=root, resources=tuple(resources))
    except ValueError:
        raise ParseError("not a quota root or resource name") from None


def _sort(cursor: Cursor, tag: str, context: Context) -> Command:
    """sort = ["UID" SP] "SORT" SP sort-criteria SP search-criteria; sort-criteria = "("
    sort-criterion *(SP sort-criterion) ")"; sort-criterion = ["REVERSE" SP] sort-key;
    search-criteria = charset 1*(SP search-key) (RFC 5256 §5, RFC 5957 §4)."""
    cursor.sp()
    cursor.open()
    criteria: list[tuple[str, bool]] = []
    while not criteria or not cursor.take(b")"):
        if criteria:
            cursor.sp()
        name = cursor.keyword("a sort key")
        reverse = name == "REVERSE"
        if reverse:
            cursor.sp()
            name = cursor.keyword("a sort key")
        if name not in SORT_KEYS:
            raise ParseError("unknown sort key")
        criteria.append((name, reverse))
    cursor.unnest()
    cursor.sp()
    charset, criteria_keys = _charset_and_keys(cursor)
    return Sort(
        tag=tag, uid=context.uid, criteria=tuple(criteria), charset=charset, search=criteria_keys
    )


def _thread(cursor: Cursor, tag: str, context: Context) -> Command:
    """thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria (RFC 5256 §5)."""
    cursor.sp()
    algorithm = cursor.keyword("a threading algorithm")
    if algorithm not in THREAD_ALGORITHMS:
        raise ParseError("unknown threading algorithm")
    cursor.sp()
    charset, keys = _charset_and_keys(cursor)
    return Thread(tag=tag, uid=context.uid, algorithm=algorithm, charset=charset, search=keys)


def _charset_and_keys(cursor: Cursor) -> tuple[str, SearchKey]:
    # The charset is not optional here (RFC 5256 §5: search-criteria = charset ...).
    raw = cursor.quoted() if cursor.peek() == 0x22 else cursor.atom("a charset")
    charset = raw.decode("ascii", "replace").upper()
    cursor.sp()
    return charset, parse_search_keys(cursor, _charset_decoder(charset))


def _compress(cursor: Cursor, tag: str, _context: Context) -> Command:
    """compress = "COMPRESS" SP algorithm; algorithm = "DEFLATE" (RFC 4978 §5). A
    well-formed name we do not have is NO, as Dovecot and mox answer it: the command was
    understood, the mechanism is what is missing."""
    cursor.sp()
    mechanism = cursor.keyword("a compression mechanism")
    if mechanism not in COMPRESS_MECHANISMS:
        raise RefusalError("mechanism not supported", status="NO", code=None)
    return Compress(tag=tag, mechanism=mechanism)


#: Command name -> (event type, parser).
PARSERS: Final[dict[str, tuple[type[Command], Parse]]] = {
    "CAPABILITY": (Capability, _no_arguments(Capability)),
    "NOOP": (Noop, _no_arguments(Noop)),
    "LOGOUT": (Logout, _no_arguments(Logout)),
    "STARTTLS": (StartTLS, _no_arguments(StartTLS)),
    "AUTHENTICATE": (Authenticate, _authenticate),
    "LOGIN": (Login, _login),
    "ENABLE": (Enable, _enable),
    "ID": (Id, _id),
    "NAMESPACE": (Namespace, _no_arguments(Namespace)),
    "SELECT": (Select, _select(readonly=False)),
    "EXAMINE": (Select, _select(readonly=True)),
    "CREATE": (Create, _create),
    "DELETE": (Delete, _one_mailbox(Delete)),
    "RENAME": (Rename, _rename),
    "SUBSCRIBE": (Subscribe, _one_mailbox(Subscribe)),
    "UNSUBSCRIBE": (Unsubscribe, _one_mailbox(Unsubscribe)),
    "LIST": (List, _list),
    "LSUB": (Lsub, _lsub),
    "STATUS": (Status, _status),
    "APPEND": (Append, _append),
    "IDLE": (Idle, _no_arguments(Idle)),
    "CHECK": (Check, _no_arguments(Check)),
    "CLOSE": (Close, _no_arguments(Close)),
    "UNSELECT": (Unselect, _no_arguments(Unselect)),
    "EXPUNGE": (Expunge, _no_arguments(Expunge)),
    "SEARCH": (Search, _search),
    "FETCH": (Fetch, _fetch),
    "STORE": (Store, _store),
    "COPY": (Copy, _copy_or_move(Copy)),
    "MOVE": (Move, _copy_or_move(Move)),
    "UID SEARCH": (Search, _search),
    "UID FETCH": (Fetch, _fetch),
    "UID STORE": (Store, _store),
    "UID COPY": (Copy, _copy_or_move(Copy)),
    "UID MOVE": (Move, _copy_or_move(Move)),
    "UID EXPUNGE": (UidExpunge, _uid_expunge),
    "SORT": (Sort, _sort),
    "UID SORT": (Sort, _sort),
    "THREAD": (Thread, _thread),
    "UID THREAD": (Thread, _thread),
    "GETQUOTA": (GetQuota, _getquota),
    "GETQUOTAROOT": (GetQuotaRoot, _getquotaroot),
    "SETQUOTA": (SetQuota, _setquota),
    "COMPRESS": (Compress, _compress),
}
