"""VM operations through QMP: run state, block devices and jobs, performance, migration, saved state.

Built on :mod:`qmpctl.wire`; never imports the guest, backup or cli wings.
"""
