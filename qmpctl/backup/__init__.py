"""Backup workflows: one-off backups, nightly chains, their folders and manifests, verify and restore.

Built on :mod:`qmpctl.vm` and :mod:`qmpctl.guest` (the freezer); never imports the cli wing.
"""
