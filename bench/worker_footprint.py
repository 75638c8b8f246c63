"""Memory and start-up of `flowmill worker` draining N no-op tasks, measured the way the
peer harness (`/work/shared/peers-bench`, run_all.py's W2) does: its p_flowmill.py app,
`flowmill worker p_flowmill:app --concurrency 64` (one process on SQLite, two on
PostgreSQL and Redis), start-up = spawn to the first completion, drain = spawn to the
N-th; plus the peak of the summed PSS and RSS of the worker processes (every 50 ms).

    .venv/bin/python bench/worker_footprint.py --backend postgres --n 10000
    .venv/bin/python bench/worker_footprint.py --backend redis --src /tmp/base/src  # A/B

`--src DIR` runs the flowmill found in DIR (e.g. `git archive main src | tar -x -C
/tmp/base`) instead of the installed one. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def kb(pid: int, key: str, name: str = "smaps_rollup") -> int:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres", "redis"), default="sqlite")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--src", help="run the flowmill in this source directory")
    p.add_argument("--peers", default="/work/shared/peers-bench")
    p.add_argument("--bin", default=str(ROOT / ".venv" / "bin"), help="flowmill's venv bin/")
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.peers, "p_flowmill.py")):
        sys.exit(f"error: the peer harness is not at {args.peers} (give --peers DIR)")
    path = f"{args.src}:{args.peers}" if args.src else args.peers
    env = {**os.environ, "FM_BACKEND": args.backend, "PYTHONPATH": path}

    def script(*cmd: str) -> None:
        py = f"{args.bin}/python"
        subprocess.run([py, "p_flowmill.py", *cmd], cwd=args.peers, env=env, check=True,
                       capture_output=True)  # fmt: skip

    script("reset")
    script("bulk", str(args.n))
    ctr = redis.Redis(host="127.0.0.1", port=6379, db=6)  # the harness's completion counter
    ctr.delete("done")
    cmd = [f"{args.bin}/flowmill", "worker", "p_flowmill:app", "--concurrency", "64"]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd,
            cwd=args.peers,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(1 if args.backend == "sqlite" else 2)
    ]
    peak = {"pss": 0, "rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak["pss"] = max(peak["pss"], sum(kb(w.pid, "Pss:") for w in procs))
            peak["rss"] = max(peak["rss"], sum(kb(w.pid, "Rss:") for w in procs))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t_first = None
    while True:
        done = int(ctr.get("done") or 0)  # type: ignore[arg-type]
        now = time.perf_counter()
        if done and t_first is None:
            t_first = now
        if done >= args.n:
            break
        if now - t0 > 300:
            sys.exit("timeout: the workers did not drain the queue in 300 s")
        time.sleep(0.005)
    stop.set()
    sampler.join()
    for w in procs:
        w.send_signal(signal.SIGTERM)
    for w in procs:
        w.wait(15)
    assert t_first is not None
    print(
        json.dumps(
            {
                "backend": args.backend,
                "src": args.src or "installed",
                "startup_s": round(t_first - t0, 3),
                "drain_s": round(now - t0, 2),
                "peak_pss_mb": round(peak["pss"] / 1024, 1),
                "peak_rss_mb": round(peak["rss"] / 1024, 1),
                "load1": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
