#!/usr/bin/env python3
"""Where an on-demand read through the exposed clone spends its time (bench/clone.sh).

usage: ondemand_phases.py <device> <reads> <seed> <target-comm>

Reads <reads> random 4 KiB O_DIRECT blocks of <device> (one per 64 KiB region, as the
latency rows do) with ftrace's scheduler, block and FUSE events on, in a tracing
instance of its own, and prints one line per phase: the median microseconds from one
event of a read to the next, then the median total. The phases split the path into the
kernel's part (reader, loop, FUSE), ours (the FUSE handler until the command leaves, and
from the answer until the FUSE reply) and the target's (<target-comm>, e.g. tgtd, woken
by our command until it wakes our handler with the answer), which a plain remote read
pays too. Tracing adds about 1 us per event; compare phases with each other, not the
total with the untraced rows. Needs root and tracefs.
"""
import mmap
import os
import random
import re
import statistics
import sys

TRACEFS = "/sys/kernel/tracing"
EVENTS = [
    "sched/sched_switch",
    "sched/sched_wakeup",
    "fuse/fuse_request_send",
    "fuse/fuse_request_end",
    "block/block_rq_issue",
    "block/block_rq_complete",
]
PHASES = [
    ("issue", "reader -> loop request issued"),
    ("fsend", "loop worker -> FUSE request sent"),
    ("fin", "FUSE request -> our handler running"),
    ("tgt", "ours: handler -> command at the target"),
    ("back", "target: command -> answer wakes our handler"),
    ("fend", "ours: answer -> FUSE reply"),
    ("done", "FUSE reply -> loop request complete"),
    ("end", "loop complete -> reader returns"),
]
LINE = re.compile(r"\s*(\S+)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+): (.*)")


def trace(device, reads, seed):
    if not os.path.isdir(TRACEFS + "/instances"):
        os.system(f"mount -t tracefs nodev {TRACEFS} 2>/dev/null")
    inst = f"{TRACEFS}/instances/meshdrain-bench-{os.getpid()}"
    os.mkdir(inst)
    try:
        with open(f"{inst}/buffer_size_kb", "w") as f:
            f.write("8192")
        for e in EVENTS:
            with open(f"{inst}/events/{e}/enable", "w") as f:
                f.write("1")
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
        size = os.lseek(fd, 0, os.SEEK_END)
        buf = mmap.mmap(-1, 4096)
        rng = random.Random(seed)
        regions = rng.sample(range(size // 65536), reads)
        with open(f"{inst}/trace_marker", "w") as mark, open(f"{inst}/tracing_on", "w") as on:
            on.write("1")
            on.flush()
            for r in regions:
                mark.write("R start\n")
                mark.flush()
                os.preadv(fd, [buf], r * 65536 + rng.randrange(16) * 4096)
                mark.write("R end\n")
                mark.flush()
            on.write("0")
        os.close(fd)
        with open(f"{inst}/trace") as f:
            return f.read().splitlines()
    finally:
        os.rmdir(inst)


def marks_of(events, target):
    """The time of each phase's first event within one read, or None if one is missing."""
    m, handler = {}, None
    for comm, pid, t, name, rest in events:
        if name == "block_rq_issue":
            m.setdefault("issue", t)
        elif name == "fuse_request_send":
            m.setdefault("fsend", t)
        elif name == "sched_switch" and "fsend" in m and "fin" not in m:
            # whoever the loop worker hands the CPU to first is our FUSE handler
            # (or the handler is woken on the other CPU: its first wake-up below)
            nxt = re.search(r"next_comm=(.*) next_pid=(\d+)", rest)
            if nxt and nxt.group(1).startswith("fuser"):
                m["fin"], handler = t, nxt.group(2)
        elif name == "sched_wakeup" and "fin" in m and "tgt" not in m and f"comm={target} " in rest:
            m["tgt"] = t
        elif name == "sched_wakeup" and "tgt" in m and "back" not in m and handler and f"pid={handler} " in rest:
            m["back"] = t
        elif name == "fuse_request_end":
            m.setdefault("fend", t)
        elif name == "block_rq_complete":
            m.setdefault("done", t)
        elif name == "tracing_mark_write" and "R end" in rest:
            m["end"] = t
    return m


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[2])
    device, reads, seed, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    lines = trace(device, reads, seed)
    per_read, cur = [], None
    for line in lines:
        g = LINE.match(line)
        if not g:
            continue
        comm, pid, _cpu, ts, name, rest = g.groups()
        ev = (comm, pid, float(ts) * 1e6, name, rest)
        if name == "tracing_mark_write" and "R start" in rest:
            cur = [ev]
        elif cur is not None:
            cur.append(ev)
            if name == "tracing_mark_write" and "R end" in rest:
                per_read.append(cur)
                cur = None
    spans = {k: [] for k, _ in PHASES}
    totals = []
    for r in per_read:
        m = marks_of(r[1:], target)
        if not all(k in m for k, _ in PHASES):
            continue  # the read was served without the target (or an event was lost)
        prev = r[0][2]
        for k, _ in PHASES:
            spans[k].append(m[k] - prev)
            prev = m[k]
        totals.append(m["end"] - r[0][2])
    if not totals:
        sys.exit("ondemand_phases: no read went through the target; is the clone hydrated?")
    for k, label in PHASES:
        print(f"{label}\t{statistics.median(spans[k]):.0f}")
    print(f"total ({len(totals)} of {len(per_read)} reads traced whole)\t{statistics.median(totals):.0f}")


if __name__ == "__main__":
    main()
