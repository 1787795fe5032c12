"""A stand-in for vLLM's API server, for tests about supervision rather than inference.

Started by `model-garden deploy --engine-cmd "python fake_vllm.py"`: it takes vLLM's flags, starts one
child (like vLLM's engine core, which outlives a SIGKILLed API server), waits --bind-delay seconds
(vLLM's import time), binds --host/--port like vLLM (no SO_REUSEPORT) and answers /health. It writes
its pid into --marker-dir so a test can count how many servers were launched.
"""

import argparse
import http.server
import os
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--bind-delay", type=float, default=0.0)
parser.add_argument("--marker-dir")
args, _ = parser.parse_known_args()
if args.marker_dir:
    with open(os.path.join(args.marker_dir, f"{os.getpid()}.started"), "w") as fh:
        fh.write(" ".join(sys.argv))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(args.bind_delay)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


server = http.server.HTTPServer((args.host, args.port), Health)
print(f"fake vLLM serving on {args.host}:{args.port} (engine child {child.pid})", flush=True)
server.serve_forever()
