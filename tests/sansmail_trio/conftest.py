from trio_helpers import client_tls, start_server, tls_ca, tls_files  # noqa: F401  (fixtures)
