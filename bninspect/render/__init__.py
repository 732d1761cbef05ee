"""Renderers: each turns one service's result dataclass into a rich table, text or JSON."""
