"""Accuracy of engine variants: perplexity per variant and logit agreement with the first.

    python ch16/perplexity_eval.py --compare float32 bfloat16            # tiny preset, CPU
    python ch16/perplexity_eval.py --model ./llama-3-8b --device cuda --max-length 2048 \\
        --num-tokens 65536 --compare bfloat16 fp8-per-channel fp8-per-tensor   # once FP8 lands

Every variant is the same model with one engine switch changed (aisp.eval.variants: the dtypes
float32, bfloat16, float16 today; the FP8 linear methods are the next registry entries). Each is
scored on the same windows of the same text (default: the built-in pydoc_data.topics eval split,
cut to --num-tokens); the first variant is the reference, and each other row shows its
perplexity, ΔPPL = (PPL - PPL_ref) / PPL_ref, KL(reference || variant) per token (mean, max) and
top-1 agreement. Windows are lm-eval's disjoint ones by default (`--method hf-strided` with
--stride for HF's). Float64 accumulation throughout (aisp.eval.perplexity).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from aisp.eval.corpus import default_corpus
    from aisp.eval.perplexity import METHODS, logit_agreement, perplexity, text_tokens
    from aisp.eval.variants import VARIANTS, get_variant
    from aisp.hardware import detect
    from aisp.model.presets import resolve_model

    p = argparse.ArgumentParser(prog="perplexity_eval.py", description=__doc__.split("\n")[0])
    p.add_argument("--compare", nargs="+", default=["float32", "bfloat16"], metavar="VARIANT",
                   help=f"variants, the first is the reference; one of {', '.join(VARIANTS)}")
    p.add_argument("--model", default="tiny", help="a preset or an HF model folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--text", type=Path, help="UTF-8 text file (default: pydoc_data.topics eval)")
    p.add_argument("--num-tokens", type=int, default=2048,
                   help="score the first N tokens of the text (0: all)")
    p.add_argument("--max-length", type=int, default=256, help="window length in tokens")
    p.add_argument("--stride", type=int, help="hf-strided only (default: max_length / 2)")
    p.add_argument("--method", default="lm-eval-disjoint", choices=METHODS)
    p.add_argument("--seed", type=int, default=0, help="weight seed of a preset")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        variants = [get_variant(v) for v in args.compare]
        source = resolve_model(args.model)
        device = detect(args.device).device
        text = args.text.read_text(encoding="utf-8") if args.text else default_corpus().text
        ids, prefix = text_tokens(source.tokenizer(), text, args.method)
        ids = ids[:args.num_tokens] if args.num_tokens > 0 else ids
        stride = args.stride or max(1, args.max_length // 2)
        window = dict(method=args.method, max_length=args.max_length, stride=stride,
                      prefix_token_id=prefix)
        ref = variants[0].load(source, device, args.seed)
        rows = []
        if len(variants) == 1:
            r = perplexity(ref, ids, **window)
            rows.append({"variant": variants[0].name, "perplexity": r.perplexity,
                         "num_scored_tokens": r.num_scored_tokens})
        for v in variants[1:]:
            a = logit_agreement(ref, v.load(source, device, args.seed), ids, **window)
            if not rows:
                rows.append({"variant": variants[0].name, "perplexity": a.reference_perplexity,
                             "num_scored_tokens": a.num_scored_tokens})
            rows.append({"variant": v.name, "perplexity": a.candidate_perplexity,
                         "num_scored_tokens": a.num_scored_tokens} | a.to_dict())
    except (ValueError, RuntimeError, OSError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    title = (f"{args.model} on {device}: {args.method}, max_length {args.max_length}"
             + (f", stride {stride}" if args.method == "hf-strided" else "")
             + f", {rows[0]['num_scored_tokens']:,} tokens; agreement vs {rows[0]['variant']}")
    t = Table(title=escape(title), title_justify="left")
    for col in ("variant", "PPL", "ΔPPL", "KL mean", "KL max", "top-1"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        agree = [f"{r['delta_ppl']:+.3e}", f"{r['kl_mean']:.3e}", f"{r['kl_max']:.3e}",
                 f"{r['top1_agreement']:.4f}"] if "kl_mean" in r else ["ref"] + ["-"] * 3
        t.add_row(r["variant"], f"{r['perplexity']:,.4f}", *agree)
    console.print(t)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": str(device),
                                         "window": window, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
