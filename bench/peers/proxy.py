"""A counting HTTP proxy in front of the shared vLLM server: how many generation requests each tool sent, and how
many the server answered for the same prompt more than once (a review regenerated after a crash).

    .venv/bin/python bench/peers/proxy.py --port 8790 --upstream http://127.0.0.1:8789

Every request is forwarded as it came (any path, method, headers, body); POSTs to /v1/completions and
/v1/chat/completions are counted per prompt (the `prompt` text or the `messages`, hashed). A client that goes away
mid-request (SIGKILL) cancels its forwarded request, so the server aborts it, as it would without the proxy; that
request counts as aborted, not as produced. `GET /_proxy/stats` returns the counters, `POST /_proxy/reset` zeroes
them. Runs in the project's venv (aiohttp comes with vLLM); its memory and CPU are the shared server's side.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from collections import defaultdict

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.received = self.produced = self.aborted = self.failed = 0
        self.completion_tokens = self.prompt_tokens = 0
        self.per_prompt: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # hash -> [received, produced]

    def snapshot(self) -> dict:
        produced = [p for _, p in self.per_prompt.values()]
        return {"received": self.received, "produced": self.produced, "aborted": self.aborted,
                "failed": self.failed, "completion_tokens": self.completion_tokens,
                "prompt_tokens": self.prompt_tokens, "distinct_prompts": len(self.per_prompt),
                "distinct_produced": sum(1 for p in produced if p),
                # reviews the server produced more than once: every answer after the first for the same prompt
                "produced_again": sum(p - 1 for p in produced if p > 1)}


def prompt_hash(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    what = data.get("prompt") if "prompt" in data else data.get("messages")
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def make_app(upstream: str) -> web.Application:
    counters = Counters()
    app = web.Application(client_max_size=64 * 2**20)

    async def start(app: web.Application) -> None:
        # No connection limit: each tool decides its own concurrency, as it would talking to vLLM directly.
        app["client"] = ClientSession(connector=TCPConnector(limit=0), timeout=ClientTimeout(total=None))

    async def stop(app: web.Application) -> None:
        await app["client"].close()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counters.snapshot())

    async def reset(request: web.Request) -> web.Response:
        counters.reset()
        return web.json_response({"reset": True})

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = prompt_hash(body) if request.method == "POST" and request.path in GENERATION_PATHS else None
        if key:
            counters.received += 1
            counters.per_prompt[key][0] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        try:
            async with app["client"].request(request.method, upstream + request.path_qs, headers=headers,
                                             data=body) as r:
                payload = await r.read()
                status, ctype = r.status, r.headers.get("Content-Type", "application/json")
        except asyncio.CancelledError:  # the client died: the server aborts the request with the connection
            if key:
                counters.aborted += 1
            raise
        if key:
            if status == 200:
                counters.produced += 1
                counters.per_prompt[key][1] += 1
                try:
                    usage = json.loads(payload).get("usage") or {}
                    counters.completion_tokens += int(usage.get("completion_tokens") or 0)
                    counters.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                except (ValueError, AttributeError):
                    pass
            else:
                counters.failed += 1
        return web.Response(body=payload, status=status, headers={"Content-Type": ctype})

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/_proxy/stats", stats)
    app.router.add_post("/_proxy/reset", reset)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the vLLM server, e.g. http://127.0.0.1:8789")
    a = p.parse_args()
    # handler_cancellation: a client's disconnect cancels its handler, hence the forwarded request.
    web.run_app(make_app(a.upstream.rstrip("/")), host="127.0.0.1", port=a.port, handler_cancellation=True,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
