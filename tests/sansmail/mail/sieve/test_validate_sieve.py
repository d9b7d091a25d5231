"""Sieve validation: the RFCs' example scripts parse, and bad scripts are refused with the
line and column of the offending token (the command and test table of `_validate`)."""

from __future__ import annotations

import pytest

from sansmail.mail.sieve import SUPPORTED, Position, SieveError, parse
from sansmail.mail.sieve._validate import COMMANDS, TESTS

# The examples of RFC 5228 and of each extension's RFC, written out here (some trimmed to
# their Sieve part, some with the "require" their text leaves implicit).
EXAMPLES = {
    "5228 §9 extended example": """
# Example Sieve Filter
# Declare any optional features or extension used by the script
require ["fileinto"];

#
# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter mailbox
#
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be used by spammers, reject it.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        # Move all other (non-company) mail to "personal"
        # mailbox.
        fileinto "personal";
        }
""",
    "5228 §2.4.2 text": """
require "fileinto";
if header :contains "subject" "\\"quoted\\"" {
  fileinto text:
Inbox/quoted
..dotted
.
;
}
""",
    "5228 §3.1 if": """
require "fileinto";
if header :contains "from" "coyote" {
   discard;
} elsif header :contains ["subject"] ["$$$"] {
   discard;
} else {
   fileinto "INBOX";
}
""",
    "5228 §4.2 redirect": 'redirect "bart@example.com";',
    "5228 §5 tests": """
require "envelope";
if allof (exists ["From","Date"], not size :over 100K, true, not false,
          envelope :all :is "from" "tim@example.com",
          header :comparator "i;octet" :contains "Subject" "MAKE MONEY FAST") {
  stop;
}
if size :under 1M { keep; } else { discard; }
""",
    "5429 reject": """
require ["reject", "ereject"];
if header :contains "from" "coyote@desert.example.org" {
  reject text:
I am not taking mail from you, and I don't
want your birdseed, either!
.
;
} elsif size :over 10M { ereject "too big"; }
""",
    "5232 imap4flags": """
require ["imap4flags", "fileinto", "variables", "relational", "comparator-i;ascii-numeric"];
if size :over 500K {
    setflag "\\\\Deleted";
}
if header :contains "from" "boss@frobnitzm.example.edu" {
    setflag "flagvar" "\\\\Flagged";
    fileinto :flags "\\\\Flagged" "INBOX.From Boss";
}
addflag "flagvar" ["\\\\Seen", "$MDNSent"];
removeflag "\\\\Seen";
if hasflag :contains "MyVar" "Junk" { discard; stop; }
if hasflag :count "ge" :comparator "i;ascii-numeric" "2" { keep :flags ["a", "b"]; }
""",
    "3894 copy": """
require ["copy", "fileinto"];
redirect :copy "no-reply@example.com";
fileinto :copy "incoming";
""",
    "5173 body": """
require ["body", "fileinto"];
if body :text :contains "MAKE MONEY FAST" { discard; }
if body :raw :contains "MAKE MONEY FAST" { discard; }
if body :content "text" :contains ["missile", "coordinates"] { fileinto "secrets"; }
if body :content "audio/mp3" :contains "" { fileinto "jukebox"; }
if body :content ["multipart", "message/rfc822"] :contains "x" { keep; }
""",
    "5229 variables": """
require ["variables", "fileinto", "subaddress"];
set "honorific" "Mr";
set "first_name" "Wile";
set "last_name" "Coyote";
set "vacation" text:
Dear ${HONORIFIC} ${last_name},
I'm out, please leave a message after the meep.
.
;
set :length "length" "${myvar}";
set :upper "b" "${a}";
set :lower :upperfirst "b" "${a}";
set :quotewildcard "b" "Rock*";
if header :matches "List-ID" "*<*@*" {
    fileinto "INBOX.lists.${2}"; stop;
}
if address :user :matches "to" "*+*" { fileinto "${1}"; }
if string :is "${a}" "" { keep; }
""",
    "5231 relational": """
require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :value "lt" :comparator "i;ascii-numeric" ["x-priority"] ["3"] {
   fileinto "Priority";
}
elsif address :count "gt" :comparator "i;ascii-numeric" ["to"] ["5"] {
   fileinto "Spam";
}
elsif address :value "gt" :all :comparator "i;ascii-casemap" ["from"] ["M"] {
   fileinto "From N-Z";
} else {
   fileinto "From A-M";
}
if allof ( address :count "eq" :comparator "i;ascii-numeric" ["to", "cc"] ["1"],
           address :all :comparator "i;ascii-casemap" ["to", "cc"] ["me@foo.example.com"] ) {
   fileinto "Only me";
}
""",
    "5233 subaddress": """
require ["envelope", "subaddress", "fileinto"];
if envelope :user "to" "postmaster" { fileinto "inbox.postmaster"; stop; }
if envelope :detail :is "to" "mta-filters" { fileinto "inbox.ietf-mta-filters"; stop; }
if envelope :detail "to" "" { fileinto "inbox.no-detail"; }
""",
    "5260 date and index": """
require ["date", "relational", "fileinto", "vacation", "index", "variables"];
if allof(header :is "from" "boss@example.com",
         date :value "ge" :originalzone "date" "hour" "09",
         date :value "lt" :originalzone "date" "hour" "17")
{ fileinto "urgent"; }
if allof(currentdate :value "ge" "date" "2007-06-30",
         currentdate :value "le" "date" "2007-07-07")
{ vacation :days 7  "I'm away during the first week in July."; }
if currentdate :matches "month" "*" { set "month" "${1}"; }
if currentdate :zone "+0100" :matches "iso8601" "*" { set "date" "${0}"; }
if date :zone "-0500" :index 1 :last "received" "weekday" "0" { discard; }
if header :index 2 :matches "received" "*" { keep; }
if address :index 1 :is "from" "a@b.example" { keep; }
""",
    "5230 vacation": """
require ["vacation", "vacation-seconds"];
if header :contains "subject" "cyrus" {
    vacation "I'm out -- send mail to cyrus-bugs";
} else {
    vacation "I'm out -- call me at +1 304 555 0123";
}
vacation :days 23 :addresses ["tjs@example.edu", "ts4z@landru.example.edu"]
   "I'm away until October 19.  If it's an emergency, call 911, I guess." ;
vacation :mime text:
Content-Type: multipart/alternative; boundary=foo

--foo

I'm at the beach relaxing.

--foo--
.
;
vacation :subject "Gone fishin'" :from "hemingway@example.com"
   :handle "ran-away" "Having lots of fun! Back in a day or two!";
vacation :seconds 1800 "back soon";
""",
    "7352 duplicate": """
require ["duplicate", "fileinto", "mailbox", "variables", "imap4flags"];
if duplicate { fileinto :create "Trash/Duplicate"; }
if duplicate :header "X-Event-ID" :handle "notifier" { discard; }
if header :matches "subject" "ALERT: *" {
  if duplicate :seconds 60 :uniqueid "${1}" { setflag "\\\\seen"; }
}
if duplicate :last :seconds 3600 { stop; }
""",
    "5293 editheader": """
require ["editheader", "index"];
addheader "X-Source" "mta.example.com";
addheader :last "X-Hello" "World";
deleteheader :index 1 :last "received";
deleteheader :contains "x-spam-status" "yes";
deleteheader "x-mine";
""",
    "6609 include": """
require ["include", "variables"];
include :personal "always_allow";
include :global :once "spam_tests";
include :optional "maybe";
global ["test", "test_mailbox"];
set "test" "$$";
return;
""",
    "5490 mailbox": """
require ["fileinto", "mailbox"];
if mailboxexists "Partners" { fileinto "Partners"; } else { fileinto :create "Partners"; }
""",
    "5228 §2.4.2.4 encoded-character": """
require "encoded-character";
if header :contains "subject" "$${hex:24 24}" { discard; }
""",
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_rfc_examples_parse(name: str) -> None:
    script = parse(EXAMPLES[name])
    assert script.commands


def test_requires_are_collected() -> None:
    script = parse('require "fileinto";\nrequire ["vacation-seconds", "copy"];')
    # RFC 6131 §2: vacation-seconds implies vacation.
    assert script.requires == {"fileinto", "vacation-seconds", "vacation", "copy"}


def test_supported_names_every_capability_the_table_uses() -> None:
    used = set()
    for spec in [*COMMANDS.values(), *TESTS.values()]:
        used.update(spec.capability)
        used.update(tag.capability for tag in spec.tags.values() if tag.capability)
    assert used <= SUPPORTED
    assert "comparator-i;ascii-numeric" in SUPPORTED


BAD = [
    # (script, line, column, message fragment)
    ("frobnicate;", 1, 1, "unknown command 'frobnicate'"),
    ('fileinto "x";', 1, 1, 'it needs require "fileinto"'),
    ('if body :text "x" {}', 1, 4, 'it needs require "body"'),
    ('keep;\nrequire "fileinto";', 2, 1, "at top level at the beginning of the file"),
    ('if true { require "fileinto"; }', 1, 11, "top level"),
    ('require "frobnicate";', 1, 9, "unknown Sieve capability 'frobnicate'"),
    ('require ["fileinto", "x-nope"];', 1, 9, "unknown Sieve capability 'x-nope'"),
    ("require 3;", 1, 9, "expects a string list as its capabilities argument"),
    ("elsif true {}", 1, 1, "must follow an if or elsif"),
    ("if true {} keep; else {}", 1, 18, "must follow an if or elsif"),
    ("if true {} else {} else {}", 1, 20, "must follow an if or elsif"),
    ("if true;", 1, 1, "requires a command block"),
    ("keep {}", 1, 1, "does not accept a command block"),
    ("if {}", 1, 1, "requires one test, but none"),
    ("if (true) {}", 1, 5, "requires one test, but a test list"),
    ("if anyof true {}", 1, 10, "requires a test list"),
    ("if not (true) {}", 1, 9, "requires one test"),
    ("keep true;", 1, 6, "accepts no tests"),
    ("if true false {}", 1, 9, "the true test accepts no tests"),
    ("if frob {}", 1, 4, "unknown test 'frob'"),
    ('redirect :copy "a@b";', 1, 10, "unknown tagged argument ':copy'"),
    ('redirect :frob "a@b";', 1, 10, "unknown tagged argument ':frob'"),
    ("redirect;", 1, 1, "expects a string as its address argument, but none"),
    ('redirect ["a@b", "c@d"];', 1, 10, "but a string list was found"),
    ('redirect "a@b" "c@d";', 1, 16, "takes 1 positional argument, but 2"),
    ("discard 3;", 1, 9, "takes no positional arguments"),
    ('if header :is :contains "a" "b" {}', 1, 15, "one match type argument"),
    ('if address :all :domain "to" "b" {}', 1, 17, "one address part argument"),
    ('if header :is :is "a" "b" {}', 1, 15, "more than once"),
    ('if header "a" :is "b" {}', 1, 15, "comes after a positional argument"),
    ('if header :comparator "i;frob" "a" "b" {}', 1, 23, "unknown comparator 'i;frob'"),
    (
        'if header :comparator "i;ascii-numeric" "a" "b" {}',
        1,
        23,
        'require "comparator-i;ascii-numeric"',
    ),
    ('if header :comparator ["i;octet"] "a" "b" {}', 1, 23, "requires a string argument"),
    ('if header :comparator "a" {}', 1, 4, "header names argument, but none"),
    ('if header :count "ge" "a" "1" {}', 1, 11, 'it needs require "relational"'),
    ('require "relational";\nif header :count "big" "a" "1" {}', 2, 18, "invalid relational"),
    ('if address :user "to" "a" {}', 1, 12, 'it needs require "subaddress"'),
    ('if header :index 1 "a" "b" {}', 1, 11, 'it needs require "index"'),
    ('require "index";\nif header :last "a" "b" {}', 2, 11, "needs :index"),
    ('require "index";\nif header :index "a" "b" {}', 2, 18, "requires a number argument"),
    ("if size 10 {}", 1, 4, "requires one of the size tags (:over, :under)"),
    ('if size :over "10" {}', 1, 15, "expects a number as its limit argument"),
    ("if size :over :under 1 {}", 1, 15, "one size argument"),
    ('require "vacation";\nvacation :seconds 10 "x";', 2, 10, "vacation-seconds"),
    ('require "vacation-seconds";\nvacation :days 1 :seconds 10 "x";', 2, 18, "one period"),
    ('require "vacation";\nvacation :days "x" "y";', 2, 16, "requires a number argument"),
    ('require "vacation";\nvacation :mime;', 2, 1, "expects a string as its reason"),
    ('require "fileinto";\nfileinto :create "x";', 2, 10, 'it needs require "mailbox"'),
    ('require "fileinto";\nfileinto :flags "a" "x";', 2, 10, 'it needs require "imap4flags"'),
    ('require "variables";\nset "1abc" "x";', 2, 5, "invalid variable name"),
    ('require "variables";\nset :lower :upper "a" "x";', 2, 12, "one case modifier"),
    ('require "date";\nif currentdate "century" "x" {}', 2, 16, "unknown date part"),
    ('require "date";\nif currentdate :zone "CET" "year" "x" {}', 2, 22, "invalid time zone"),
    ('require "date";\nif date :zone "+0100" :originalzone "d" "year" "x" {}', 2, 23, "one zone"),
    ('require "duplicate";\nif duplicate :header "a" :uniqueid "b" {}', 2, 26, "one unique id"),
    ('require "editheader";\ndeleteheader :last "a";', 2, 14, "needs :index"),
    ('require "editheader";\naddheader "a";', 2, 1, "expects a string as its value"),
    ('require "include";\ninclude :personal :global "a";', 2, 19, "one location"),
    ('require "include";\nglobal "a";', 2, 1, 'it needs require "variables"'),
    ('require "imap4flags";\nsetflag;', 2, 1, "expects a string list as its list of flags"),
    ('require "imap4flags";\nsetflag ["a"] ["b"];', 2, 9, "expects a string as its variable"),
    ('require "imap4flags";\nsetflag "a" "b" "c";', 2, 17, "takes 2 positional arguments"),
    ('require "imap4flags";\nsetflag "a" "b";', 2, 9, 'it needs require "variables"'),
    ('require "imap4flags";\nif hasflag "a" "b" {}', 2, 12, 'it needs require "variables"'),
    ('require "mailbox";\nif mailboxexists {}', 2, 4, "expects a string list"),
    ('if address ["to", "Subject"] "x" {}', 1, 12, "header 'Subject' is not allowed"),
    ('require "envelope";\nif envelope "foo" "x" {}', 2, 13, "envelope part 'foo'"),
    ('require "vacation";\nvacation :from "bad" "x";', 2, 16, ":from address 'bad'"),
    ('require "include";\ninclude "a/b";', 2, 9, "invalid script name 'a/b'"),
    ('require "variables";\nset "a.b" "x";', 2, 5, "unknown namespace 'a'"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), BAD)
def test_bad_scripts(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(SieveError) as info:
        parse(text)
    assert fragment in info.value.message
    assert info.value.position == Position(line, column)
