"""`aisp eval perplexity`: perplexity of a model on a text file (or the built-in corpus).

    aisp eval perplexity --model tiny --device cpu                  # pydoc_data.topics eval split
    aisp eval perplexity --model ./llama --text wiki.txt --mode both --max-length 2048 \\
        --stride 512 --dtype bfloat16 --json ppl.json

`--mode strided` is HF's strided sliding window, `disjoint` lm-evaluation-harness's rolling
windows (token, word and byte perplexity, bits per byte), `both` runs the two; every number is
labelled with its method (aisp.eval.perplexity). Without --text the text is the held-out split
of the standard library's `pydoc_data.topics` (aisp.eval.corpus), so the command needs no
download. Exit 2 on bad input (missing or empty file, window beyond the model's context, stride
above max_length), with the value and the fix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

MODES = {"strided": ("hf-strided",), "disjoint": ("lm-eval-disjoint",),
         "both": ("hf-strided", "lm-eval-disjoint")}
DEFAULT_MAX_LENGTH = 1024     # capped by the model's context

eval_app = typer.Typer(no_args_is_help=True, help="Accuracy checks: perplexity.")
# Wide enough for the table when output goes to a file or CI log, as aisp.cli's console.
console = Console(width=None if sys.stdout.isatty() else 150)


def _error(message: object) -> None:
    console.print(f"[red]error:[/] {escape(str(message))}", highlight=False)


def read_text(path: Path | None) -> tuple[str, dict]:
    """The text to score and a description of it (for the JSON)."""
    from aisp.eval.corpus import Corpus, default_corpus

    if path is None:
        corpus = default_corpus()
    else:
        if not path.is_file():
            raise ValueError(f"--text {path}: no such file")
        try:
            corpus = Corpus(str(path), path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"--text {path} is not UTF-8 text ({e.reason} at byte "
                             f"{e.start:,})") from None
    if not corpus.text.strip():
        raise ValueError(f"--text {path} is empty (or only whitespace); give a file with text")
    return corpus.text, corpus.to_dict()


@eval_app.command("perplexity")
def perplexity_command(
    model: str = typer.Option("tiny", "--model",
                              help="A preset (tiny, ...) or an HF model folder."),
    text: Optional[Path] = typer.Option(None, "--text", help="UTF-8 text file to score (default: "
                                        "the last 10% of pydoc_data.topics, built in)."),
    max_length: Optional[int] = typer.Option(
        None, "--max-length",
        help=f"Window length in tokens (default: min(model context, {DEFAULT_MAX_LENGTH}))."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Strided mode: window step in "
                                         "tokens (default: max_length / 2)."),
    mode: str = typer.Option("both", "--mode", help="strided | disjoint | both."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if "
                                         "available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 "
                                        "(default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Weight seed of a preset."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Perplexity of a model on a text: HF strided and/or lm-eval disjoint windows."""
    from aisp.eval.perplexity import text_perplexity
    from aisp.hardware import detect
    from aisp.model.config import DTYPES
    from aisp.model.presets import resolve_model

    try:
        if mode not in MODES:
            raise ValueError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        if json_path is not None and json_path.is_dir():
            raise ValueError(f"--json {json_path} is a folder; give a file path")
        body, corpus = read_text(text)
        source = resolve_model(model)
        context = source.config.max_model_len
        length = max_length if max_length is not None else min(context, DEFAULT_MAX_LENGTH)
        step = stride if stride is not None else max(1, length // 2)
        info = detect(device)
        with console.status(f"loading {model}..."):
            lm, _ = source.load(info.device, DTYPES[dtype] if dtype else None, seed)
            tokenizer = source.tokenizer()
        results = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            for method in MODES[mode]:
                task = progress.add_task(f"{method} windows", total=None)
                results.append(text_perplexity(
                    lm, tokenizer, body, method, length, step,
                    progress=lambda done, total, t=task: progress.update(t, completed=done,
                                                                        total=total)))
                progress.remove_task(task)
    except (ValueError, RuntimeError, OSError) as e:
        _error(e)
        raise typer.Exit(2)
    used_dtype = str(next(lm.parameters()).dtype).removeprefix("torch.")
    console.print(escape(f"{model} on {info.device} ({used_dtype}); text: {corpus['name']} "
                         f"({corpus['num_bytes']:,} bytes)"), highlight=False)
    t = Table(title="perplexity", title_justify="left")
    for col in ("method", "max_length / stride", "windows", "scored tokens", "token PPL",
                "word PPL", "byte PPL", "bits/byte"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in results:
        t.add_row(escape(r.method), f"{r.max_length:,} / {r.stride:,}", str(r.num_windows),
                  f"{r.num_scored_tokens:,}", _fmt(r.perplexity), _fmt(r.word_perplexity),
                  _fmt(r.byte_perplexity), _fmt(r.bits_per_byte))
    console.print(t)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({
            "model": model, "device": str(info.device), "dtype": used_dtype, "seed": seed,
            "corpus": corpus, "results": [r.to_dict() for r in results]}, indent=2) + "\n")
        console.print(escape(f"wrote {json_path}"), highlight=False)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.4f}" if abs(v) < 1e6 else f"{v:.4e}"


def register(app: typer.Typer) -> None:
    """Add `eval` to `app` (aisp/cli.py calls this)."""
    app.add_typer(eval_app, name="eval")
