"""A chat client for any OpenAI-compatible endpoint, built for paid, slow, flaky calls.

- Content-addressed cache: one JSON file per request, ``<cache>/<key[:2]>/<key>.json``, where ``key``
  is the sha256 of the request body (model, messages, sampling params, response format). It is
  written atomically as soon as a reply arrives, so a run killed half-way loses nothing paid for,
  and a re-run makes no call for anything already answered.
- Retries with exponential backoff and jitter on 429, 408/409, 5xx, timeouts and connection errors,
  honouring ``Retry-After``; other errors (401, 400 ...) fail at once. The ``openai`` package's own
  retries are switched off so that every retry is counted here.
- A concurrency limit (a semaphore shared by the threads using one client), and room for one across
  processes and machines: ``set_request_slot`` installs a context-manager factory that every request
  enters (the Prefect tasks install the server's global concurrency limit ``llm-endpoint``).
- An account of requests, cache hits, retries, tokens and cost (prices from params).
- The Batch API (half price, asynchronous): uncached requests go into one JSONL upload; the batch id
  is saved under ``<batches>/<id>.json`` so any later run collects the answers into the same cache.

The API key is read from the environment variable named in params and never leaves this object:
it is not in the cache key, the cache files, the logs or any error message (``redact``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import openai

from glassllava.files import atomic_write_json, read_json, sha256_bytes, sha256_json
from glassllava.params import LLMParams

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_RETRY_STATUS = {408, 409, 429}

_request_slot: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def set_request_slot(factory: Callable[[], contextlib.AbstractContextManager] | None) -> None:
    """Every request (not cache hits) runs inside ``factory()``: e.g. a slot of an orchestrator's global
    concurrency limit for the endpoint, shared by every process that calls it. None: no extra limit."""
    global _request_slot
    _request_slot = factory or contextlib.nullcontext


class LLMError(RuntimeError):
    """A request failed for good: retries exhausted, or an error that retrying cannot fix."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# Weaker reply formats to fall back to when an endpoint refuses one (older vLLM, llama.cpp ...).
FORMAT_FALLBACK = {"json_schema": "json_object", "json_object": "text"}


@dataclass
class Reply:
    key: str
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool  # True: read from the cache, no request made in this run
    retries: int = 0  # retries this request needed (0 when cached)


@dataclass
class Account:
    """What one run cost. Thread-safe; ``as_dict`` for reports."""

    requests: int = 0  # HTTP chat requests that got an answer
    batch_requests: int = 0  # requests answered through the Batch API
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            d = asdict(self)
        d["cost_usd"] = round(d["cost_usd"], 6)
        return d


