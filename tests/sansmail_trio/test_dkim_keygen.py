"""`sansmail-trio dkim keygen`: the key written under data_dir, the record printed, the
errors in one line."""

from __future__ import annotations

import pathlib
import re
import stat

import dkim as dkimpy
import pytest

from sansmail.mail import dkim
from sansmail_trio._cli import main

CONFIG = """\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
[dkim]
selector = "{selector}"
"""


@pytest.fixture
def config_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "sansmail.toml"
    path.write_text(CONFIG.format(selector="sansmail"))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def record_value(line: str) -> str:
    """The TXT value of a zone-file line: its quoted strings joined."""
    return "".join(re.findall(r'"([^"]*)"', line))


def test_keygen_rsa(capsys, config_file: pathlib.Path) -> None:
    status, out, err = run(capsys, "dkim", "keygen", "Example.TEST", "--config", str(config_file))
    assert (status, err) == (0, "")
    record, where = out.splitlines()
    assert record.startswith('sansmail._domainkey.example.test. IN TXT "v=DKIM1; k=rsa; p=')
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', record))
    key = config_file.parent / "data/dkim/example.test/sansmail.key"
    assert where.startswith("; ")
    assert str(key) in where
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    txt = record_value(record)
    assert (key.with_suffix(".txt")).read_text() == txt + "\n"
    assert dkim.txt_record(key.read_bytes()) == txt
    # The key signs, and dkimpy verifies against the printed record.
    message = b"From: a@example.test\r\nTo: b@far.test\r\n\r\nhi\r\n"
    field = dkim.sign(
        message, domain="example.test", selector="sansmail", private_key=key.read_bytes()
    )
    lookup = {b"sansmail._domainkey.example.test.": txt.encode()}
    assert dkimpy.verify(field + message, dnsfunc=lambda name, timeout=5: lookup.get(name))


def test_keygen_ed25519_selector_option(capsys, config_file: pathlib.Path) -> None:
    status, out, _err = run(
        capsys,
        "dkim",
        "keygen",
        "example.test",
        "--selector",
        "ed2026",
        "--algorithm",
        "ed25519",
        "--config",
        str(config_file),
    )
    assert status == 0
    assert out.startswith('ed2026._domainkey.example.test. IN TXT "v=DKIM1; k=ed25519; p=')
    key = config_file.parent / "data/dkim/example.test/ed2026.key"
    assert dkim.key_algorithm(key.read_bytes()) == "ed25519"


def test_keygen_selector_from_the_configuration(capsys, tmp_path: pathlib.Path) -> None:
    config = tmp_path / "sansmail.toml"
    config.write_text(CONFIG.format(selector="s2026"))
    status, out, _err = run(capsys, "dkim", "keygen", "example.test", "--config", str(config))
    assert status == 0
    assert out.startswith("s2026._domainkey.example.test. IN TXT")
    assert (tmp_path / "data/dkim/example.test/s2026.key").exists()


def test_keygen_never_overwrites_without_force(capsys, config_file: pathlib.Path) -> None:
    argv = ["dkim", "keygen", "example.test", "--config", str(config_file)]
    assert run(capsys, *argv)[0] == 0
    key = config_file.parent / "data/dkim/example.test/sansmail.key"
    first = key.read_bytes()
    status, out, err = run(capsys, *argv)
    assert (status, out) == (1, "")
    assert err.startswith("sansmail-trio: dkim keygen: ")
    assert "--force" in err
    assert len(err.splitlines()) == 1
    assert key.read_bytes() == first
    assert run(capsys, *argv, "--force")[0] == 0
    assert key.read_bytes() != first


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["../etc"], "is not a valid domain"),
        (["exa mple.test"], "is not a valid domain"),
        (["example.test", "--selector", "../x"], "not a valid DKIM selector"),
    ],
)
def test_keygen_bad_names(capsys, config_file: pathlib.Path, argv, message) -> None:
    status, out, err = run(capsys, "dkim", "keygen", *argv, "--config", str(config_file))
    assert (status, out) == (1, "")
    assert message in err
    assert len(err.splitlines()) == 1
    assert not (config_file.parent / "data").exists()


def test_keygen_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["dkim", "keygen", "--help"])
    out = capsys.readouterr().out
    for phrase in ("DOMAIN", "--selector NAME", "--algorithm", "--force", "<data_dir>/dkim/"):
        assert phrase in out
