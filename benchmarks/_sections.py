"""Result files made of per-part sections (``bench_kcover.py``, ``bench_mae.py``).

A benchmark with several parts writes ``results/<name>.md`` as one section per part, each between
``<!-- part: NAME -->`` and ``<!-- /part: NAME -->`` and stamped with its own date, machine, load
and command. A run of some parts replaces those parts' sections and keeps the others exactly as
they are in the committed result file (so ``--part million`` does not erase the rest); a run of
every part rewrites the whole file. Only the committed ``results/`` file is read, never ``_out/``.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

from _common import RESULTS, machine, write_result

_SECTION_RE = re.compile(r"<!-- part: (\w+) -->\n(.*?)\n<!-- /part: \1 -->", re.S)


def committed_sections(text: str) -> dict[str, str]:
    """The sections of a result file's text, by part name (empty when it has none)."""
    return {m.group(1): m.group(2) for m in _SECTION_RE.finditer(text)}


def stamp(command: str, load: tuple[float, float] | None = None) -> str:
    """The line that opens a freshly measured section: date, machine, load average, command."""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    la = f", 1-minute load average {load[0]:.1f} at the start and {load[1]:.1f} at the end" if load else ""
    return f"*Measured {when} on {machine()}{la}; command: `{command}`.*"


def loadavg() -> float:
    return float(os.getloadavg()[0])


def write_sections(name: str, title: str, intro: str, order: list[str], measured: dict[str, str],
                   command: str) -> Path:
    """Write ``results/<name>.md``: the ``measured`` sections (already stamped) and, for the parts
    in ``order`` not measured in this run, the sections of the committed file."""
    path = RESULTS / f"{name}.md"
    kept = committed_sections(path.read_text(encoding="utf-8")) if path.exists() else {}
    blocks = []
    for part in order:
        body = measured.get(part, kept.get(part))
        if body is not None:
            blocks.append(f"<!-- part: {part} -->\n{body.strip()}\n<!-- /part: {part} -->")
    return write_result(name, title, intro.strip() + "\n\n" + "\n\n".join(blocks), command)
