"""`sansmail-trio dns-records`: the records printed, and --check against an authoritative
server on 127.0.0.1 (dns_server.py) that publishes what was printed, or not quite."""

from __future__ import annotations

import pathlib

import pytest
from dns_server import DNSServer, dns_server_fixture  # noqa: F401  (fixture)

from sansmail_trio._cli import main


@pytest.fixture
def config_file(tmp_path: pathlib.Path, dns_server: DNSServer) -> pathlib.Path:
    path = tmp_path / "sansmail.toml"
    path.write_text(
        'hostname = "mx.example.test"\n'
        'domains = ["example.test", "other.test"]\n'
        'data_dir = "data"\n'
        "[dns]\n"
        f'nameservers = ["{dns_server.host_port}"]\n'
        "[listen]\n"
        'smtp = "0.0.0.0:25"\n'
        'submissions = "0.0.0.0:465"\n'
        'imaps = "0.0.0.0:993"\n'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err.splitlines()


def keygen(capsys: pytest.CaptureFixture[str], config: pathlib.Path) -> str:
    status, out, _ = run(capsys, "dkim", "keygen", "example.test", "--config", str(config))
    assert status == 0
    return out.splitlines()[0]


def publish(dns: DNSServer, zone: str) -> list[str]:
    """Every record line of `zone` added to the server; the lines."""
    records = [line for line in zone.splitlines() if line and not line.startswith(";")]
    for line in records:
        name, _in, rtype, data = line.split(" ", 3)
        dns.add(name, rtype, data)
    return records


def test_prints_the_zone_with_the_dkim_record_of_the_key(capsys, config_file):
    dkim_line = keygen(capsys, config_file)
    status, out, err = run(capsys, "dns-records", "example.test", "--config", str(config_file))
    assert (status, err) == (0, [])
    lines = out.splitlines()
    assert "example.test. IN MX 10 mx.example.test." in lines
    assert 'example.test. IN TXT "v=spf1 mx -all"' in lines
    assert dkim_line in lines  # the same line as dkim keygen printed, strings split alike
    assert "_submissions._tcp.example.test. IN SRV 0 1 465 mx.example.test." in lines
    assert "_submission._tcp.example.test. IN SRV 0 0 0 ." in lines


def test_a_domain_that_is_not_configured_is_one_line_and_exit_1(capsys, config_file):
    status, out, err = run(capsys, "dns-records", "elsewhere.test", "--config", str(config_file))
    assert status == 1
    assert out == ""
    assert err == [
        "sansmail-trio: dns-records: elsewhere.test is not one of the configured domains "
        f"(example.test, other.test) in {config_file}"
    ]
    status, _, err = run(capsys, "dns-records", "bad..name", "--config", str(config_file))
    assert status == 1
    assert len(err) == 1


def test_check_passes_when_what_was_printed_is_published(capsys, config_file, dns_server):
    keygen(capsys, config_file)
    _, zone, _ = run(capsys, "dns-records", "example.test", "--config", str(config_file))
    published = publish(dns_server, zone)
    dns_server.add("mx.example.test", "A", "192.0.2.10")
    dns_server.add("10.2.0.192.in-addr.arpa", "PTR", "mx.example.test.")
    status, out, err = run(
        capsys, "dns-records", "example.test", "--check", "--config", str(config_file)
    )
    assert (status, err) == (0, [])
    lines = out.splitlines()
    assert len(lines) == len(published) + 1
    assert lines[-1].startswith("ok        PTR        10.2.0.192.in-addr.arpa. IN PTR mx.example")
    assert all(line.startswith("ok ") for line in lines), out
    assert {(q.name, q.rdtype) for q in dns_server.queries} >= {
        ("example.test", "MX"),
        ("sansmail._domainkey.example.test", "TXT"),
        ("_imaps._tcp.example.test", "SRV"),
        ("autoconfig.example.test", "CNAME"),
        ("mx.example.test", "A"),
        ("mx.example.test", "AAAA"),
        ("10.2.0.192.in-addr.arpa", "PTR"),
    }


def test_check_fails_on_a_missing_or_different_required_record(capsys, config_file, dns_server):
    keygen(capsys, config_file)
    _, zone, _ = run(capsys, "dns-records", "example.test", "--config", str(config_file))
    publish(dns_server, zone)
    dns_server.remove("example.test", "TXT")  # no SPF
    dns_server.add("example.test", "TXT", '"google-site-verification=abc"')
    dns_server.remove("sansmail._domainkey.example.test")
    dns_server.add("sansmail._domainkey.example.test", "TXT", '"v=DKIM1; k=rsa; p=OLDKEY"')
    dns_server.remove("_dmarc.example.test")  # not required: reported, no failure of its own
    dns_server.add("mx.example.test", "AAAA", "2001:db8::25")  # no PTR: not required either
    status, out, err = run(
        capsys, "dns-records", "example.test", "--check", "--config", str(config_file)
    )
    assert status == 1
    lines = out.splitlines()
    assert any(line.startswith("missing   SPF ") for line in lines), out
    assert any(line.startswith("different DKIM ") for line in lines), out
    assert any(line.startswith("missing   DMARC ") for line in lines), out
    assert "published: v=DKIM1; k=rsa; p=OLDKEY" in [line.strip() for line in lines]
    assert lines[-1].startswith("missing   PTR        5.2.0.0.0.0.0.0"), out
    assert err == [
        "sansmail-trio: dns-records: example.test: not published as printed: "
        "SPF missing, DKIM different"
    ]


def test_check_fails_when_the_mx_host_has_no_address(capsys, config_file, dns_server):
    keygen(capsys, config_file)
    _, zone, _ = run(capsys, "dns-records", "example.test", "--config", str(config_file))
    publish(dns_server, zone)
    status, out, err = run(
        capsys, "dns-records", "example.test", "--check", "--config", str(config_file)
    )
    assert status == 1
    assert out.splitlines()[-1] == (
        "missing   MX         mx.example.test. IN A <its public address>"
    )
    assert err == ["sansmail-trio: dns-records: example.test: not published as printed: MX missing"]


def test_check_without_a_dkim_key_fails_and_says_how_to_make_one(capsys, config_file, dns_server):
    _, zone, _ = run(capsys, "dns-records", "example.test", "--config", str(config_file))
    assert "sansmail-trio dkim keygen example.test" in zone
    publish(dns_server, zone)
    status, _, err = run(
        capsys, "dns-records", "example.test", "--check", "--config", str(config_file)
    )
    assert status == 1
    assert err == [
        "sansmail-trio: dns-records: example.test: not published as printed: MX missing, "
        "no DKIM key for selector 'sansmail' (make one with `sansmail-trio dkim keygen "
        "example.test`)"
    ]


def test_check_when_the_name_server_fails_is_a_failure(capsys, config_file, dns_server):
    keygen(capsys, config_file)
    dns_server.fail("example.test", "servfail")
    status, out, _ = run(
        capsys, "dns-records", "example.test", "--check", "--config", str(config_file)
    )
    assert status == 1
    assert any(line.startswith("failed    MX ") for line in out.splitlines()), out


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["dns-records", "--help"])
    out = capsys.readouterr().out
    assert "sansmail-trio dns-records example.com --check" in out
