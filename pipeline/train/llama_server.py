"""llama-cpp-python's server, with each model's sampling defaults: `seed2lora serve`'s CPU engine.

    python -m pipeline.train.llama_server --config_file CONFIG.json

CONFIG.json is llama-cpp-python's config file (llama_cpp/server/settings.py ConfigFileSettings)
plus one key, serve.SAMPLING_KEY: model alias -> the sampling settings `eval` scored that
adapter with. llama-cpp-python has no per-model sampling defaults (its request schema fills a
missing repeat_penalty with 1.1, temperature with 0.8), so a middleware fills the settings a
request leaves out from the named model's before llama-cpp-python reads the request. A
request's own values win. A request naming a model the server does not serve is answered 404
(model_not_found), as vLLM and OpenAI answer it: llama-cpp-python would answer a typo'd adapter
name with its first model, the base, as if the adapter had answered. No model at all gets the base.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .serve import BASE_ALIAS, SAMPLING_KEY

PATHS = ("/v1/chat/completions", "/v1/completions")  # the requests that generate
REQUEST_KEYS = {"temperature": "temperature", "top_p": "top_p", "max_new_tokens": "max_tokens",
                "repeat_penalty": "repeat_penalty", "stop": "stop"}  # sampling.json key -> OpenAI request key


def fill(body: dict[str, Any], defaults: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The request `body` with each sampling setting it leaves out (or sends as null) taken from its model's."""
    settings = defaults.get(str(body.get("model")), defaults.get(BASE_ALIAS, {}))
    out = dict(body)
    for key, request_key in REQUEST_KEYS.items():
        if out.get(request_key) is None and settings.get(key) not in (None, []):
            out[request_key] = settings[key]
    return out


class SamplingDefaults:
    """ASGI middleware: a generating POST's JSON body goes through fill() before the app reads it."""

    def __init__(self, app: Any, defaults: dict[str, dict[str, Any]]) -> None:
        self.app, self.defaults = app, defaults

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        raw, more = b"", True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            body = json.loads(raw)
        except ValueError:  # not JSON: llama-cpp-python answers it with its own 422
            body = None
        if isinstance(body, dict) and body.get("model") not in (None, "") and str(body["model"]) not in self.defaults:
            await not_served(send, str(body["model"]), list(self.defaults))
            return
        if isinstance(body, dict):
            raw = json.dumps(fill(body, self.defaults)).encode()
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client's disconnect, as the app expects
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        await self.app({**scope, "headers": [*headers, (b"content-length", str(len(raw)).encode())]}, replay, send)


async def not_served(send: Any, model: str, served: list[str]) -> None:
    """OpenAI's answer to an unknown model: 404, an error naming it and the models this server has."""
    error = {"message": f"The model `{model}` is not served here: this server serves {', '.join(served)}. Fix: name "
                        "one of them as `model` (or leave `model` out for the base)",
             "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ConfigFileSettings, ServerSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", required=True, help="llama-cpp-python's config file, plus sampling defaults")
    args = parser.parse_args(argv)
    with open(args.config_file, encoding="utf-8") as f:
        config = json.load(f)
    defaults = config.pop(SAMPLING_KEY, {})
    settings = ConfigFileSettings.model_validate(config)
    app = create_app(server_settings=ServerSettings.model_validate(settings), model_settings=settings.models)
    uvicorn.run(SamplingDefaults(app, defaults), host=os.getenv("HOST", settings.host),
                port=int(os.getenv("PORT", settings.port)), ssl_keyfile=settings.ssl_keyfile,
                ssl_certfile=settings.ssl_certfile)


if __name__ == "__main__":
    main()
