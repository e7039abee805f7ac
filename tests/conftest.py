"""Test plugins: each fixture module starts the real components its tests need."""

pytest_plugins = [
    # app and daytona_api first: providers imports them, and a plugin must be registered before it is imported.
    "tests.fixtures.app",
    "tests.fixtures.daytona_api",
    "tests.fixtures.docker",
    "tests.fixtures.kubernetes",
    "tests.fixtures.providers",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.runtime",
    "tests.fixtures.control_plane",
    "tests.fixtures.callbacks",
    "tests.fixtures.terraform",
]
