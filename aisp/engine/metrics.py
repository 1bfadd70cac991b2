"""Prometheus metrics of one engine, in vLLM's naming style under the `aisp:` prefix.

Fed only through public hooks (STYLE.md #4): `observe_step(StepStats)` from `step_listeners`
and `observe_finished(RequestOutput)` from `finished_listeners` of an engine client (the
server: per-step stats and finished outputs arrive in the core's messages, so the registry
lives in the server process) or of an offline `LLMEngine`. `attach(source)` registers both.
Nothing here reads scheduler internals.

Definitions (vLLM's): TTFT = first token - arrival; inter-token latency = each gap between
consecutive tokens; TPOT = (E2E - TTFT) / (output tokens - 1) per request; queue time = first
scheduled - arrival; prefill time = first token - first scheduled; decode time = finish - first
token. Counters are exported with the `_total` suffix prometheus_client adds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "aisp:"
# Latency buckets (seconds) spanning sub-millisecond decode steps to minute-long requests.
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
         0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, model_name: str = ""):
        self.registry = registry or CollectorRegistry()
        r, labels = self.registry, ["model_name"]
        self.model_name = model_name

        def gauge(name, doc):
            return Gauge(PREFIX + name, doc, labels, registry=r).labels(model_name)

        def counter(name, doc):
            return Counter(PREFIX + name, doc, labels, registry=r).labels(model_name)

        def hist(name, doc, buckets):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets,
                             registry=r).labels(model_name)

        self.num_requests_running = gauge("num_requests_running", "Requests in the running batch.")
        self.num_requests_waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_cache_usage = gauge("kv_cache_usage_perc",
                                    "KV cache usage: fraction of blocks in use (0 to 1).")
        self.kv_cache_capacity = gauge("kv_cache_capacity_tokens", "KV cache capacity in tokens.")
        self.prefix_cache_queries = counter("prefix_cache_queries",
                                            "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("prefix_cache_hits",
                                         "Prompt tokens found in the prefix cache.")
        self.num_preemptions = counter("num_preemptions", "Requests preempted (recompute).")
        self.prompt_tokens = counter("prompt_tokens", "Prefill tokens computed.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self._success = Counter(PREFIX + "request_success", "Finished requests by reason.",
                                labels + ["finished_reason"], registry=r)
        self.ttft = hist("time_to_first_token_seconds", "Time to first token.",
                         tuple(sorted(set(_FAST + _SLOW))))
        self.itl = hist("inter_token_latency_seconds", "Gaps between consecutive tokens.", _FAST)
        self.tpot = hist("request_time_per_output_token_seconds",
                         "(E2E - TTFT) / (output tokens - 1) per request.", _FAST)
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to finish.", _SLOW)
        self.queue_time = hist("request_queue_time_seconds", "Arrival to first scheduled.", _SLOW)
        self.prefill_time = hist("request_prefill_time_seconds",
                                 "First scheduled to first token.", _SLOW)
        self.decode_time = hist("request_decode_time_seconds", "First token to finish.", _SLOW)
        self.step_time = hist("engine_step_seconds", "Wall time of one engine step.", _FAST)

    def attach(self, source) -> "EngineMetrics":
        """Subscribe to the hooks of an engine client or LLMEngine; publish its KV capacity."""
        self.kv_cache_capacity.set(source.model_info.kv_capacity_tokens)
        source.step_listeners.append(self.observe_step)
        source.finished_listeners.append(self.observe_finished)
        return self

    def observe_step(self, stats) -> None:
        s = stats.scheduler
        self.num_requests_running.set(stats.num_running)
        self.num_requests_waiting.set(stats.num_waiting)
        self.kv_cache_usage.set(stats.kv_cache_usage)
        self.prefix_cache_queries.inc(s.prefix_cache_queries)
        self.prefix_cache_hits.inc(s.prefix_cache_hits)
        self.num_preemptions.inc(s.num_preemptions)
        self.prompt_tokens.inc(s.num_prefill_tokens)
        self.generation_tokens.inc(stats.num_generated_tokens)
        self.step_time.observe(stats.step_time_s)

    def observe_finished(self, out) -> None:
        self._success.labels(self.model_name, out.finish_reason or "unknown").inc()
        m = out.metrics
        if m is None:
            return
        if m.first_scheduled_time is not None:
            self.queue_time.observe(m.first_scheduled_time - m.arrival_time)
        if m.first_token_time is not None:
            self.ttft.observe(m.first_token_time - m.arrival_time)
            if m.first_scheduled_time is not None:
                self.prefill_time.observe(m.first_token_time - m.first_scheduled_time)
        for a, b in zip(m.token_times, m.token_times[1:]):
            self.itl.observe(b - a)
        if m.tpot is not None:
            self.tpot.observe(m.tpot)
        if m.finished_time is not None:
            self.e2e.observe(m.finished_time - m.arrival_time)
            if m.first_token_time is not None:
                self.decode_time.observe(m.finished_time - m.first_token_time)

    def render(self) -> bytes:
        """The Prometheus text exposition of this engine's registry."""
        return generate_latest(self.registry)
