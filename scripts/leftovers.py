#!/usr/bin/env python3
"""Fails when a process started by the test suite outlived it.

scripts/test.sh exports PAYTRACE_TEST_RUN=<a value of this run> before the
tests; every process a test starts inherits it (browsers and drivers, demos,
aggregators, Prometheus, databases, SDK services). After the suite, any
process still carrying that value is a test that did not stop what it
started: it is named (with the test that started it, where nextest said),
killed, and the run fails.

    scripts/leftovers.py RUN-VALUE
"""

import os
import signal
import sys


def environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def ancestors():
    """This process and the ones above it (the test script itself)."""
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                # The field after the parenthesised command is the state,
                # then the parent's pid.
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/leftovers.py RUN-VALUE")
    run = sys.argv[1]
    mine = ancestors()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        env = environ(name)
        if env.get("PAYTRACE_TEST_RUN") == run:
            test = env.get("NEXTEST_TEST_NAME") or env.get("NEXTEST_BINARY_ID") or "?"
            found.append((int(name), test, cmdline(name)))
    if not found:
        print("==> no process outlived the tests")
        return
    print(f"error: {len(found)} processes started by the tests are still running:", file=sys.stderr)
    for pid, test, cmd in sorted(found):
        print(f"  pid {pid} (test {test}): {cmd[:200]}", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    sys.exit(1)


if __name__ == "__main__":
    main()
