"""The in-sandbox supervisor: repository boot, env server, bridge. Imports nothing from ``app``."""
