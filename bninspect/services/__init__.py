"""Services: each takes BN layers and options and returns a plain result dataclass. No printing."""
