import torch, triton
from aisp.kernels.paged_attention import paged_decode_attention, alloc_decode_workspace
from aisp.kernels.kv_cache_ops import store_kv
import triton.runtime._allocation as A
print("triton allocator:", A._allocator)
B, hq, hkv, d, bs = 4, 32, 8, 128, 16
kc = torch.randn(64, bs, hkv, d, device="cuda", dtype=torch.bfloat16); vc = torch.randn_like(kc)
bt = torch.randperm(64, device="cuda")[:60].view(4, 15).int()
lens = torch.full((4,), 200, dtype=torch.int32, device="cuda")
q = torch.randn(B, hq, d, device="cuda", dtype=torch.bfloat16); out = torch.empty_like(q)
ws = alloc_decode_workspace(4, hq, hkv, d, 240, "cuda", num_splits=4)
def cap(name, fn):
    fn(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph(); before = torch.cuda.memory_allocated()
    with torch.cuda.graph(g):
        fn()
    print(name, torch.cuda.memory_allocated() - before)
    return g
cap("empty", lambda: None)
cap("noop-add", lambda: out.add_(0))
cap("split1", lambda: paged_decode_attention(q, kc, vc, bt, lens, 0.1, out=out, num_splits=1))
cap("split4", lambda: paged_decode_attention(q, kc, vc, bt, lens, 0.1, out=out, num_splits=4, workspace=ws))
k = torch.randn(4, hkv, d, device="cuda", dtype=torch.bfloat16)
cap("store", lambda: store_kv(k, k, kc, vc, torch.arange(4, device="cuda")))
