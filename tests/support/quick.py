"""The quick commands: one or two exchanges, run by scripts in loops, held to the start-up budget.

tests/project/test_import_budget.py holds them to it module by module, and
tests/bench/bench.py times each within 1.3x ``status``; every other command is
a long workflow (seconds to hours), held only to "no Typer, no jsonschema".
"""

QUICK = frozenset({
    ("status",), ("stop",), ("cont",), ("monitor-command",), ("block",), ("jobs",), ("stats",), ("throttle",),
    ("balloon",), ("events",), ("agent", "ping"), ("agent", "info"), ("agent", "interfaces"), ("agent", "command"),
    ("agent", "exec"), ("agent", "exec-status"),
})
