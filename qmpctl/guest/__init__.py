"""Guest operations through qemu-ga: exec, files, freeze, power, users.

Built on :mod:`qmpctl.wire` (and :mod:`qmpctl.vm` where a guest operation
needs the VM's side); never imports the backup or cli wings.
"""
