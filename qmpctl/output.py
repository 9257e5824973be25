"""How replies look on stdout: compact by default, like virsh; indented by 2 with --pretty."""

from __future__ import annotations

import json

from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


def to_json(value: Any, pretty: bool = False) -> str:
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render_reply(reply: dict[str, Any], *, pretty: bool, return_value: bool) -> str:
    """The reply (qmpctl's id already removed), or only its ``return`` value."""
    return to_json(reply.get("return") if return_value else reply, pretty)


def hmp_text(text: str) -> str:
    """HMP answers with CRLF line ends; scripts want plain newlines."""
    return text.replace("\r\n", "\n")
