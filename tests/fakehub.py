"""A stand-in for the Hugging Face Hub's HTTP API, as much of it as create_repo and create_commit call.

Endpoints (read from huggingface_hub 2.4's hf_api.py and _commit_api.py):
    POST /api/repos/create                          {name, organization, type, visibility?} -> {url}; 409 if it exists
    POST /api/validate-yaml                         {content, repoType} -> {errors, warnings}
    POST /api/{type}s/{ns}/{name}/preupload/{rev}   {files: [{path, sample, size}]} -> {files: [{path, uploadMode,
                                                    shouldIgnore, oid}]}; every file "regular" (sent inline)
    POST /api/{type}s/{ns}/{name}/commit/{rev}      NDJSON: header, then {key: file, value: {path, content,
                                                    encoding: base64}} -> {commitUrl, commitOid, success}
    GET  /api/{type}s/{ns}/{name}                   repo_info, for create_repo's exist_ok on 401/403
    GET  /api/agent-harnesses                       public (no token): the registry huggingface_hub names its
                                                    caller from in the User-Agent; here an empty one
As rude as the real one: every request without `Authorization: Bearer <the token>` gets 401 with a JSON error
(and the X-Error-Message header huggingface_hub shows), an unknown repository 404 with X-Error-Code
RepoNotFound, a broken body 400. `fail_commit` makes the next commits answer 500, as a Hub outage would;
`echo_credentials` makes a 401 quote the token it was sent (a test of the masking; the real Hub does not).
What it does not do: LFS or Xet transfers (the real Hub asks for those for large and binary files).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from fakeserver import QueuedServer

REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(preupload|commit)/([^/?]+))?(?:\?.*)?$")


class FakeHub:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}  # (type, ns/name) -> {path: content}
        self.private: dict[tuple[str, str], bool] = {}  # (type, ns/name) -> created private
        self.commits: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []  # every request: method, path, headers (names lower-case)
        self.fail_commit = 0
        self.echo_credentials = False  # a 401 that quotes the Authorization header it got (for the secrets test)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if status >= 400 and "error" in body:
                    self.send_header("X-Error-Message", body["error"])
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                hub.history.append({"method": method, "path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()}})
                if method == "GET" and self.path == "/api/agent-harnesses":  # public: huggingface_hub's user agent
                    return self.answer(200, {"standardEnvVars": [], "harnesses": {}})
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    quoted = f": {self.headers.get('Authorization')}" if hub.echo_credentials else ""
                    return self.answer(401, {"error": f"Invalid credentials in Authorization header{quoted}"})
                try:
                    hub.route(self, method, self.path, body)
                except (ValueError, KeyError) as e:
                    self.answer(400, {"error": f"Bad request: {e}"})

            def do_GET(self) -> None:  # noqa: N802
                self.handle_any("GET")

            def do_POST(self) -> None:  # noqa: N802
                self.handle_any("POST")

        self.server = QueuedServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, h: Any, method: str, path: str, body: bytes) -> None:
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            kind = req.get("type") or "model"
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            prefix = "" if kind == "model" else f"{kind}s/"
            if (kind, repo) in self.repos:
                return h.answer(409, {"error": f"You already created this {kind} repo", "url": f"{self.url}/{prefix}{repo}"})
            self.repos[(kind, repo)] = {}
            self.private[(kind, repo)] = req.get("visibility") == "private" or bool(req.get("private"))
            return h.answer(200, {"url": f"{self.url}/{prefix}{repo}", "name": repo})
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            ok = content.startswith("---\n") and "\n---\n" in content[4:]
            return h.answer(200 if ok else 400, {"errors": [] if ok else [{"message": "no YAML header"}],
                                                 "warnings": []})
        m = REPO.match(path)
        if not m:
            return h.answer(404, {"error": f"Sorry, we can't find the page you are looking for: {path}"})
        kind, repo, action = m.group(1)[:-1], f"{m.group(2)}/{m.group(3)}", m.group(4)
        if (kind, repo) not in self.repos:
            return h.answer(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if action is None and method == "GET":
            return h.answer(200, {"id": repo, "sha": self.sha(kind, repo), "private": self.private.get((kind, repo), False),
                                  "siblings": []})
        if action == "preupload":
            files = json.loads(body)["files"]
            return h.answer(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                             "oid": None} for f in files]})
        if action == "commit":
            if self.fail_commit:
                self.fail_commit -= 1
                return h.answer(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
            lines = [json.loads(x) for x in body.splitlines() if x.strip()]
            if not lines or lines[0]["key"] != "header":
                raise ValueError("the first line of a commit must be its header")
            files = {}
            for line in lines[1:]:
                if line["key"] != "file" or line["value"].get("encoding") != "base64":
                    raise ValueError(f"unsupported commit operation {line['key']}")
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            self.repos[(kind, repo)].update(files)
            self.commits.append({"repo": repo, "type": kind, "header": lines[0]["value"], "files": sorted(files)})
            oid = self.sha(kind, repo)
            prefix = "" if kind == "model" else f"{kind}s/"
            return h.answer(200, {"commitUrl": f"{self.url}/{prefix}{repo}/commit/{oid}", "commitOid": oid,
                                  "success": True})
        return h.answer(405, {"error": f"{method} {path} is not allowed"})

    def sha(self, kind: str, repo: str) -> str:
        h = hashlib.sha1()
        for path, content in sorted(self.repos[(kind, repo)].items()):
            h.update(path.encode() + b"\0" + content)
        return h.hexdigest()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
