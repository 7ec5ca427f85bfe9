"""A fake Batch API (files and batches endpoints) on top of FakeOpenAI, rude like real ones.

A batch takes `polls_to_finish` looks before it ends (validating, in_progress with growing request_counts,
finalizing, completed); every `fail_every`-th line fails with a 500 in the error file; the next `expire_next`
batches expire with only their first half answered. Its state outlives kill() and come_back(), as a hosted
batch outlives a dropped connection. Counts for tests: `uploads`, `creations`, and every line in `lines`.
"""

from __future__ import annotations

import itertools
import json
import threading
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from fakeserver import FakeOpenAI


class FakeBatchOpenAI(FakeOpenAI):
    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.uploads = 0  # POST /files
        self.creations = 0  # POST /batches
        self.lines: list[dict[str, Any]] = []  # every line of every batch created: what was submitted
        self.polls_to_finish = 3  # retrieves of a batch before it has ended
        self.fail_every = 0  # every n-th line answered fails with a 500 (0: none)
        self.expire_next = 0  # this many next batches expire, half answered
        self.batch_api = True  # False: /files and /batches answer 404, as a server without them
        self._ids = itertools.count(1)
        self._answered = itertools.count(1)
        self._batch_lock = threading.Lock()
        outer, base = self, self.server.RequestHandlerClass

        class BatchHandler(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                if "/files" in self.path or "/batches" in self.path:
                    outer._route(self, "GET", b"")
                else:
                    super().do_GET()

            def do_POST(self) -> None:
                if self.path.endswith(("/files", "/batches")):
                    body = self.rfile.read(int(self.headers.get("content-length", 0)))
                    outer._route(self, "POST", body)
                else:
                    super().do_POST()

        self.server.RequestHandlerClass = BatchHandler

    # -- the endpoints --------------------------------------------------------------------
    def _route(self, handler: Any, method: str, body: bytes) -> None:
        path = handler.path.split("?", 1)[0].removeprefix("/v1")
        if not self.batch_api:
            handler._send(404, {"error": {"message": f"{path} not found"}}, {})
            return
        with self._batch_lock:
            if method == "POST" and path == "/files":
                status, payload = 200, self._upload(handler.headers.get("content-type", ""), body)
            elif method == "POST" and path == "/batches":
                status, payload = 200, self._create(json.loads(body))
            elif path == "/batches":
                status, payload = 200, {"object": "list", "data": [self._public(b) for b in self.batches.values()],
                                        "has_more": False}
            elif path.startswith("/batches/"):
                batch = self.batches.get(path.split("/")[2])
                status, payload = (404, {"error": {"message": "no such batch"}}) if batch is None else \
                    (200, self._public(self._advance(batch)))
            elif path.startswith("/files/") and path.endswith("/content"):
                data = self.files.get(path.split("/")[2])
                status, payload = (404, {"error": {"message": "no such file"}}) if data is None else (200, data)
            else:
                status, payload = 404, {"error": {"message": f"{path} not found"}}
        handler._send(status, payload, {})

    def _upload(self, content_type: str, body: bytes) -> dict[str, Any]:
        msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True) for p in msg.iter_parts()}
        self.uploads += 1
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = parts["file"]
        return {"id": file_id, "object": "file", "bytes": len(parts["file"]), "created_at": 0,
                "filename": "wave.jsonl", "purpose": parts["purpose"].decode()}

    def _create(self, req: dict[str, Any]) -> dict[str, Any]:
        self.creations += 1
        lines = [json.loads(x) for x in self.files[req["input_file_id"]].decode().splitlines() if x.strip()]
        self.lines.extend(lines)
        expires = self.expire_next > 0
        self.expire_next -= expires
        batch = {"id": f"batch_{next(self._ids)}", "object": "batch", "endpoint": req["endpoint"], "errors": None,
                 "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                 "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": 0,
                 "metadata": req.get("metadata"), "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                 "_lines": lines, "_polls": 0, "_expires": expires}
        self.batches[batch["id"]] = batch
        return self._public(batch)

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    # -- a batch's life ---------------------------------------------------------------------
    def _advance(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One look at a running batch moves it on: validating, in_progress (counts growing), finalizing, ended."""
        if batch["status"] in ("completed", "expired", "failed", "cancelled"):
            return batch
        batch["_polls"] += 1
        n, total = batch["_polls"], batch["request_counts"]["total"]
        if n < self.polls_to_finish:
            batch["status"] = "in_progress"
            batch["request_counts"]["completed"] = total * n // (self.polls_to_finish + 1)
        elif n == self.polls_to_finish:
            batch["status"] = "finalizing"
        else:
            self._finish(batch)
        return batch

    def _finish(self, batch: dict[str, Any]) -> None:
        out, err = [], []
        lines = batch["_lines"]
        answered = lines[:len(lines) // 2] if batch["_expires"] else lines
        for line in answered:
            if self.fail_every and next(self._answered) % self.fail_every == 0:
                err.append({"id": "r", "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 500, "request_id": "r",
                    "body": {"error": {"message": "The server had an error", "type": "server_error"}}}})
                continue
            with self._lock:  # default_reply draws from the server's instruction stream
                body = self.default_reply(line["url"], line["body"])
            out.append({"id": "r", "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": 200, "request_id": "r", "body": body}})
        for line in lines[len(answered):]:
            err.append({"id": "r", "custom_id": line["custom_id"], "response": None, "error": {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window expired."}})
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
                batch[name] = file_id
        batch["status"] = "expired" if batch["_expires"] else "completed"
        batch["request_counts"].update(completed=len(out), failed=len(err))
