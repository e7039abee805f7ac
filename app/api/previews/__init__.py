"""The preview proxy (HTTP layer): the gateway middleware, header rules and the relays."""
