"""``python -m bench.onnx_optimize``: attngraph ``optimize`` beside onnxruntime's own transformer optimizer, on
torch exports of small Hugging Face models, round-robin in one process.

Models (random weights from configs, nothing downloaded; eager attention, the form onnxruntime's optimizer
knows): BERT, GPT-2 and Llama with ``--layers`` layers of width ``--hidden``, each exported by both torch
exporters (TorchScript, ``dynamo=False``, opset 17; and ``dynamo=True``, opset 18) with dynamic batch and
sequence, called as ``model(input_ids, attention_mask)`` (row 1 of the batch right-padded).
For each export:

* ``onnxruntime.transformers.optimizer.optimize_model`` (model_type bert for BERT, gpt2 for GPT-2 and Llama,
  ``opt_level=0``: its Python fusions only; what it fuses into ``com.microsoft`` attention ops is counted, and
  a crash is reported as one);
* ``attngraph.frontends.onnx_discovery.optimize_onnx`` in each ``--styles`` (discover, rewrite, check): the
  attention subgraphs it rewrote, and those it left with the reason.

Each resulting model, and the original, runs under onnxruntime (CPU, ``--threads`` thread(s), all graph
optimizations) at a prefill shape (batch ``--batch``, ``--prefill`` tokens) and a decode-like shape (q_len 1,
no cache: the whole model on one token); medians of round-robin rounds, and each model's max |error| against the
original's outputs. Targets (issue 17): attngraph fuses every attention the onnxruntime optimizer fuses, plus the
ones it does not, and its model is at least as fast.

    python -m bench.onnx_optimize [--models bert gpt2 llama] [--exporters ts dynamo] [--out bench/reports/cpu-onnx-optimize.md]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

from bench.roundrobin import publish, round_robin, table

FUSED_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "DecoderMaskedMultiHeadAttention"}
ORT_MODEL_TYPE = {"bert": "bert", "gpt2": "gpt2", "llama": "gpt2"}
OPSETS = {"ts": 17, "dynamo": 18}


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.onnx_optimize",
                                description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["bert", "gpt2", "llama"], choices=["bert", "gpt2", "llama"],
                   help="model families")
    p.add_argument("--exporters", nargs="+", default=["ts", "dynamo"], choices=["ts", "dynamo"],
                   help="torch exporters: TorchScript (dynamo=False, opset 17) and dynamo (opset 18)")
    p.add_argument("--styles", nargs="+", default=["attention", "attention-noguards", "decomposed"],
                   choices=["attention", "attention-noguards", "contrib", "decomposed"],
                   help="attngraph optimize styles ('-noguards': optimize --no-guards, the bare operator)")
    p.add_argument("--layers", type=int, default=2, help="layers per model")
    p.add_argument("--hidden", type=int, default=256, help="hidden size")
    p.add_argument("--heads", type=int, default=4, help="attention heads (Llama: half as many kv heads)")
    p.add_argument("--batch", type=int, default=2, help="batch size of both shapes")
    p.add_argument("--prefill", type=int, default=128, help="tokens of the prefill shape")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime intra-op threads (1: stable medians on a shared 2-core machine)")
    p.add_argument("--rounds", type=int, default=21, help="round-robin rounds per shape")
    p.add_argument("--budget", type=float, default=20.0, help="seconds per shape (at least 3 rounds)")
    p.add_argument("--workdir", help="folder for the exported and optimized models (default: a temporary one)")
    p.add_argument("--out", help="write the Markdown report here")
    return p.parse_args(argv)


# ---- models and exports ------------------------------------------------------------------------------------

def _hf_model(kind: str, args):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    h, heads, layers = args.hidden, args.heads, args.layers
    if kind == "bert":
        config = tf.BertConfig(vocab_size=1000, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=4 * h, max_position_embeddings=512)
        model = tf.BertModel._from_config(config, attn_implementation="eager", add_pooling_layer=False)
    elif kind == "gpt2":
        config = tf.GPT2Config(vocab_size=1000, n_embd=h, n_layer=layers, n_head=heads, n_positions=512)
        model = tf.GPT2Model._from_config(config, attn_implementation="eager")
    else:
        config = tf.LlamaConfig(vocab_size=1000, hidden_size=h, intermediate_size=4 * h, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                                max_position_embeddings=512)
        model = tf.LlamaModel._from_config(config, attn_implementation="eager")
    model.config.use_cache = False

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    return Wrapped(model.eval()).eval()  # the wrapper too: dynamo keeps a training-mode wrapper's dropout


def _tokens(batch: int, seq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 1000, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    if batch > 1 and seq > 2:
        mask[1, -(seq // 4 or 1):] = 0  # row 1 right-padded
    return {"input_ids": ids, "attention_mask": mask}


def _export(module, exporter: str, path: str) -> None:
    import torch

    feeds = _tokens(2, 8)
    args = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))
    names = ["input_ids", "attention_mask"]
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        if exporter == "ts":
            axes = {n: {0: "batch", 1: "seq"} for n in names}
            torch.onnx.export(module, args, path, input_names=names, output_names=["last_hidden_state"],
                              dynamo=False, opset_version=OPSETS["ts"], dynamic_axes=axes)
        else:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=1, max=512)
            shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
            program = torch.onnx.export(module, args, input_names=names, output_names=["last_hidden_state"],
                                        dynamo=True, opset_version=OPSETS["dynamo"], dynamic_shapes=shapes,
                                        optimize=True)
            program.save(path, external_data=False)


# ---- the two optimizers --------------------------------------------------------------------------------------

def _fused(model) -> int:
    return sum(1 for n in model.graph.node if n.domain == "com.microsoft" and n.op_type in FUSED_OPS)


def _ort_optimize(src: str, dst: str, kind: str, args) -> tuple[int | None, str]:
    """(attention ops onnxruntime's optimizer fused, note); None when it crashed."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            opt = optimize_model(src, model_type=ORT_MODEL_TYPE[kind], num_heads=args.heads, hidden_size=args.hidden,
                                 opt_level=0)
            model = opt.model
            model.ir_version = min(model.ir_version, 10)  # onnxruntime 1.31 reads IR <= 10 with these opsets
            onnx.save(model, dst)
    except Exception as e:  # noqa: BLE001 - the optimizer's crashes are what is reported
        where = traceback.extract_tb(e.__traceback__)[-1]
        return None, f"crash: {type(e).__name__} in {os.path.basename(where.filename)}:{where.lineno} ({str(e)[:80]})"
    ops = collections.Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft")
    return _fused(model), ", ".join(f"{k} {v}" for k, v in sorted(ops.items())) or "no com.microsoft ops"


