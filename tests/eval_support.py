"""Helpers of the evaluation tests: a custom lm-eval task folder and a TCP proxy that dies mid-way."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path


def write_choice_task(folder: Path, held: Path, name: str = "mg_choice") -> Path:
    """A multiple-choice lm-eval task over a local JSONL (the reference vs the next record's answer)."""
    folder.mkdir(parents=True, exist_ok=True)
    recs = [json.loads(line) for line in held.read_text().splitlines() if line.strip()]
    data = folder / f"{name}.jsonl"
    with data.open("w") as fh:
        for i, rec in enumerate(recs):
            question = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
            fh.write(json.dumps({"question": question, "choices": [rec["output"], recs[(i + 1) % len(recs)]["output"]],
                                 "label": 0}) + "\n")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


class DyingProxy:
    """Forwards 127.0.0.1:<port> to a real server, then drops every connection and stops listening
    once ``after`` chat requests went through: to the client, the deployment died mid-evaluation."""

    def __init__(self, target_port: int, after: int):
        self.target, self.after, self.seen = target_port, after, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.dead = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.dead.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, counting):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counting:
                    with self.lock:
                        self.seen += data.count(b"POST /v1/chat/completions")
                        dying = self.seen > self.after
                    if dying:
                        self.kill()
                        return
                dst.sendall(data)
        except OSError:
            pass

    def kill(self):
        self.dead.set()
        for s in [self.sock, *self.conns]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
