"""A tiny simulated OpenAI-compatible upstream for ``barge demo``: it answers chat,
completions, embeddings, responses and moderations after a short, random delay."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import orjson
from aiohttp import web


def _reply(endpoint: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    model = body.get("model", "simulated")
    usage = {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14}
    if endpoint == "embeddings":
        return {"object": "list", "model": model, "usage": usage,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.01, 0.02, 0.03]}]}
    if endpoint == "moderations":
        return {"id": f"modr-{n}", "model": model,
                "results": [{"flagged": False, "categories": {}, "category_scores": {}}]}
    messages = body.get("messages") or [{"content": body.get("prompt") or body.get("input")}]
    text = f"Simulated answer to: {str(messages[-1].get('content'))[:80]}"
    if endpoint == "chat/completions":
        return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}
    if endpoint == "responses":
        return {"id": f"resp_{n}", "object": "response", "model": model, "status": "completed",
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": text}]}]}
    return {"id": f"cmpl-{n}", "object": "text_completion", "model": model, "usage": usage,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}


def simulator_app(max_delay: float = 0.05) -> web.Application:
    counter = itertools.count(1)

    async def handle(request: web.Request) -> web.Response:
        n = next(counter)
        body = orjson.loads(await request.read())
        await asyncio.sleep(random.uniform(0, max_delay))
        data = _reply(request.match_info["endpoint"], body, n)
        return web.Response(body=orjson.dumps(data), content_type="application/json",
                            headers={"x-request-id": f"req_sim_{n}"})

    async def models(request: web.Request) -> web.Response:
        data = {"object": "list", "data": [{"id": "demo-model", "object": "model",
                                            "created": 0, "owned_by": "barge-simulator"}]}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/{endpoint:.+}", handle)
    return app
