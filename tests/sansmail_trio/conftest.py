from trio_helpers import start_server  # noqa: F401  (re-exported as a fixture)
