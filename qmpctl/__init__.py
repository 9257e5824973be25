"""qmpctl: one-shot QMP and guest-agent commands with exit codes scripts can trust."""

__version__ = "0.1.0"
