"""Test plugins: each fixture module starts the real components its tests need."""

pytest_plugins = [
    "tests.fixtures.docker",
    "tests.fixtures.kubernetes",
    "tests.fixtures.providers",
    "tests.fixtures.app",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.runtime",
    "tests.fixtures.control_plane",
    "tests.fixtures.callbacks",
    "tests.fixtures.terraform",
    "tests.fixtures.daytona_api",
]
