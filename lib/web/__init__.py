"""The gateway's HTTP side (SPEC §11): imported only when gateway.port is not 0."""
