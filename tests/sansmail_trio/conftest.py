import os
from collections.abc import Iterator

import pytest
from realfilters import (  # noqa: F401  (fixtures, shared by the modules that use them)
    rspamd_milter_fixture,
    spamass_milter_reject_fixture,
    spamass_milter_report_fixture,
    spamass_milter_tag_fixture,
    spamd_fixture,
)
from trio_helpers import (  # noqa: F401  (fixtures)
    backend_dsn,
    client_tls,
    server_backend,
    start_server,
    tls_ca,
    tls_files,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `server_backend` with the closest ``server_backends`` mark: a test's
    own mark replaces its module's."""
    mark = metafunc.definition.get_closest_marker("server_backends")
    if mark is not None and "server_backend" in metafunc.fixturenames:
        metafunc.parametrize("server_backend", mark.args)


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """`sansmail-trio serve` sets umask 077 for the server's files; run in-process (the
    CLI tests), it would stay for every later test of this worker, and the Postfix the
    bench tests start cannot then read its own queue folders."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)