def cost_usd(params: LLMParams, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
    """What the tokens cost at the prices in params (the Batch API's discount when ``batch``)."""
    usd = (prompt_tokens * params.price_input_per_mtok + completion_tokens * params.price_output_per_mtok) / 1e6
    return usd * (params.batch_discount if batch else 1.0)


def resolve_endpoint(params: LLMParams) -> tuple[str | None, str | None]:
    """(base_url, api_key) from params and the environment; a local server needs no key."""
    base_url = params.base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = os.environ.get(params.api_key_env) or None
    return base_url, key


def llm_configured(params: LLMParams) -> bool:
    base_url, key = resolve_endpoint(params)
    return bool(base_url or key)


class LLMClient:
    def __init__(
        self,
        params: LLMParams,
        cache_dir: Path,
        *,
        batches_dir: Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base_url, key = resolve_endpoint(params)
        if not base_url and not key:
            raise LLMError(
                f"no LLM endpoint: set ${params.api_key_env} (and optionally qa.llm.base_url or $OPENAI_BASE_URL), "
                "or use qa.generator: offline"
            )
        self.params = params
        self.cache_dir = Path(cache_dir)
        self.batches_dir = Path(batches_dir) if batches_dir else self.cache_dir.parent / "batches"
        self.account = Account()
        self._secret = key or ""
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(params.concurrency)
        self._client = openai.OpenAI(
            api_key=key or "no-key", base_url=base_url, timeout=params.timeout_s, max_retries=0
        )
        self.base_url = str(self._client.base_url)

    # ---- requests and the cache -------------------------------------------------------
    def body(self, messages: list[dict], json_schema: dict | None = None, response_format: str | None = None) -> dict:
        """The request body: everything that determines the answer, hence the cache key.

        ``response_format`` overrides params (json_schema | json_object | text)."""
        p = self.params
        fmt = response_format or p.response_format
        body: dict[str, Any] = {
            "model": p.model,
            "messages": messages,
            "temperature": p.temperature,
            "max_tokens": p.max_tokens,
        }
        if p.seed is not None:
            body["seed"] = p.seed
        if fmt == "json_schema" and json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": json_schema}
        elif fmt in ("json_schema", "json_object"):
            body["response_format"] = {"type": "json_object"}
        return body

    @staticmethod
    def key(body: dict) -> str:
        return sha256_json({"format": CACHE_FORMAT, "body": body})

    def cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def cached(self, body: dict) -> Reply | None:
        key = self.key(body)
        path = self.cache_path(key)
        if not path.exists():
            return None
        entry = read_json(path)
        self.account.add(cache_hits=1)
        return Reply(key=key, cached=True, **entry["reply"])

    def _store(self, key: str, body: dict, reply: dict, via: str) -> None:
        atomic_write_json(
            self.cache_path(key),
            {"key": key, "via": via, "saved_at": time.time(), "request": _without_images(body), "reply": reply},
        )

    def complete(self, body: dict) -> Reply:
        """The reply to ``body``: from the cache, else one request (with retries), cached at once."""
        hit = self.cached(body)
        if hit is not None:
            return hit
        key = self.key(body)
        response, retries = self._send(body)
        choice = response.choices[0]
        usage = response.usage
        reply = {
            "content": choice.message.content or "",
            "finish_reason": choice.finish_reason or "",
            "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
        }
        self._store(key, body, reply, via="chat")
        self.account.add(
            requests=1,
            prompt_tokens=reply["prompt_tokens"],
            completion_tokens=reply["completion_tokens"],
            cost_usd=self.cost(reply["prompt_tokens"], reply["completion_tokens"]),
        )
        return Reply(key=key, cached=False, retries=retries, **reply)

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        return cost_usd(self.params, prompt_tokens, completion_tokens, batch)

    def _send(self, body: dict):
        p = self.params
        for attempt in range(p.max_retries + 1):
            try:
                with self._slots, _request_slot():
                    return self._client.chat.completions.create(**body), attempt
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as e:
                status = getattr(e, "status_code", None)
                retryable = status is None or status in _RETRY_STATUS or status >= 500
                why = self.redact(f"{type(e).__name__}" + (f" {status}" if status else "") + f": {_message(e)}")
                if not retryable or attempt == p.max_retries:
                    self.account.add(failures=1)
                    raise LLMError(why + ("" if not retryable else f" (gave up after {attempt + 1} tries)"), status) from None
                wait = _retry_after(e)
                if wait is None:
                    wait = min(p.max_backoff_s, p.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)
                self.account.add(retries=1)
                log.warning("LLM request: %s; retry %d/%d in %.1f s", why, attempt + 1, p.max_retries, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")

    def redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    # ---- Batch API ----------------------------------------------------------------------
    def pending_batch_keys(self) -> set[str]:
        """Keys already submitted in batches not yet collected (never submit them twice)."""
        keys: set[str] = set()
        for path in sorted(self.batches_dir.glob("*.json")):
            state = read_json(path)
            if state["status"] not in ("collected", "failed", "expired", "cancelled"):
                keys.update(state["keys"])
        return keys

    def submit_batch(self, bodies: list[dict]) -> str | None:
        """Upload the uncached, not yet pending requests as one batch; returns its id (None: nothing to do)."""
        pending = self.pending_batch_keys()
        lines, keys = [], []
        for body in bodies:
            key = self.key(body)
            if key in pending or key in keys or self.cache_path(key).exists():
                continue
            keys.append(key)
            lines.append(json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}))
        if not lines:
            return None
        data = ("\n".join(lines) + "\n").encode()
        try:
            upload = self._client.files.create(file=(f"glassllava-{sha256_bytes(data)[:12]}.jsonl", data), purpose="batch")
            batch = self._client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        except openai.OpenAIError as e:
            raise LLMError(self.redact(f"batch submission failed: {_message(e)}")) from None
        atomic_write_json(
            self.batches_dir / f"{batch.id}.json",
            {"batch_id": batch.id, "input_file_id": upload.id, "keys": keys, "status": batch.status,
             "submitted_at": time.time(), "model": self.params.model},
        )
        log.info("submitted batch %s with %d requests", batch.id, len(keys))
        return batch.id

    def collect_batches(self, wait_s: float = 0.0) -> dict[str, str]:
        """Poll every open batch (for up to ``wait_s``), store finished answers in the cache.

        Returns {batch_id: status}. A finished batch's state file is marked ``collected``."""
        deadline = time.monotonic() + wait_s
        statuses: dict[str, str] = {}
        while True:
            open_states = [
                (path, read_json(path))
                for path in sorted(self.batches_dir.glob("*.json"))
                if read_json(path)["status"] not in ("collected", "failed", "expired", "cancelled")
            ]
            for path, state in open_states:
                statuses[state["batch_id"]] = self._poll_batch(path, state)
            still_open = [s for s in statuses.values() if s not in ("collected", "failed", "expired", "cancelled")]
            if not still_open or time.monotonic() >= deadline:
                return statuses
            self._sleep(min(self.params.batch_poll_s, max(0.0, deadline - time.monotonic())))

    def _poll_batch(self, path: Path, state: dict) -> str:
        try:
            batch = self._client.batches.retrieve(state["batch_id"])
        except openai.OpenAIError as e:
            log.warning("batch %s: %s", state["batch_id"], self.redact(_message(e)))
            return state["status"]
        status = batch.status
        if status == "completed":
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    self._store_batch_output(self._client.files.content(file_id).text)
            status = "collected"
        state = {**state, "status": status}
        atomic_write_json(path, state)
        return status

    def _store_batch_output(self, text: str) -> None:
        for line in text.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            response = item.get("response") or {}
            if response.get("status_code") != 200:
                self.account.add(failures=1)
                log.warning("batch item %s failed: %s", item.get("custom_id"), self.redact(json.dumps(item.get("error"))[:300]))
                continue
            completion = response["body"]
            choice = completion["choices"][0]
            usage = completion.get("usage") or {}
            reply = {
                "content": choice["message"].get("content") or "",
                "finish_reason": choice.get("finish_reason") or "",
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or 0),
            }
            key = item["custom_id"]
            if not self.cache_path(key).exists():
                self._store(key, {"custom_id": key}, reply, via="batch")
                self.account.add(
                    batch_requests=1,
                    prompt_tokens=reply["prompt_tokens"],
                    completion_tokens=reply["completion_tokens"],
                    cost_usd=self.cost(reply["prompt_tokens"], reply["completion_tokens"], batch=True),
                )


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:300]
    return str(e)[:300]


def _retry_after(e: Exception) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), 300.0) if value is not None else None
    except ValueError:
        return None


def _without_images(body: dict) -> dict:
    """The request as stored in the cache: image data URLs replaced by their sha256."""
    body = copy.deepcopy(body)
    for message in body.get("messages", []):
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                url = part.get("image_url", {}).get("url", "") if isinstance(part, dict) else ""
                if url.startswith("data:"):
                    part["image_url"]["url"] = "sha256:" + sha256_bytes(url.encode())
    return body
