"""The wire: addresses, transports (unix, TCP, SSH, libvirt), sessions, request building and schemas.

Knows how to reach a VM and exchange validated messages with QEMU or its
guest agent; knows nothing of what the messages are for. Imports only the
top-level shared modules (errors, deadline, signals, records).
"""
