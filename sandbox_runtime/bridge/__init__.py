"""The bridge: WebSocket link between the env server session and the control plane (see ``client``)."""

SESSION_FROM_STDIN = "--session-from-stdin"
"""Argument of a standby bridge: read the environment from stdin first (see ``__main__``).

Defined here, where importing it costs nothing, because the supervisor needs it too."""
