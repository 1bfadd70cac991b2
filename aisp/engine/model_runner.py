"""`ModelRunner`: turn one step's plan into one forward pass and the sampled tokens.

Contract: `launch(plan: SchedulerOutput) -> SampledTokens` enqueues one forward pass and the
sampling on the device and returns at once; `SampledTokens.result()` waits for the ids and gives
`{request_id: [token]}` for every scheduled request whose chunk reaches the end of its sequence
(`ScheduledRequest.samples`); partial prefill chunks only fill the KV cache. A synchronous step
calls `result()` at once; async scheduling calls it after launching the next step.

Async scheduling: the engine may launch step N+1 before it reads step N's ids. A decode whose
input is a token step N sampled carries `PENDING_TOKEN_ID`; the runner fills it in on the device
from step N's sampled ids (kept from the last launch), so the host never waits between steps.

The flattened batch (decodes first, then prefill chunks; see aisp.engine.attention):
- `input_ids`, `positions`: the scheduled tokens and their absolute positions;
- `slot_mapping`: one flat KV slot per input token, from each request's block table;
- block tables padded to the step's longest with block 0 (never read: the kernels stop at the
  context length), context lengths for decodes, query offsets and sequence lengths for prefills.
Host lists are built once per step and copied to the device in one go per tensor.

The runner owns the per-request sampling generators (a seeded request keeps its own stream
across steps and across preemption) and drops them when the scheduler reports the request gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aisp.engine.attention import AttentionMetadata, PagedAttention
from aisp.engine.cuda_graphs import DecodeGraphs
from aisp.engine.host_io import to_device
from aisp.engine.piecewise_graphs import PiecewiseGraphs
from aisp.engine.kv_cache import KVCache
from aisp.engine.request import PENDING_TOKEN_ID
from aisp.engine.sampler import Sampler, make_generator
from aisp.engine.plan import ScheduledRequest, SchedulerOutput
from aisp.model.llama import LlamaForCausalLM


def _block_table(rows: Sequence[ScheduledRequest], device: torch.device) -> torch.Tensor:
    width = max((len(r.block_ids) for r in rows), default=0) or 1
    table = [list(r.block_ids) + [0] * (width - len(r.block_ids)) for r in rows]
    return to_device(table, torch.int32, device).reshape(len(rows), width)


@dataclass
class SampledTokens:
    """The ids one launched step sampled: on the device at once, on the host at `result()`."""

    request_ids: tuple[str, ...]
    device_ids: torch.Tensor | None = None   # int64 [len(request_ids)], on the device
    host_ids: torch.Tensor | None = None     # the same, being copied to (pinned) host memory
    ready: torch.cuda.Event | None = None    # recorded after the copy (CUDA only)
    graph_path: str = "eager"                # how the forward ran: full | piecewise | eager | idle

    def result(self) -> dict[str, list[int]]:
        if not self.request_ids:
            return {}
        if self.ready is not None:
            self.ready.synchronize()
        return {rid: [t] for rid, t in zip(self.request_ids, self.host_ids.tolist())}


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, device: torch.device,
                 kernels: str = "triton", sampler: Sampler | None = None,
                 decode_graphs: DecodeGraphs | None = None,
                 piecewise_graphs: PiecewiseGraphs | None = None):
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        self.kernels = kernels
        self.sampler = sampler or Sampler()
        self.decode_graphs = decode_graphs
        self.piecewise_graphs = piecewise_graphs
        self.generators: dict[str, torch.Generator | None] = {}
        self._last: SampledTokens = SampledTokens(())   # pending inputs are filled from it
        self._last_rows: dict[str, int] = {}

    def _pending_inputs(self, order: Sequence[ScheduledRequest]
                        ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows of the flattened batch, their ids on the device) for the inputs still pending,
        i.e. sampled by the previous launch; None when every input id is known."""
        rows, src = [], []
        offset = 0
        for s in order:
            if s.token_ids[0] == PENDING_TOKEN_ID:   # only a decode's single input can be pending
                rows.append(offset)
                src.append(self._last_rows[s.request_id])
            offset += s.num_scheduled_tokens
        if not rows:
            return None
        assert self._last.device_ids is not None, "a pending input but no step in flight"
        dev = self.device
        ids = self._last.device_ids.index_select(0, to_device(src, torch.int64, dev))
        return to_device(rows, torch.int64, dev), ids

    def build_metadata(self, decodes: list[ScheduledRequest], prefills: list[ScheduledRequest]
                       ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        bs = self.kv_cache.block_size
        order = decodes + prefills
        input_ids = [t for s in order for t in s.token_ids]
        positions = [p for s in order
                     for p in range(s.start_position, s.start_position + s.num_scheduled_tokens)]
        slots = [slot for s in order for slot in s.slot_mapping(bs)]
        qsl = [0]
        for s in prefills:
            qsl.append(qsl[-1] + s.num_scheduled_tokens)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=to_device(slots, torch.int64, dev),
            num_decode_tokens=len(decodes),
            decode_block_tables=_block_table(decodes, dev),
            decode_context_lens=to_device([s.start_position + 1 for s in decodes], torch.int32, dev),
            prefill_block_tables=_block_table(prefills, dev),
            prefill_query_start_loc=to_device(qsl, torch.int32, dev),
            prefill_seq_lens=to_device([s.start_position + s.num_scheduled_tokens
                                        for s in prefills], torch.int32, dev),
            prefill_max_query_len=max((s.num_scheduled_tokens for s in prefills), default=0),
        )
        input_ids_t = to_device(input_ids, torch.int64, dev)
        pending = self._pending_inputs(order)
        if pending is not None:
            input_ids_t.index_copy_(0, *pending)
        return input_ids_t, to_device(positions, torch.int64, dev), meta

    def _forward(self, decodes: list[ScheduledRequest], prefills: list[ScheduledRequest]
                 ) -> tuple[torch.Tensor, str]:
        """Hidden states of the step's tokens, and the path taken: a whole-step graph for a
        decode-only step (`full`), the dense pieces replayed around eager attention
        (`piecewise`), or every kernel launched from Python (`eager`) — the first that the
        graph mode has and the step fits."""
        full, pieces = self.decode_graphs, self.piecewise_graphs
        if full is not None and not prefills and len(decodes) <= full.max_batch:
            return full.run(decodes, self._pending_inputs(decodes)), "full"
        input_ids, positions, meta = self.build_metadata(decodes, prefills)
        attn = PagedAttention(self.kv_cache, meta, self.kernels)
        if pieces is not None and input_ids.shape[0] <= pieces.max_tokens:
            layers = self.model.layers
            hidden = pieces.run(input_ids, positions, lambda i, q, k, v: attn.forward(
                i, q, k, v, sliding_window=layers[i].self_attn.sliding_window))
            return hidden, "piecewise"
        return self.model(input_ids, positions, attn), "eager"

    @torch.inference_mode()
    def logits(self, plan: SchedulerOutput) -> tuple[torch.Tensor | None,
                                                      list[ScheduledRequest], str]:
        """One forward pass of the plan and the float32 logits of the rows that sample: the last
        token of each chunk that completes its sequence. Returns (logits or None when no row
        samples, the sampling requests in row order, the graph path taken)."""
        decodes = [s for s in plan.scheduled_requests if s.is_decode]
        prefills = [s for s in plan.scheduled_requests if not s.is_decode]
        hidden, path = self._forward(decodes, prefills)
        sampling: list[ScheduledRequest] = []
        rows: list[int] = []
        offset = 0
        for s in decodes + prefills:
            offset += s.num_scheduled_tokens
            if s.samples:
                sampling.append(s)
                rows.append(offset - 1)
        if not sampling:
            return None, sampling, path
        return self.model.compute_logits(hidden[to_device(rows, torch.int64, self.device)]), \
            sampling, path

    @torch.inference_mode()
    def launch(self, plan: SchedulerOutput) -> SampledTokens:
        for rid in (*plan.finished_request_ids,):
            self.generators.pop(rid, None)
        if not plan.scheduled_requests:
            return SampledTokens((), graph_path="idle")
        logits, sampling, path = self.logits(plan)
        if logits is None:
            return SampledTokens((), graph_path=path)
        gens = []
        for s in sampling:
            if s.request_id not in self.generators:
                self.generators[s.request_id] = make_generator(s.sampling_params.seed, self.device)
            gens.append(self.generators[s.request_id])
        tokens = self.sampler(logits, [s.sampling_params for s in sampling], gens)
        out = SampledTokens(tuple(s.request_id for s in sampling), tokens, tokens,
                            graph_path=path)
        if tokens.is_cuda:  # start the copy now; result() waits only for it
            out.host_ids = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            out.host_ids.copy_(tokens, non_blocking=True)
            out.ready = torch.cuda.Event()
            out.ready.record()
        self._last, self._last_rows = out, {rid: i for i, rid in enumerate(out.request_ids)}
        return out
