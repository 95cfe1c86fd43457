from prepare_helpers import http_server  # noqa: F401  (fixture)