def _attngraph_optimize(src: str, dst: str, style: str):
    """(subgraphs rewritten, report or None, note)."""
    from attngraph.frontends.onnx_discovery.optimize import optimize_onnx

    try:
        report = optimize_onnx(src, dst, style=style.removesuffix("-noguards"), check=True,
                               guards=not style.endswith("-noguards"))
    except Exception as e:  # noqa: BLE001 - reported, never hidden (discovery may be partial)
        return None, None, f"failed: {type(e).__name__}: {str(e)[:160]}"
    reasons = collections.Counter(x.reason.split(":")[0][:90] for x in report.left)
    note = "; ".join(f"left {n}: {r}" for r, n in reasons.items())
    return len(report.rewritten), report, note


# ---- timing ----------------------------------------------------------------------------------------------------

def _session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _timed(models: dict[str, str], shapes: dict[str, dict], args):
    """{shape: {name: (median ms, max |error| vs original)}}; a model that cannot run gets (None, message)."""
    sessions, results = {}, {}
    for name, path in models.items():
        try:
            sessions[name] = _session(path, args.threads)
        except Exception as e:  # noqa: BLE001
            results.setdefault("load", {})[name] = str(e)[:100]
    for shape, feeds in shapes.items():
        outs, runs, row = {}, {}, {}
        for name, sess in sessions.items():
            given = {i.name for i in sess.get_inputs()}
            feed = {k: v for k, v in feeds.items() if k in given}
            try:
                outs[name] = sess.run(None, feed)[0]
            except Exception as e:  # noqa: BLE001
                row[name] = (None, f"run failed: {str(e)[:80]}")
                continue
            runs[name] = (lambda s=sess, f=feed: s.run(None, f))
        timings = round_robin(runs, rounds=args.rounds, warmup=2, budget_s=args.budget, inner=3, pause_s=0.01)
        ref = outs.get("original")
        for name, t in timings.items():
            err = float(np.max(np.abs(outs[name] - ref))) if ref is not None and outs[name].shape == ref.shape else None
            row[name] = (t.median_ms, err)
        results[shape] = row
    return results


