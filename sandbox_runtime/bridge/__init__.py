"""The bridge: WebSocket link between the env server session and the control plane (see ``client``)."""
