"""A module whose import fails on a missing third-party package (for the registry test)."""

import surely_not_an_installed_package  # noqa: F401
