"""Summarise an Autobahn|Testsuite ``index.json`` per agent; exit 1 on any failure.

Usage: python summary.py OUTDIR/index.json RECORD.json [RECORD.json ...]

Each RECORD.json is what ``client.py --result-file`` wrote (agent, the case
count the server reported, client errors). Per agent: cases run, counts per
``behavior`` and per ``behaviorClose``, the ids of FAILED cases. Fails when a
case FAILED (either column; also the close verdicts Autobahn gives instead of
OK: UNCLEAN, WRONG CODE, FAILED BY CLIENT), when fewer cases ran than the
server reported, or when the client hit errors.
"""

from __future__ import annotations

import json
import sys

BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def counts_line(values: list[str]) -> str:
    names = list(BEHAVIORS) + sorted({v for v in values if v not in BEHAVIORS})
    return "  ".join(f"{name} {values.count(name)}" for name in names)


def summarise(index: dict, record: dict) -> bool:
    agent = record["agent"]
    cases = index.get(agent, {})
    ids = sorted(cases, key=case_key)
    behavior = [cases[c]["behavior"] for c in ids]
    behavior_close = [cases[c]["behaviorClose"] for c in ids]
    failed = [c for c in ids if cases[c]["behavior"] not in ACCEPTED]
    failed_close = [c for c in ids if cases[c]["behaviorClose"] not in ACCEPTED]
    ok = True
    print(f"== {agent} (driver={record.get('driver', 'protocol')}, frame_path={record['frame_path']}) ==")
    print(f"  cases run:      {len(ids)} of {record['case_count']} reported by the server"
          f" ({record['seconds']:.1f} s)")
    print(f"  behavior:       {counts_line(behavior)}")
    print(f"  behaviorClose:  {counts_line(behavior_close)}")
    if failed:
        ok = False
        print("  FAILED (behavior):      " + ", ".join(
            f"{c} [{cases[c]['behavior']}]" for c in failed))
    if failed_close:
        ok = False
        print("  FAILED (behaviorClose): " + ", ".join(
            f"{c} [{cases[c]['behaviorClose']}]" for c in failed_close))
    if not failed and not failed_close:
        print("  FAILED ids:     none")
    if record["case_count"] == 0:
        ok = False
        print("  NO CASES: the server selected none (check --cases)")
    if len(ids) < record["case_count"]:
        ok = False
        print(f"  MISSING: {record['case_count'] - len(ids)} case(s) not in the report")
    if record["errors"]:
        ok = False
        for error in record["errors"]:
            print(f"  client error in case #{error['case']}: {error['error']}")
    return ok


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        index = json.load(fh)
    ok = True
    for path in argv[2:]:
        with open(path, encoding="utf-8") as fh:
            ok = summarise(index, json.load(fh)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
