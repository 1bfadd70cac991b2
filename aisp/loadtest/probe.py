"""Talking to the server outside the load itself: health, model name, prefix-cache counters.

Contract:
- `probe_health` GETs /health; when that is 404 it GETs /v1/models instead; it returns the path
  that answered 2xx, or raises `ServerUnavailable` with what each probe got and how to fix it.
- `discover_model` returns the first model id that /v1/models lists (used when --model is
  not given); `model_card(session, base_url, model)` returns that model's `ModelCard` (its
  `max_model_len`, which vLLM and aisp put on each card, and `vocab_size`, which aisp adds), or
  None when /v1/models does not answer or does not list the model.
- `scrape_prefix_cache` GETs /metrics and returns (hits, queries) summed over label sets from
  `aisp:prefix_cache_{hits,queries}_total` or vLLM's `vllm:prefix_cache_{hits,queries}_total`
  (or vLLM's older `vllm:gpu_prefix_cache_*`), or None when the server exposes neither. The
  counters are server-wide: a run's hit rate is the difference of two scrapes and includes any
  other traffic the server saw meanwhile (and this run's warm-up requests).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import aiohttp

PREFIX_COUNTERS = (  # (hits, queries) sample names, first match wins
    ("aisp:prefix_cache_hits_total", "aisp:prefix_cache_queries_total"),
    ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
    ("vllm:gpu_prefix_cache_hits_total", "vllm:gpu_prefix_cache_queries_total"),
)
_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=10)


class ServerUnavailable(RuntimeError):
    """No usable server at the URL; the message says what was tried."""


@dataclass(frozen=True)
class ModelCard:
    """What GET /v1/models says about one model; the limits are None when not given."""

    id: str
    max_model_len: int | None = None
    vocab_size: int | None = None


@dataclass(frozen=True)
class PrefixCacheCounters:
    hits: float
    queries: float
    source: str  # the hits metric name that was found


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, timeout=_PROBE_TIMEOUT) as resp:
        return resp.status, await resp.text(errors="replace")


async def probe_health(session: aiohttp.ClientSession, base_url: str) -> str:
    tried = []
    for path in ("/health", "/v1/models"):
        try:
            status, body = await _get(session, base_url + path)
        except (aiohttp.ClientError, OSError, TimeoutError, asyncio.TimeoutError) as e:
            raise ServerUnavailable(
                f"no server answers at {base_url} (GET {path}: {type(e).__name__}: {e}); start "
                f"one there or pass --url") from None
        if 200 <= status < 300:
            return path
        tried.append(f"GET {path} -> {status} {body.strip()[:120]}")
        if status != 404:
            break
    raise ServerUnavailable(f"server at {base_url} is not ready: {'; '.join(tried)}; check that "
                            f"it is an OpenAI-compatible server and has finished loading")


async def model_cards(session: aiohttp.ClientSession, base_url: str) -> list[ModelCard]:
    """The models GET /v1/models lists (empty when it fails or lists none)."""
    try:
        status, body = await _get(session, base_url + "/v1/models")
        data = json.loads(body)["data"] if status == 200 else []
        return [ModelCard(str(m["id"]), _positive_int(m.get("max_model_len")),
                          _positive_int(m.get("vocab_size"))) for m in data]
    except (aiohttp.ClientError, OSError, TimeoutError, asyncio.TimeoutError, ValueError,
            KeyError, TypeError, AttributeError):
        return []


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


async def discover_model(session: aiohttp.ClientSession, base_url: str) -> str:
    cards = await model_cards(session, base_url)
    if not cards:
        raise ServerUnavailable(f"GET {base_url}/v1/models lists no model; pass --model NAME")
    return cards[0].id


async def model_card(session: aiohttp.ClientSession, base_url: str,
                     model: str) -> ModelCard | None:
    return next((c for c in await model_cards(session, base_url) if c.id == model), None)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)')


def parse_samples(text: str) -> dict[str, float]:
    """Sample name -> value summed over label sets, from the Prometheus text format."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return parse_samples_fallback(text)
    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                totals[s.name] = totals.get(s.name, 0.0) + float(s.value)
    except ValueError:
        return parse_samples_fallback(text)  # the lenient line parser takes what it can
    return totals


def parse_samples_fallback(text: str) -> dict[str, float]:
    """A small parser of the text format: `name{labels} value [timestamp]` lines."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        totals[m.group(1)] = totals.get(m.group(1), 0.0) + value
    return totals


def prefix_counters(samples: dict[str, float]) -> PrefixCacheCounters | None:
    for hits, queries in PREFIX_COUNTERS:
        if hits in samples and queries in samples:
            return PrefixCacheCounters(samples[hits], samples[queries], hits)
    return None


async def scrape_prefix_cache(session: aiohttp.ClientSession,
                              base_url: str) -> PrefixCacheCounters | None:
    try:
        status, body = await _get(session, base_url + "/metrics")
    except (aiohttp.ClientError, OSError, TimeoutError, asyncio.TimeoutError):
        return None
    return prefix_counters(parse_samples(body)) if status == 200 else None
