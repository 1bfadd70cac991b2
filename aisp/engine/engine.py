"""`LLMEngine`: requests in, tokens out, one step at a time.

    step():  plan = scheduler.schedule()          who runs, with how many tokens
             sampled = runner.launch(plan)         one forward pass queued, one token per finished chunk
             result = scheduler.update_from_output(plan, sampled.result())

Everything else (outputs, stats) is bookkeeping around those three calls. The engine is the
core: it deals in token ids; text and stop strings are the front end's (aisp.engine.client,
aisp.engine.output_processor), which the offline `generate()` uses too. `generate()`, the server
(through the engine-client API, with this loop in its own process), the benchmarks and the load
test all drive this same loop, so an optimization is a switch in `EngineConfig`, never a second
code path.

Async scheduling (`EngineConfig.async_scheduling`, on by default on a GPU) changes only *when*
the third call happens: step() plans and launches step N, then reads back step N-1's tokens, so
the host's planning and bookkeeping run while the GPU computes instead of between its steps.
The scheduler plans on top of tokens still in flight (aisp.engine.request: pending tokens) and
the runner fills those inputs in on the device. Outputs therefore arrive one step() later, and
a request that samples a stop token has run one extra step whose token is dropped.

Per-request timestamps (arrival, first scheduled, first token, every token, finish) live on the
`Request` and are copied into each `RequestOutput`; per-step numbers are a `StepStats` that
listeners (metrics, load tests) receive without reaching into the scheduler.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
import torch

from aisp.engine.block_manager import BlockManager
from aisp.engine.compile_warmup import compile_for_engine
from aisp.engine.config import EngineConfig
from aisp.engine.cuda_graphs import DecodeGraphs
from aisp.engine.piecewise_graphs import PiecewiseGraphs
from aisp.engine.kv_cache import KVCache, KVCacheSpec
from aisp.engine.model_runner import ModelRunner, SampledTokens
from aisp.engine.request import Request, RequestStatus
from aisp.engine.sampling_params import SamplingParams
from aisp.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput, SchedulerStats
from aisp.model.presets import resolve_model
from aisp.quant.fp8 import linear_method_for


class RequestMetrics(msgspec.Struct, frozen=True, array_like=True):
    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    token_times: tuple[float, ...]
    finished_time: float | None
    num_cached_tokens: int
    num_preemptions: int

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """(E2E − TTFT) / (output tokens − 1): vLLM's definition; None below two tokens."""
        n = len(self.token_times)
        if n < 2 or self.first_token_time is None:
            return None
        return (self.token_times[-1] - self.first_token_time) / (n - 1)