# ---- the report ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = _args(argv)
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="attngraph-bench-optimize-")
    os.makedirs(work, exist_ok=True)
    shapes = {f"prefill B{args.batch} T{args.prefill}": _tokens(args.batch, args.prefill, 1),
              f"decode-like B{args.batch} T1": _tokens(args.batch, 1, 2)}
    fusion_rows, time_rows, notes = [], [], []
    summary = collections.Counter()
    for kind in args.models:
        module = _hf_model(kind, args)
        for exporter in args.exporters:
            label = f"{kind} {exporter}-{OPSETS[exporter]}"
            print(f"{label}: export ...", file=sys.stderr, flush=True)
            src = os.path.join(work, f"{kind}-{exporter}.onnx")
            try:
                _export(module, exporter, src)
            except Exception as e:  # noqa: BLE001
                fusion_rows.append([label, str(args.layers), "export failed", "-", "-"])
                notes.append(f"{label}: export failed: {type(e).__name__}: {str(e)[:160]}")
                continue
            models = {"original": src}
            print(f"{label}: onnxruntime optimizer ...", file=sys.stderr, flush=True)
            ort_path = os.path.join(work, f"{kind}-{exporter}-ort.onnx")
            t0 = time.perf_counter()
            ort_fused, ort_note = _ort_optimize(src, ort_path, kind, args)
            ort_s = time.perf_counter() - t0
            if ort_fused is not None:
                models["onnxruntime optimizer"] = ort_path
            cells = [label, str(args.layers), f"{ort_fused if ort_fused is not None else 'crash'} ({ort_s:.1f} s)"]
            notes.append(f"{label}: onnxruntime optimizer: {ort_note}")
            for style in args.styles:
                print(f"{label}: attngraph optimize --style {style} ...", file=sys.stderr, flush=True)
                ag_path = os.path.join(work, f"{kind}-{exporter}-attngraph-{style}.onnx")
                t0 = time.perf_counter()
                n, report, note = _attngraph_optimize(src, ag_path, style)
                ag_s = time.perf_counter() - t0
                if report is not None:
                    models[f"attngraph {style}"] = ag_path
                    check = f", check {report.max_ratio:.2f} of budget" if report.checked else ""
                    cells.append(f"{n} ({ag_s:.1f} s{check})")
                    summary["attngraph >= ort"] += int(n >= (ort_fused or 0))
                else:
                    cells.append("failed")
                if note:
                    notes.append(f"{label}: attngraph {style}: {note}")
            summary["exports"] += 1
            fusion_rows.append(cells)
            print(f"{label}: timing {', '.join(models)} ...", file=sys.stderr, flush=True)
            for shape, row in _timed(models, shapes, args).items():
                if shape == "load":
                    notes += [f"{label}: {name} did not load: {msg}" for name, msg in row.items()]
                    continue
                line = [label, shape]
                for name in ["original", "onnxruntime optimizer", *(f"attngraph {s}" for s in args.styles)]:
                    ms, err = row.get(name, (None, None))
                    if ms is None:
                        line.append(err if isinstance(err, str) else "-")
                    else:
                        line.append(f"{ms:.2f}" + (f" ({err:.1e})" if err is not None and name != "original" else ""))
                time_rows.append(line)
    styles = [f"attngraph {s}" for s in args.styles]
    lines = [(f"# attngraph optimize vs onnxruntime's transformer optimizer (CPU, {args.threads} thread{'s' * (args.threads != 1)}, "
             f"onnxruntime {ort.__version__}, torch {torch.__version__})"), "",
             (f"{args.layers}-layer models, hidden {args.hidden}, {args.heads} heads (Llama: {max(1, args.heads // 2)} kv "
             "heads), random weights, eager attention, inputs input_ids + attention_mask (row 1 right-padded)."), "",
             "## Attention subgraphs fused", "",
             ("Each model has one attention per layer. onnxruntime optimizer: com.microsoft attention ops after "
             "`optimize_model(opt_level=0)`; attngraph: subgraphs rewritten by `optimize_onnx` (each checked under "
             "onnxruntime against the original; time includes discovery, rewrite and check)."), "",
             table(["model / export", "attentions", "onnxruntime optimizer", *styles], fusion_rows), "",
             "## onnxruntime time of each resulting model", "",
             (f"Median ms per call over up to {args.rounds} round-robin rounds of 3 calls, all models of a row in "
              "one process (max |error| against the original model's output on the same inputs)."), "",
             table(["model / export", "shape", "original", "onnxruntime optimizer", *styles], time_rows), "",
             "## Notes", ""] + [f"* {n}" for n in notes]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
