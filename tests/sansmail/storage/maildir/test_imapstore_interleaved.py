"""What the multi-session tests against a server (tests/sansmail_trio/
test_imap_interleaved*.py) found in the store, each pinned down here on a view."""

from __future__ import annotations

import os
import pathlib

import pytest
from imapstore_helpers import account, deliver, letters, message, root


@pytest.mark.parametrize("move", [False, True])
def test_copy_of_a_file_another_tool_reflagged_carries_its_flags(
    tmp_path: pathlib.Path, move: bool
) -> None:
    name = deliver(tmp_path, message(1))
    mail = account(tmp_path)
    view = mail.select("INBOX")
    cur = root(tmp_path) / "cur"
    # mutt flags it: the index has not looked since, the file's name is the truth.
    os.rename(cur / f"{name}:2,", cur / f"{name}:2,FS")
    result = view.move([1], "Archive") if move else view.copy([1], "Archive")
    assert [source for source, _dest in result.uids] == [1]
    archive = mail.select("Archive")
    assert archive.messages[0].flags == {"\\Flagged", "\\Seen"}
    assert set(letters(root(tmp_path) / ".Archive").values()) == {"FS"}
    if not move:
        # The source keeps them too, and says so at its next sync.
        assert view.sync().flags == ((1, 1, frozenset({"\\Flagged", "\\Seen"})),)
