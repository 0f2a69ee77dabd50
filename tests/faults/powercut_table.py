"""Print `make powercut`'s table from the figures test_powercut.py wrote (JSON lines).

Usage: ``python -m tests.faults.powercut_table FILE``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (
    ("case", "case"),
    ("cuts", "cuts"),
    ("committed", "committed"),
    ("lost (mqtt/tsdb)", "lost"),
    ("duplicates (mqtt/tsdb)", "duplicates"),
    ("corrupt stores", "corrupt_stores"),
    ("LazyFS faults fired", "fired"),
)


def rows(path: Path) -> list[dict[str, str]]:
    """One row per case, its last figures when a case ran more than once."""
    by_case: dict[str, dict[str, object]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            figures = json.loads(line)
            by_case[str(figures["case"])] = figures
    out = []
    for f in by_case.values():
        out.append(
            {
                "case": str(f["case"]),
                "cuts": str(f["cuts"]),
                "committed": str(f["committed"]),
                "lost": f"{f['lost_mqtt']} / {f['lost_influx']}",
                "duplicates": f"{f['duplicates_mqtt']} / {f['duplicates_influx']}",
                "corrupt_stores": str(f["corrupt_stores"]),
                # A crash fault that never fired fell back to killing LazyFS.
                "fired": f"{int(str(f['cuts'])) - int(str(f['crash_faults_missed']))}"
                if "crash" in str(f["case"]) or "torn" in str(f["case"])
                else "-",
            }
        )
    return out


def table(path: Path) -> str:
    """The figures as a Markdown table (pasteable into README)."""
    body = rows(path)
    if not body:
        return "no power-cut figures (did any case run?)"
    widths = [max(len(title), *(len(r[key]) for r in body)) for title, key in COLUMNS]
    lines = [
        "| " + " | ".join(t.ljust(w) for (t, _), w in zip(COLUMNS, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for r in body:
        cells = [r[key].ljust(w) for (_, key), w in zip(COLUMNS, widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    path = Path(sys.argv[1])
    if not path.exists():
        print(f"no power-cut figures in {path}")
        return 1
    print(table(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