class RequestOutput(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """One request's news from one step. Streams are deltas: `new_token_ids` every step; the
    whole output and metrics only once finished (copying a growing history every step would
    cost O(length) per request per step). A msgspec Struct, so the core's process sends a
    step's outputs as compact MessagePack (aisp.engine.core_messages) with no conversion.

    The core fills the token fields; the front end (aisp.engine.output_processor) adds the
    text: `text_delta` per delta and `text` on the finished one. The core's deltas also carry
    what the front end needs to measure the request without asking the core: the time of the
    output (its tokens', or the finish time), and the request's first-schedule time and prefix
    cache hit (on every delta once scheduled) and its preemptions so far."""

    request_id: str
    new_token_ids: tuple[int, ...]       # produced by this step
    finished: bool
    finish_reason: str | None = None     # stop | length | abort
    stop_reason: int | str | None = None
    prompt_token_ids: tuple[int, ...] = ()   # set when finished
    output_token_ids: tuple[int, ...] = ()   # set when finished
    text: str | None = None              # the output's text (front end), set when finished
    metrics: RequestMetrics | None = None    # set when finished
    token_time: float = 0.0              # scheduler clock: when these tokens (or the finish) came
    first_scheduled_time: float | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    text_delta: str = ""                 # front end: text safe to send with this delta


@dataclass(frozen=True)
class ModelInfo:
    """What an engine serves, as the front end and its clients need it (no engine internals)."""

    model: str                 # the preset name or model folder the engine loaded
    max_model_len: int         # prompt + output tokens of one request, at most
    max_model_len_reason: str  # what set max_model_len (a flag, the KV cache, the model)
    vocab_size: int            # token ids the model takes: [0, vocab_size)
    kv_capacity_tokens: int
    num_kv_blocks: int
    block_size: int
    device: str
    summary: str = ""          # graph and compile modes, in words (the server's banner)


@dataclass(frozen=True)
class StepStats:
    scheduler: SchedulerStats
    num_scheduled_requests: int
    num_scheduled_tokens: int
    num_generated_tokens: int
    step_time_s: float
    finished_request_ids: tuple[str, ...] = field(default_factory=tuple)
    # The plan: (request id, scheduled tokens, is a decode) per request, and who was preempted.
    scheduled: tuple[tuple[str, int, bool], ...] = ()
    preempted_request_ids: tuple[str, ...] = ()
    # State after the step (the scheduler's own stats describe the plan, before it ran).
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    schedule_s: float = 0.0   # host: planning
    execute_s: float = 0.0    # launching forward + sampling, plus waiting for the sampled ids
    update_s: float = 0.0     # host: appending tokens, stop checks, outputs
    graph_path: str = "eager"  # how the forward ran: full | piecewise | eager | idle (no forward)


@dataclass(frozen=True)
class _LaunchedStep:
    """A step whose device work is queued; its tokens are read now (sync) or next step (async)."""

    plan: SchedulerOutput
    sampled: SampledTokens
    schedule_s: float
    launch_s: float


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        self.device = config.resolve_device()
        self.dtype = config.resolve_dtype(self.device)
        source = resolve_model(config.model)
        # Switches that cannot run here fail now, before the weights are read.
        kernels = config.resolve_kernels(self.device, source.config.head_dim)
        graph_mode = config.resolve_cuda_graphs(self.device, kernels)
        if config.compile == "full" and graph_mode.piecewise:
            raise ValueError(f"compile='full' compiles the whole forward, which piecewise graphs "
                             f"never call (they run the layers' halves), but cuda_graphs is "
                             f"'{graph_mode.name}'; use compile='regional' (the halves, which "
                             f"piecewise graphs capture), or cuda_graphs='full' or 'none'")
        # --quantization: the linears' method; FP8 quantizes the loaded weights in place.
        self.model, self.model_config = source.load(self.device, self.dtype, config.seed,
                                                    linear_method_for(config.quantization))
        try:
            self.tokenizer = source.tokenizer()
        except FileNotFoundError:
            self.tokenizer = None  # a weights-only folder still serves token-id prompts
        mc = self.model_config
        spec = KVCacheSpec(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim,
                           config.block_size, self.dtype)
        self.kv_cache = self._allocate_kv_cache(spec)
        self.max_model_len, self.max_model_len_reason = self._context_limit()
        self.block_manager = BlockManager(self.kv_cache.num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        eos = set(self.tokenizer.eos_token_ids if self.tokenizer else ()) | set(mc.eos_token_ids or ())
        self.scheduler = Scheduler(
            SchedulerConfig(max_num_batched_tokens=config.max_num_batched_tokens,
                            max_num_seqs=config.max_num_seqs, max_model_len=self.max_model_len,
                            max_model_len_reason=self.max_model_len_reason,
                            policy=config.policy,
                            enable_chunked_prefill=config.enable_chunked_prefill,
                            kv_cache_watermark=config.kv_cache_watermark),
            self.block_manager, eos_token_ids=eos)
        self.model.set_elementwise_kernels(kernels)  # fused norm/RoPE/SiLU beside Triton attention
        # --compile: compiled here, before any graph capture, and warmed up so steps never compile.
        self.compile_info = compile_for_engine(self.model, config.compile, self.kv_cache, kernels)
        self.graph_mode = graph_mode
        # One memory pool for every graph; piecewise first, largest buckets first (see each).
        pool = torch.cuda.graph_pool_handle() if graph_mode.capture else None
        piecewise = None if not graph_mode.piecewise else PiecewiseGraphs(
            self.model, min(config.cuda_graph_max_tokens or config.max_num_batched_tokens,
                            config.max_num_batched_tokens), self.device,
            capture=graph_mode.capture, pool=pool)
        graphs = None if not graph_mode.full_decode else DecodeGraphs(
            self.model, self.kv_cache, config.max_num_seqs, self.max_model_len, self.device,
            kernels, capture=graph_mode.capture, pool=pool)
        self.runner = ModelRunner(self.model, self.kv_cache, self.device, kernels,
                                  decode_graphs=graphs, piecewise_graphs=piecewise)
        self.async_scheduling = config.resolve_async_scheduling(self.device)
        self._in_flight: _LaunchedStep | None = None
        # Telemetry hooks: every step's stats, and every finished request's final output.
        self.step_listeners: list[Callable[[StepStats], None]] = []
        self.finished_listeners: list[Callable[[RequestOutput], None]] = []
        self._ids = itertools.count()
        torch.manual_seed(config.seed)

    def graph_summary(self) -> str:
        """One line on the CUDA-graph mode: what was captured, how long it took, what it holds."""
        mode = self.graph_mode
        if mode.name == "none":
            return "cuda graphs: none (every step eager)"
        text = f"cuda graphs: {mode.name}"
        if not mode.capture:
            return text + " (not captured: the padded graph inputs run eagerly)"
        for label, graphs in (("piecewise", self.runner.piecewise_graphs),
                              ("full decode", self.runner.decode_graphs)):
            if graphs is not None:
                i = graphs.info
                text += (f"; {label} {i.num_graphs:,} graphs over {i.num_buckets} sizes, captured "
                         f"in {i.capture_s:.1f} s, pool {i.pool_bytes / 2**20:,.0f} MiB")
        return text

    def _context_limit(self) -> tuple[int, str]:
        """max_model_len and what set it, in words that name the option to change: admission
        errors quote it, so a prompt refused at 16 tokens says it was the KV cache, not the model.

        The limit is max_model_len if given, else the smaller of the model's context
        (ModelConfig.max_model_len) and the KV cache's capacity (blocks x block_size).
        """
        cfg, mc, cache = self.config, self.model_config, self.kv_cache
        capacity = cache.capacity_tokens
        if cfg.num_kv_blocks is not None:
            cache_size, cache_fix = (f"--num-kv-blocks {cache.num_blocks:,} x --block-size "
                                     f"{cache.block_size}"), "raise --num-kv-blocks"
        else:
            budget = (f"kv_cache_memory_fraction {cfg.kv_cache_memory_fraction:g} of free GPU "
                      f"memory" if self.device.type == "cuda"
                      else f"cpu_kv_cache_bytes {cfg.cpu_kv_cache_bytes / 2**20:,.0f} MiB")
            cache_size, cache_fix = (f"{cache.num_blocks:,} blocks x {cache.block_size} tokens "
                                     f"fit in {budget}"), "set a larger --num-kv-blocks"
        model_words = f"the model's context: max_position_embeddings in {cfg.model}'s config"
        if cfg.max_model_len is not None:
            if cfg.max_model_len > capacity:
                raise ValueError(f"max_model_len {cfg.max_model_len:,} exceeds the KV cache's "
                                 f"{capacity:,} tokens ({cache_size}); lower --max-model-len or "
                                 f"{cache_fix}")
            if cfg.max_model_len > mc.max_model_len:
                raise ValueError(f"max_model_len {cfg.max_model_len:,} exceeds {mc.max_model_len:,} "
                                 f"tokens ({model_words}); lower --max-model-len to at most "
                                 f"{mc.max_model_len:,}")
            return cfg.max_model_len, "set by --max-model-len"
        if capacity < mc.max_model_len:
            return capacity, (f"capped by the KV cache: {cache_size}; {cache_fix}, the model's "
                              f"context is {mc.max_model_len:,}")
        return mc.max_model_len, model_words

    def _allocate_kv_cache(self, spec: KVCacheSpec) -> KVCache:
        cfg = self.config
        if cfg.num_kv_blocks is not None:
            return KVCache(spec, cfg.num_kv_blocks, self.device)
        min_len = cfg.max_model_len or cfg.block_size
        if self.device.type == "cuda":
            return KVCache.from_memory(spec, max_model_len=min_len, device=self.device,
                                       memory_fraction=cfg.kv_cache_memory_fraction)
        return KVCache.from_memory(spec, max_model_len=min_len, device=self.device,
                                   budget_bytes=cfg.cpu_kv_cache_bytes)

    # -- requests --------------------------------------------------------------------------------
    def add_request(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                    request_id: str | None = None, priority: int = 0,
                    arrival_time: float | None = None) -> str:
        """Queue a request; raises ValueError (with the numbers) if it can never be served.
        A text prompt is tokenized here for offline use; served requests arrive as token ids."""
        params = params or SamplingParams()
        if params.stop:
            raise ValueError("stop strings are text, which the core never sees: use generate() "
                             "or an engine client (aisp.engine.client), whose front end applies "
                             "them, or stop_token_ids")
        if self.tokenizer is None and isinstance(prompt, str):
            raise ValueError(f"model '{self.config.model}' has no tokenizer.json, so text prompts "
                             f"cannot be used; pass prompt token ids")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the model's vocabulary "
                             f"of {vocab:,}")
        rid = request_id or f"req-{next(self._ids)}"
        req = Request(rid, tuple(ids), params, priority=priority,
                      **({"arrival_time": arrival_time} if arrival_time is not None else {}))
        self.scheduler.add_request(req)
        return rid

    def abort(self, request_ids: Iterable[str]) -> list[str]:
        """Abort and free at once; unknown or finished ids are ignored. Finished listeners
        see each aborted request (finish_reason 'abort')."""
        aborted = self.scheduler.abort(request_ids)
        for req in aborted:
            out = self._output(req, ())
            for listener in self.finished_listeners:
                listener(out)
        return [r.request_id for r in aborted]

    def stop_requests(self, stops: Iterable[tuple[str, str]]) -> list[str]:
        """Finish requests whose output a stop string ended (the front end found it: the core
        sees no text) as 'stop' with that string, and free them; unknown or finished ids are
        ignored. Finished listeners see each one."""
        done = []
        for rid, stop in stops:
            req = self.scheduler.finish_request(rid, RequestStatus.FINISHED_STOPPED, stop)
            if req is None:
                continue
            out = self._output(req, ())
            for listener in self.finished_listeners:
                listener(out)
            done.append(rid)
        return done

    def unfinished_request_ids(self) -> list[str]:
        return list(self.scheduler.requests)

    def has_unfinished_requests(self) -> bool:
        """Whether a request still awaits output. A step left in flight once none does holds
        only tokens of finished requests (sampled after their stop), so it needs no draining:
        the next step reads and drops them."""
        return self.scheduler.has_unfinished_requests()

    # -- the loop --------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Plan and launch a step, then finish one: this one (sync), or the one launched before
        it (async), whose tokens the GPU produced while this one was being planned."""
        t0 = time.perf_counter()
        try:
            plan = self.scheduler.schedule()
            t1 = time.perf_counter()
            launched = _LaunchedStep(plan, self.runner.launch(plan), t1 - t0,
                                     time.perf_counter() - t1)
            if self.async_scheduling and not plan.is_empty:
                ready = [self._in_flight] if self._in_flight is not None else []
                self._in_flight = launched
            else:
                ready = [s for s in (self._in_flight, launched) if s is not None]
                self._in_flight = None
            return [out for s in ready for out in self._finish(s, t0)]
        except BaseException:
            self._in_flight = None  # its tokens are lost with the failed step; callers abort
            raise

    def _finish(self, launched: _LaunchedStep, t0: float) -> list[RequestOutput]:
        """Read a launched step's tokens and do its bookkeeping; emit its StepStats."""
        plan = launched.plan
        t2 = time.perf_counter()
        sampled = launched.sampled.result()
        t3 = time.perf_counter()
        result = self.scheduler.update_from_output(plan, sampled)

        # Requests that got a token this step, captured before any is stopped below.
        touched = {rid: self.scheduler.get_request(rid) for rid in result.new_token_ids}
        touched.update({r.request_id: r for r in result.finished_requests})
        outputs = [self._output(touched[rid], new) for rid, new in result.new_token_ids.items()]
        t4 = time.perf_counter()
        stats = StepStats(plan.stats, len(plan.scheduled_requests),
                          plan.total_num_scheduled_tokens, len(result.new_token_ids), t4 - t0,
                          tuple(sorted(rid for rid, r in touched.items() if r.is_finished)),
                          scheduled=tuple((r.request_id, r.num_scheduled_tokens, r.is_decode)
                                          for r in plan.scheduled_requests),
                          preempted_request_ids=plan.preempted_request_ids,
                          num_running=len(self.scheduler.running),
                          num_waiting=len(self.scheduler.waiting),
                          kv_cache_usage=self.block_manager.usage,
                          schedule_s=launched.schedule_s,
                          execute_s=launched.launch_s + (t3 - t2), update_s=t4 - t3,
                          graph_path=launched.sampled.graph_path)
        for listener in self.step_listeners:
            listener(stats)
        for out in outputs:
            if out.finished:
                for listener in self.finished_listeners:
                    listener(out)
        return outputs

    def _output(self, req: Request, new: tuple[int, ...]) -> RequestOutput:
        time = req.token_times[-1] if new else (req.finished_time or 0.0)
        if not req.is_finished:
            return RequestOutput(req.request_id, tuple(new), False, token_time=time,
                                 first_scheduled_time=req.first_scheduled_time,
                                 num_cached_tokens=req.num_cached_tokens,
                                 num_preemptions=req.num_preemptions)
        return RequestOutput(
            request_id=req.request_id, new_token_ids=tuple(new), finished=True,
            finish_reason=req.finish_reason, stop_reason=req.stop_reason,
            prompt_token_ids=req.prompt_token_ids, output_token_ids=tuple(req.output_token_ids),
            metrics=RequestMetrics(req.arrival_time, req.first_scheduled_time,
                                   req.first_token_time, tuple(req.token_times),
                                   req.finished_time, req.num_cached_tokens, req.num_preemptions),
            token_time=req.finished_time or time, first_scheduled_time=req.first_scheduled_time,
            num_cached_tokens=req.num_cached_tokens, num_preemptions=req.num_preemptions)

    @property
    def model_info(self) -> ModelInfo:
        compile_line = self.compile_info.summary() if self.compile_info.compiled else ""
        return ModelInfo(self.config.model, self.max_model_len, self.max_model_len_reason,
                         self.model_config.vocab_size, self.kv_cache.capacity_tokens,
                         self.kv_cache.num_blocks, self.kv_cache.block_size, str(self.device),
                         "; ".join(x for x in (self.graph_summary(), compile_line) if x))

    def generate(self, prompts: Sequence[str | Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 on_output: Callable[[RequestOutput], None] | None = None) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order, with text and stop strings done
        by the same front-end code as the server's (aisp.engine.output_processor). `on_output`
        sees every user delta (progress bars, streaming)."""
        from aisp.engine.output_processor import OutputProcessor

        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        front = OutputProcessor(self.tokenizer)
        ids = []
        for prompt, sp in zip(prompts, params):
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    raise ValueError(f"model '{self.config.model}' has no tokenizer.json, so "
                                     f"text prompts cannot be used; pass prompt token ids")
                prompt = self.tokenizer.encode(prompt)
            rid, arrival = f"req-{next(self._ids)}", time.monotonic()
            front.add(rid, prompt, sp, arrival)
            ids.append(self.add_request(prompt, dataclasses.replace(sp, stop=()), rid,
                                        arrival_time=arrival))
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished_requests():
            for core_out in self.step():
                out = front.process(core_out)
                if front.to_stop:
                    self.stop_requests(front.to_stop)
                    front.to_stop.clear()
                if out is None:
                    continue
                if on_output is not None:
                    on_output(out)
                if out.finished:
                    final[out.request_id] = out
        return [final[i] for i in ids]
