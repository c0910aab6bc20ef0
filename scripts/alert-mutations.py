#!/usr/bin/env python3
"""Mutation check of the alert unit tests (not in scripts/test.sh: about 4 minutes).

For every alert in alerts/alerts.rules.yml, its expression is replaced by one that never fires
and by one that always fires; `promtool test rules` must fail both times, so every alert has a
firing and a not-firing case that notice a broken expression. Run from the repository root:
    python3 scripts/alert-mutations.py [ALERT ...]   # every alert, or only those named
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

SRC = open("alerts/alerts.rules.yml").read()


def replace_expr(text, name, new):
    """The rules with alert `name`'s expression (up to its `for:` or `labels:`) replaced."""
    i = text.index(f"- alert: {name}\n")
    j = text.index("        expr:", i)
    labels = text.index("        labels:", j)
    k = text.find("        for:", j, labels)
    return text[:j] + f"        expr: {new}\n" + text[k if k >= 0 else labels :]


def main():
    work = tempfile.mkdtemp()
    for f in ["recording.rules.yml", "rules.test.yml", "cost.test.yml"]:
        shutil.copy("alerts/" + f, work)
    ok = True
    names = re.findall(r"- alert: (\w+)", SRC)
    unknown = set(sys.argv[1:]) - set(names)
    if unknown:
        raise SystemExit(f"no such alert: {', '.join(sorted(unknown))}")
    for name in [n for n in names if n in sys.argv[1:] or not sys.argv[1:]]:
        for label, expr in [("never", "vector(1) == 2"), ("always", "vector(1)")]:
            with open(os.path.join(work, "alerts.rules.yml"), "w") as f:
                f.write(replace_expr(SRC, name, expr))
            r = subprocess.run(["promtool", "test", "rules", "rules.test.yml", "cost.test.yml"],
                               cwd=work, capture_output=True, text=True)
            caught = r.returncode != 0
            ok &= caught
            print(f"{name:34} {label:6} {'caught' if caught else 'NOT CAUGHT'}", flush=True)
    shutil.rmtree(work)
    print("every broken expression was caught" if ok else "SOME BROKEN EXPRESSIONS PASSED THE TESTS")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
