"""tempint: temporal user-item interaction prediction under one streaming protocol."""

__version__ = "0.1.0"
