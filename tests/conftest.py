"""Test plugins: each fixture module registers the real components it starts."""

import importlib.util

_PLUGINS = [
    "tests.fixtures.app",
    "tests.fixtures.postgres",
    "tests.fixtures.providers",
    "tests.fixtures.s3",
    "tests.fixtures.runtime",
    "tests.fixtures.docker",
]
pytest_plugins = [name for name in _PLUGINS if importlib.util.find_spec(name) is not None]
