"""Fuzzing the config file beyond tests/sansmail/test_config.py: every key the file
knows, set to any TOML value (of the right type or not, in range or not), gives a
Config or a ConfigError with problems, never another exception."""

from __future__ import annotations

from fuzz_drivers import check_config, config_keys
from hypothesis import given, settings
from hypothesis import strategies as st

KEYS = config_keys()

strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "5m",
            "0s",
            "1w",
            "-1s",
            "99999999999999999999d",
            "500M",
            "10G",
            "0",
            "1.5h",
            "[::1]:25",
            "127.0.0.1:0",
            "[relay.example]:587",
            "host:99999",
            "10.0.0.1/8",
            "::/0",
            "~/x",
            "/nonexistent",
            "postgresql://u:p@h/db",
            "json",
            "text",
            "off",
            "normalize",
            "reject",
            "PLAIN",
            "SCRAM-SHA-256",
            "reject_unauth_destination",
            "permit",
            "a.example",
            "",
        ]
    ),
)
scalars = st.one_of(
    strings.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.sampled_from(
        [
            "true",
            "false",
            "0.5",
            "-0.0",
            "inf",
            "nan",
            "1979-05-27",
            "07:32:00",
            "1979-05-27T07:32:00Z",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(st.sampled_from(["a", "b", "port"]), inner), max_size=3).map(
            lambda pairs: "{" + ", ".join(f"{k} = {v}" for k, v in dict(pairs).items()) + "}"
        ),
    ),
    max_leaves=6,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=4))
def test_any_value_for_any_key(assignments: list[tuple[tuple[str, str], str]]) -> None:
    by_table: dict[str, dict[str, str]] = {}
    for (table, key), value in assignments:
        by_table.setdefault(table, {})[key] = value
    # Top-level keys first: after a [table] header they would belong to it.
    text = "".join(f"{key} = {value}\n" for key, value in by_table.pop("", {}).items())
    for table, entries in by_table.items():
        text += f"[{table}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items())
    check_config(text)
