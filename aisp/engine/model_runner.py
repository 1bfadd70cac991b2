"""`ModelRunner`: turn one step's plan into one forward pass and the sampled tokens.

Contract: `execute(plan: SchedulerOutput) -> {request_id: [token]}` for every scheduled request
whose chunk reaches the end of its sequence (`ScheduledRequest.samples`); partial prefill
chunks only fill the KV cache.

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

import torch

from aisp.engine.attention import AttentionMetadata, PagedAttention
from aisp.engine.cuda_graphs import DecodeGraphs
from aisp.engine.kv_cache import KVCache
from aisp.engine.sampler import Sampler, make_generator
from aisp.engine.scheduler import ScheduledRequest, SchedulerOutput
from aisp.model.llama import LlamaForCausalLM


def _block_table(rows: Sequence[ScheduledRequest], device: torch.device) -> torch.Tensor:
    width = max((len(r.block_ids) for r in rows), default=0) or 1
    table = [list(r.block_ids) + [0] * (width - len(r.block_ids)) for r in rows]
    return torch.tensor(table, dtype=torch.int32, device=device).reshape(len(rows), width)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, device: torch.device,
                 kernels: str = "triton", sampler: Sampler | None = None,
                 decode_graphs: DecodeGraphs | None = None):
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        self.kernels = kernels
        self.sampler = sampler or Sampler()
        self.decode_graphs = decode_graphs
        self.generators: dict[str, torch.Generator | None] = {}

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
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            num_decode_tokens=len(decodes),
            decode_block_tables=_block_table(decodes, dev),
            decode_context_lens=torch.tensor([s.start_position + 1 for s in decodes],
                                             dtype=torch.int32, device=dev),
            prefill_block_tables=_block_table(prefills, dev),
            prefill_query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            prefill_seq_lens=torch.tensor([s.start_position + s.num_scheduled_tokens
                                           for s in prefills], dtype=torch.int32, device=dev),
        )
        return (torch.tensor(input_ids, dtype=torch.int64, device=dev),
                torch.tensor(positions, dtype=torch.int64, device=dev), meta)

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput) -> dict[str, list[int]]:
        for rid in (*plan.finished_request_ids,):
            self.generators.pop(rid, None)
        scheduled = plan.scheduled_requests
        if not scheduled:
            return {}
        decodes = [s for s in scheduled if s.is_decode]
        prefills = [s for s in scheduled if not s.is_decode]
        graphs = self.decode_graphs
        if graphs is not None and not prefills and len(decodes) <= graphs.max_batch:
            hidden = graphs.run(decodes)  # decode-only step: replay (see cuda_graphs.py)
        else:
            input_ids, positions, meta = self.build_metadata(decodes, prefills)
            hidden = self.model(input_ids, positions,
                                PagedAttention(self.kv_cache, meta, self.kernels))

        # The last token of each chunk that completes its sequence gives that request's logits.
        sampling: list[ScheduledRequest] = []
        rows: list[int] = []
        offset = 0
        for s in decodes + prefills:
            offset += s.num_scheduled_tokens
            if s.samples:
                sampling.append(s)
                rows.append(offset - 1)
        if not sampling:
            return {}
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
        gens = []
        for s in sampling:
            if s.request_id not in self.generators:
                self.generators[s.request_id] = make_generator(s.sampling_params.seed, self.device)
            gens.append(self.generators[s.request_id])
        tokens = self.sampler(logits, [s.sampling_params for s in sampling], gens).tolist()
        return {s.request_id: [t] for s, t in zip(sampling, tokens)}
