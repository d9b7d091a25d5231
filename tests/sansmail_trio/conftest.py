from realfilters import (  # noqa: F401  (fixtures, shared by the modules that use them)
    rspamd_milter_fixture,
    spamass_milter_reject_fixture,
    spamass_milter_report_fixture,
    spamass_milter_tag_fixture,
    spamd_fixture,
)
from trio_helpers import client_tls, start_server, tls_ca, tls_files  # noqa: F401  (fixtures)
