#!/usr/bin/env python3
"""Peer benchmark (issue 8): attnopt's CPU backend against PyTorch and ONNX Runtime.

Run by hand from the repository root; never in CI:

    pip install -r bench/requirements.txt
    python bench/peers.py --models bert-base,minilm --seq 128 --threads 2 --reps 20

For each model it
  1. builds a random-initialised checkpoint with transformers (fixed seed) and saves it with
     `save_pretrained` (safetensors) to OUT/NAME (default OUT: /tmp/attnopt-peers), reusing a
     folder built earlier from the same spec. Nothing is downloaded; nothing is written inside
     the repository;
  2. writes one seeded input file (batch 1; ids uniform over the vocabulary, all-ones
     attention_mask, zero token_type_ids for BERT; N(0,1) pixel_values for ViT);
  3. times, each in its own process at the same thread count (torch.set_num_threads(T),
     OMP_NUM_THREADS=MKL_NUM_THREADS=T, ORT intra-op threads T, inter-op 1):
       torch-f32          eager mode, f32, attn_implementation="eager", torch.inference_mode()
       torch-f32-sdpa     the same with attn_implementation="sdpa" (PyTorch's fused attention)
       torch-bf16         model.to(torch.bfloat16) (weights and activations bf16)
       torch-bf16-autocast  f32 weights, torch.autocast("cpu", dtype=torch.bfloat16)
       torch-compile      torch.compile(model) (inductor, f32); skipped when the first call
                          (compilation) takes longer than --compile-timeout seconds
       ort                torch.onnx.export (opset 17) + onnxruntime.transformers optimizer
                          fusions (model_type bert/gpt2/vit), ORT_ENABLE_ALL, CPU provider
     each: --warmup untimed calls, then --reps timed calls; median and min;
  4. runs `attnopt bench DIR --seq S --threads T --reps R --json` (original and exactly
     optimised graph; the binary is built with `cargo build --release` if missing), and
     the same with `--precision bf16` (the "attnopt bf16" row is the optimised graph);
  5. runs `attnopt run DIR --input X --output Y --backend cpu --threads T` (and with
     `--precision bf16`) on the same inputs and compares last_hidden_state with torch-f32's:
     max-abs error, max-abs / max|ref| (flagged when > 1e-3) and ||d||_2 / ||ref||_2;
  6. prints one table per model: each peer's median ms and attnopt/peer (< 1: attnopt
     faster), then attnopt's kernel breakdown (matmul share vs the rest).

Everything measured also goes to OUT/results-<time>.json.

With --decode MODEL_DIR it instead times decoding (a causal LM folder, e.g. one written by
`cargo run --release --example sparse_checkpoint -- llama1b DIR`): transformers' per-token
step (eager, dynamic and static KV cache) against `attnopt bench --decode` at --positions, same
threads and --dtype; prints ms per token and attnopt ÷ transformers.

With --attention it instead times attention alone: PyTorch's fused SDPA
(`torch.nn.functional.scaled_dot_product_attention`, f32, no mask, [1, heads, N, head_dim])
at each N of --attention-seq, --threads threads, median of a few calls (fewer at large N).
Compare with `cargo run --release --example attention_bench` (attnopt softmax and Hydra).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> how to build it. `cls` is the transformers class; `config` its config class and
# arguments; `kind` picks inputs and the ORT optimizer's model_type.
MODELS = {
    "bert-base": {
        "cls": "BertModel",
        "config": ("BertConfig", dict(
            vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)),
        "kind": "bert", "seed": 8001,
    },
    "minilm": {  # all-MiniLM-L6-v2's shape
        "cls": "BertModel",
        "config": ("BertConfig", dict(
            vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
            intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)),
        "kind": "bert", "seed": 8002,
    },
    "gpt2": {
        "cls": "GPT2Model",
        "config": ("GPT2Config", dict(
            vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)),
        "kind": "gpt2", "seed": 8003,
    },
    "vit-b16": {
        "cls": "ViTModel", "init": dict(add_pooling_layer=False),
        "config": ("ViTConfig", dict(
            image_size=224, patch_size=16, num_channels=3, hidden_size=768,
            num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
        "kind": "vit", "seed": 8004,
    },
}

PEERS = ["torch-f32", "torch-f32-sdpa", "torch-bf16", "torch-bf16-autocast", "torch-compile", "ort"]

REL_FLAG = 1e-3


def log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def spec_of(name: str) -> dict:
    s = MODELS[name]
    return {"name": name, "cls": s["cls"], "config": list(s["config"]), "init": s.get("init", {}),
            "seed": s["seed"], "perturb": 0.02}


def model_dims(name: str) -> tuple[int, int]:
    cfg = MODELS[name]["config"][1]
    return (cfg.get("num_attention_heads", cfg.get("n_head")),
            cfg.get("hidden_size", cfg.get("n_embd")))


def paths(out: str, name: str, seq: int) -> dict:
    io = os.path.join(out, "_io")
    return {
        "model": os.path.join(out, name),
        "spec": os.path.join(out, f"{name}.spec.json"),
        "io": io,
        "inputs": os.path.join(io, f"{name}.s{seq}.inputs.safetensors"),
        "onnx_dir": os.path.join(out, "_onnx"),
        "out": lambda peer: os.path.join(io, f"{name}.s{seq}.{peer}.out.safetensors"),
    }


# --------------------------------------------------------------------------- build (main process)


def build_checkpoint(name: str, out: str) -> str:
    """Build OUT/NAME unless a folder from the same spec is there already."""
    p = paths(out, name, 0)
    spec = spec_of(name)
    if os.path.exists(p["spec"]) and os.path.exists(os.path.join(p["model"], "config.json")):
        with open(p["spec"]) as f:
            if json.load(f) == spec:
                log(f"{name}: reusing {p['model']}")
                return p["model"]
    import torch
    import transformers

    log(f"{name}: building checkpoint (seed {spec['seed']})")
    t0 = time.time()
    cfg_cls, cfg_args = MODELS[name]["config"]
    config = getattr(transformers, cfg_cls)(**cfg_args)
    torch.manual_seed(spec["seed"])
    model = getattr(transformers, MODELS[name]["cls"])(config, **spec["init"]).eval()
    # transformers' init leaves biases at 0 and norm weights at 1; make them non-trivial so
    # the output check exercises them (timing does not depend on it).
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    with torch.no_grad():
        for pname, prm in model.named_parameters():
            if pname.endswith("bias") or "LayerNorm" in pname or ".ln_" in pname \
                    or "layernorm" in pname:
                prm.add_(torch.randn(prm.shape, generator=gen) * spec["perturb"])
    if os.path.exists(p["model"]):
        shutil.rmtree(p["model"])
    model.save_pretrained(p["model"], safe_serialization=True)
    with open(p["spec"], "w") as f:
        json.dump(spec, f, indent=1)
    log(f"{name}: saved to {p['model']} in {time.time() - t0:.1f} s")
    return p["model"]


def write_inputs(name: str, out: str, seq: int) -> str:
    import torch
    from safetensors.torch import save_file

    p = paths(out, name, seq)
    os.makedirs(p["io"], exist_ok=True)
    kind = MODELS[name]["kind"]
    cfg = MODELS[name]["config"][1]
    gen = torch.Generator().manual_seed(MODELS[name]["seed"] + 2)
    if kind == "vit":
        s = cfg["image_size"]
        t = {"pixel_values": torch.randn(1, cfg["num_channels"], s, s, generator=gen)}
    else:
        t = {"input_ids": torch.randint(0, cfg["vocab_size"], (1, seq), generator=gen,
                                        dtype=torch.int64),
             "attention_mask": torch.ones(1, seq, dtype=torch.int64)}
        if kind == "bert":
            t["token_type_ids"] = torch.zeros(1, seq, dtype=torch.int64)
    save_file(t, p["inputs"])
    return p["inputs"]


# --------------------------------------------------------------------------- worker (one peer)


def load_torch_model(name: str, out: str, attn: str):
    import torch
    import transformers

    cls = getattr(transformers, MODELS[name]["cls"])
    model = cls.from_pretrained(paths(out, name, 0)["model"], dtype=torch.float32,
                                attn_implementation=attn, **MODELS[name].get("init", {}))
    return model.eval()


def time_calls(fn, warmup: int, reps: int) -> dict:
    t0 = time.perf_counter()
    first = fn()
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(max(0, warmup - 1)):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts),
            "first_call_ms": first_ms, "reps": reps, "result": first}


class CompileTimeout(Exception):
    pass


def worker(args) -> dict:
    """Measure one peer on one model; print a JSON line. Runs in its own process."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    name, peer = args.model, args.peer
    p = paths(args.out, name, args.seq)
    inputs = load_file(p["inputs"])
    res = {"peer": peer, "torch_threads": torch.get_num_threads()}

    if peer.startswith("torch"):
        attn = "sdpa" if peer == "torch-f32-sdpa" else "eager"
        model = load_torch_model(name, args.out, attn)
        feed = dict(inputs)
        note = f"attn_implementation={attn}"
        ctx = None
        if peer == "torch-bf16":
            model = model.to(torch.bfloat16)
            if "pixel_values" in feed:
                feed["pixel_values"] = feed["pixel_values"].to(torch.bfloat16)
            note += "; model.to(torch.bfloat16)"
        elif peer == "torch-bf16-autocast":
            note += "; torch.autocast('cpu', dtype=torch.bfloat16), f32 weights"
            ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        elif peer == "torch-compile":
            model = torch.compile(model)
            note += "; torch.compile (inductor, default mode)"
        res["note"] = note

        def call():
            with torch.inference_mode():
                if ctx is not None:
                    with ctx():
                        return model(**feed).last_hidden_state
                return model(**feed).last_hidden_state

        if peer == "torch-compile":
            def on_alarm(signum, frame):
                raise CompileTimeout()
            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(args.compile_timeout)
            t0 = time.perf_counter()
            try:
                call()
            except CompileTimeout:
                return {"peer": peer, "skipped": f"compilation took over {args.compile_timeout} s"}
            finally:
                signal.alarm(0)
            res["compile_ms"] = (time.perf_counter() - t0) * 1e3
        t = time_calls(call, args.warmup, args.reps)
        y = t.pop("result").float().contiguous()
        res.update(t)
        save_file({"last_hidden_state": y}, p["out"](peer))
        return res

    if peer == "ort":
        try:
            import onnxruntime as ort
        except ImportError as e:
            return {"peer": peer, "skipped": f"onnxruntime not installed ({e})"}
        onnx_path, notes = export_onnx(name, args, inputs)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t0 = time.perf_counter()
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        res["session_ms"] = (time.perf_counter() - t0) * 1e3
        names = [i.name for i in sess.get_inputs()]
        feed = {k: inputs[k].numpy() for k in names}
        res["note"] = f"onnxruntime {ort.__version__}; " + notes
        t = time_calls(lambda: sess.run(None, feed)[0], args.warmup, args.reps)
        y = t.pop("result")
        res.update(t)
        save_file({"last_hidden_state": torch.from_numpy(y).float().contiguous()},
                  p["out"](peer))
        return res

    raise SystemExit(f"unknown peer {peer}")


def export_onnx(name: str, args, inputs) -> tuple[str, str]:
    """torch.onnx.export (cached per model and input shape) + ORT transformer fusions."""
    import torch

    p = paths(args.out, name, args.seq)
    os.makedirs(p["onnx_dir"], exist_ok=True)
    shape = "x".join(str(d) for d in next(iter(inputs.values())).shape)
    raw = os.path.join(p["onnx_dir"], f"{name}.{shape}.onnx")
    fused = os.path.join(p["onnx_dir"], f"{name}.{shape}.fused.onnx")
    meta = fused + ".json"
    if os.path.exists(fused) and os.path.exists(meta):
        with open(meta) as f:
            return fused, json.load(f)["notes"]

    model = load_torch_model(name, args.out, "eager")
    keys = list(inputs.keys())

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            kw = dict(zip(keys, xs))
            if "pixel_values" not in kw:
                kw["use_cache"] = False if MODELS[name]["kind"] == "gpt2" else None
                kw = {k: v for k, v in kw.items() if v is not None}
            return self.m(**kw).last_hidden_state

    xs = tuple(inputs[k] for k in keys)
    notes = []
    t0 = time.time()
    try:
        torch.onnx.export(Wrap(model), xs, raw, input_names=keys,
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False)
        notes.append("exported with torch.onnx.export(dynamo=False, opset 17)")
    except Exception as e:  # noqa: BLE001
        log(f"{name}: TorchScript ONNX export failed ({type(e).__name__}: {e}); trying dynamo")
        torch.onnx.export(Wrap(model), xs, raw, input_names=keys,
                          output_names=["last_hidden_state"], opset_version=18, dynamo=True,
                          external_data=False)
        notes.append("exported with torch.onnx.export(dynamo=True, opset 18)")
    log(f"{name}: ONNX export {time.time() - t0:.1f} s")
    heads, hidden = model_dims(name)
    try:
        from onnxruntime.transformers import optimizer

        t0 = time.time()
        opt = optimizer.optimize_model(raw, model_type=MODELS[name]["kind"], num_heads=heads,
                                       hidden_size=hidden, use_gpu=False)
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(fused)
        notes.append(f"onnxruntime.transformers optimizer model_type={MODELS[name]['kind']} "
                     f"fused {stats}")
        log(f"{name}: ORT optimizer {time.time() - t0:.1f} s: {stats}")
    except Exception as e:  # noqa: BLE001
        log(f"{name}: ORT transformers optimizer failed ({type(e).__name__}: {e}); "
            "using the plain export")
        shutil.copyfile(raw, fused)
        notes.append(f"ORT transformers optimizer failed ({type(e).__name__}), plain export")
    note = "; ".join(notes)
    with open(meta, "w") as f:
        json.dump({"notes": note}, f)
    return fused, note


# --------------------------------------------------------------------------- main process


def run_peer(args, name: str, peer: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", name, "--peer", peer,
           "--seq", str(args.seq), "--threads", str(args.threads), "--reps", str(args.reps),
           "--warmup", str(args.warmup), "--out", args.out,
           "--compile-timeout", str(args.compile_timeout)]
    limit = args.peer_timeout + (args.compile_timeout if peer == "torch-compile" else 0)
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=thread_env(args))
    except subprocess.TimeoutExpired:
        return {"peer": peer, "failed": f"timed out after {limit} s"}
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return {"peer": peer, "failed": f"exit {r.returncode}: " + " | ".join(tail)}
    res = json.loads(lines[-1])
    res["wall_s"] = time.time() - t0
    return res


def thread_env(args) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["MKL_NUM_THREADS"] = str(args.threads)
    return env


def attnopt_bin(args) -> str:
    b = args.attnopt or os.path.join(REPO_ROOT, "target", "release", "attnopt")
    if not os.path.exists(b):
        log("building attnopt (cargo build --release)")
        subprocess.run(["cargo", "build", "--release"], cwd=REPO_ROOT, check=True)
    return b


def kernel_summary(run: dict) -> dict:
    ks = run.get("kernels", [])
    total = sum(k["ms"] for k in ks) or 1.0
    mm = sum(k["ms"] for k in ks if k["name"].startswith("matmul"))
    top = sorted(ks, key=lambda k: -k["ms"])[:4]
    return {"matmul_share": mm / total, "non_matmul_share": 1 - mm / total,
            "kernel_ms_total": total,
            "top": [(k["name"], k["count"], k["ms"], k["share"], k["gflops"]) for k in top]}


def run_attnopt(args, name: str, model_dir: str, inputs: str) -> dict:
    b = attnopt_bin(args)
    res = {}
    cmd = [b, "bench", model_dir, "--seq", str(args.seq), "--threads", str(args.threads),
           "--reps", str(args.reps), "--json"]
    res["bench_command"] = " ".join(cmd)
    r = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args))
    if r.returncode != 0:
        res["bench_failed"] = r.stderr.strip().splitlines()[-1:] or [f"exit {r.returncode}"]
    else:
        j = json.loads(r.stdout[r.stdout.index("{"):])
        res["bench"] = j
        for run in j["runs"]:
            res[run["graph"]] = {k: run[k] for k in ("median_ms", "min_ms", "max_ms",
                                                      "compile_ms", "gflop", "gflops")}
            res[run["graph"]]["kernels"] = kernel_summary(run)
    out = paths(args.out, name, args.seq)["out"]("attnopt")
    cmd = [b, "run", model_dir, "--input", inputs, "--output", out, "--backend", "cpu",
           "--threads", str(args.threads)]
    res["run_command"] = " ".join(cmd)
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args))
    res["run_wall_s"] = time.time() - t0
    if r.returncode != 0:
        res["run_failed"] = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
    # bf16: both graphs' latency (the error against the f32 interpreter comes with them) and
    # the original graph's output (compared with torch-f32 like a peer).
    cmd = [b, "bench", model_dir, "--seq", str(args.seq), "--threads", str(args.threads),
           "--reps", str(args.reps), "--precision", "bf16", "--json"]
    res["bf16_bench_command"] = " ".join(cmd)
    r = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args))
    if r.returncode != 0:
        res["bf16_bench_failed"] = r.stderr.strip().splitlines()[-1:] or [f"exit {r.returncode}"]
    else:
        for run in json.loads(r.stdout[r.stdout.index("{"):])["runs"]:
            key = "bf16" if run["graph"] == "optimised" else "bf16_original"
            res[key] = {k: run.get(k) for k in ("median_ms", "min_ms", "max_ms", "compile_ms",
                                                "gflop", "gflops", "error_vs_f32")}
            res[key]["kernels"] = kernel_summary(run)
    cmd = [b, "run", model_dir, "--input", inputs, "--output",
           paths(args.out, name, args.seq)["out"]("attnopt-bf16"), "--threads", str(args.threads),
           "--precision", "bf16"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args))
    if r.returncode != 0:
        res["bf16_run_failed"] = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
    return res


def compare(ref_path: str, path: str) -> dict | None:
    if not (os.path.exists(ref_path) and os.path.exists(path)):
        return None
    import numpy as np
    from safetensors.numpy import load_file

    a = load_file(ref_path)["last_hidden_state"].astype(np.float64)
    b = load_file(path)["last_hidden_state"].astype(np.float64)
    if a.shape != b.shape:
        return {"shape_mismatch": [list(a.shape), list(b.shape)]}
    d = np.abs(a - b)
    m = float(d.max())
    rel = m / max(float(np.abs(a).max()), 1e-30)
    l2 = float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
    return {"max_abs": m, "max_abs_over_max_ref": rel, "l2_rel": l2, "flag": rel > REL_FLAG}


def fmt_ms(x):
    return "—" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def print_report(results: dict, args) -> None:
    w = sys.stdout.write
    w(f"\nthreads {args.threads}, batch 1, seq {args.seq} (ViT: its image), reps {args.reps}; "
      "ratio = attnopt median / peer median (< 1: attnopt faster)\n\n")
    w("| model | runner | median ms | min ms | attnopt orig / runner | attnopt opt / runner "
      "| attnopt bf16 / runner | max-abs vs torch-f32 | note |\n"
      "|---|---|---:|---:|---:|---:|---:|---:|---|\n")
    for name, r in results["models"].items():
        a = r.get("attnopt", {})
        ao = a.get("original", {}).get("median_ms")
        ap = a.get("optimised", {}).get("median_ms")
        ab = a.get("bf16", {}).get("median_ms")
        rows = [("attnopt original", a.get("original"), r["agreement"].get("attnopt"),
                 "CPU backend, f32"),
                ("attnopt optimised", a.get("optimised"), None, "exact rewrites only"),
                ("attnopt bf16 original", a.get("bf16_original"),
                 r["agreement"].get("attnopt-bf16"), "bf16 products"),
                ("attnopt bf16", a.get("bf16"), None, "optimised graph, bf16 products")]
        for peer in r["peers"]:
            pr = r["peers"][peer]
            if "median_ms" in pr:
                rows.append((peer, pr, r["agreement"].get(peer), short_note(pr)))
            else:
                rows.append((peer, None, None, pr.get("skipped") or "FAILED: " + pr.get("failed", "?")))
        for label, m, agr, note in rows:
            med = m.get("median_ms") if m else None
            mn = m.get("min_ms") if m else None
            ro = f"{ao / med:.2f}" if (ao and med and not label.startswith("attnopt")) else ""
            rp = f"{ap / med:.2f}" if (ap and med and not label.startswith("attnopt")) else ""
            rb = f"{ab / med:.2f}" if (ab and med and not label.startswith("attnopt")) else ""
            err = "" if not agr else (f"{agr['max_abs']:.1e}" + (" ⚠" if agr.get("flag") else ""))
            w(f"| {name} | {label} | {fmt_ms(med)} | {fmt_ms(mn)} | {ro} | {rp} | {rb} | {err} "
              f"| {note} |\n")
    w("\nattnopt kernel breakdown (original graph / optimised graph):\n\n")
    for name, r in results["models"].items():
        a = r.get("attnopt", {})
        if "bench_failed" in a or "original" not in a:
            w(f"- {name}: bench failed: {a.get('bench_failed')}\n")
            continue
        for g in ("original", "optimised", "bf16_original", "bf16"):
            if g not in a:
                continue
            k = a[g]["kernels"]
            top = ", ".join(f"{n} ×{c} {ms:.1f} ms ({s:.0%}, {gf:.0f} GFLOP/s)"
                            for n, c, ms, s, gf in k["top"])
            w(f"- {name} {g}: {a[g]['gflop']:.2f} GFLOP at {a[g]['gflops']:.0f} GFLOP/s; "
              f"matmul {k['matmul_share']:.0%}, non-matmul {k['non_matmul_share']:.0%}; "
              f"top: {top}\n")
    w("\noutput agreement, last_hidden_state vs torch-f32 (max-abs; max-abs/max|ref|; "
      "L2 rel):\n\n")
    for name, r in results["models"].items():
        for peer, agr in r["agreement"].items():
            if agr:
                flag = "  <-- over 1e-3 relative" if agr.get("flag") else ""
                w(f"- {name} {peer}: {agr.get('max_abs', float('nan')):.2e}; "
                  f"{agr.get('max_abs_over_max_ref', float('nan')):.2e}; "
                  f"{agr.get('l2_rel', float('nan')):.2e}{flag}\n")


def short_note(pr: dict) -> str:
    n = pr.get("note", "")
    if pr["peer"] == "torch-compile" and "compile_ms" in pr:
        n = f"compile {pr['compile_ms'] / 1e3:.0f} s"
    elif pr["peer"] == "ort":
        n = n.replace("exported with torch.onnx.export", "export").replace(
            "onnxruntime.transformers optimizer ", "ORT optimizer ")
    elif pr["peer"].startswith("torch"):
        n = n.split("; ", 1)[-1] if "; " in n else n
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="bert-base,minilm",
                    help=f"comma-separated subset of {','.join(MODELS)} (or 'all')")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default="/tmp/attnopt-peers")
    ap.add_argument("--attnopt", default=None, help="attnopt binary (default target/release)")
    ap.add_argument("--compile-timeout", type=int, default=60,
                    help="seconds allowed for torch.compile's first call")
    ap.add_argument("--peer-timeout", type=int, default=600)
    ap.add_argument("--no-attnopt", action="store_true")
    ap.add_argument("--attention", action="store_true",
                    help="time PyTorch SDPA attention alone (see below) and exit")
    ap.add_argument("--attention-seq", default="1024,4096,16384")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--decode", metavar="MODEL_DIR", default=None,
                    help="time decoding of this causal-LM folder instead (see below) and exit")
    ap.add_argument("--positions", default="128,1024")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)
    if os.path.commonpath([args.out, REPO_ROOT]) == REPO_ROOT:
        raise SystemExit("--out must be outside the repository")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)

    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    if args.attention:
        attention_only(args)
        return
    if args.decode:
        decode_only(args)
        return

    names = list(MODELS) if args.models == "all" else args.models.split(",")
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"unknown model {n}; known: {', '.join(MODELS)}")
    peers = args.peers.split(",")
    os.makedirs(args.out, exist_ok=True)
    results = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
               "machine": machine(), "versions": versions(), "args": vars(args), "models": {}}
    for name in names:
        d = build_checkpoint(name, args.out)
        x = write_inputs(name, args.out, args.seq)
        r = {"dir": d, "inputs": x, "peers": {}, "agreement": {}}
        for peer in ["attnopt", "attnopt-bf16"] + PEERS:  # no stale outputs from earlier runs
            stale = paths(args.out, name, args.seq)["out"](peer)
            if os.path.exists(stale):
                os.remove(stale)
        results["models"][name] = r
        for peer in peers:
            log(f"{name}: {peer}")
            r["peers"][peer] = run_peer(args, name, peer)
            pr = r["peers"][peer]
            log(f"{name}: {peer}: " + (f"median {pr['median_ms']:.2f} ms" if "median_ms" in pr
                                       else str(pr.get("skipped") or pr.get("failed"))))
        if not args.no_attnopt:
            log(f"{name}: attnopt bench + run")
            r["attnopt"] = run_attnopt(args, name, d, x)
        ref = paths(args.out, name, args.seq)["out"]("torch-f32")
        for peer in ["attnopt", "attnopt-bf16"] + [p for p in peers if p != "torch-f32"]:
            r["agreement"][peer] = compare(ref, paths(args.out, name, args.seq)["out"](peer))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    jpath = os.path.join(args.out, f"results-{stamp}.json")
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
          f"{results['machine']['isa']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    print_report(results, args)
    print(f"\nall numbers: {jpath}")


def decode_only(args) -> None:
    """Per-token decoding time of transformers (eager attention, its dynamic KV cache, and
    the static cache where it runs) against `attnopt bench --decode` on the same folder,
    threads, precision and positions: a prompt of P random tokens, then --reps one-token
    steps (median)."""
    import torch
    from transformers import AutoModelForCausalLM, StaticCache

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    positions = [int(p) for p in args.positions.split(",")]
    model = AutoModelForCausalLM.from_pretrained(args.decode, dtype=dtype,
                                                 attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    rows = {}
    for cache_kind in ["dynamic", "static"]:
        for p in positions:
            ids = torch.randint(0, vocab, (1, p))
            try:
                with torch.inference_mode():
                    cache = None
                    if cache_kind == "static":
                        cache = StaticCache(config=model.config, max_cache_len=p + args.reps + 2)
                    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    tok = out.logits[:, -1:].argmax(-1)
                    times = []
                    for i in range(args.reps):
                        pos = torch.tensor([p + i])
                        t = time.perf_counter()
                        out = model(input_ids=tok, past_key_values=cache, use_cache=True,
                                    cache_position=pos)
                        cache = out.past_key_values
                        tok = out.logits[:, -1:].argmax(-1)
                        times.append((time.perf_counter() - t) * 1e3)
                rows[(f"transformers-{cache_kind}", p)] = statistics.median(times)
            except Exception as e:  # a cache kind this model or version does not run
                log(f"{cache_kind} cache at {p}: {type(e).__name__}: {e}")
            log(f"transformers {cache_kind} cache, position {p}: "
                f"{rows.get((f'transformers-{cache_kind}', p), float('nan')):.2f} ms/token")
    cmd = [attnopt_bin(args), "bench", args.decode, "--decode", "--positions", args.positions,
           "--threads", str(args.threads), "--reps", str(args.reps), "--precision", args.dtype,
           "--json"]
    log(" ".join(cmd))
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    for pt in r["decode"]:
        rows[(f"attnopt-{pt['graph']}", pt["position"])] = pt["per_token_ms"]
    print(f"machine: {machine()['cpu']}; {args.threads} threads, {args.dtype}; attnopt floor "
          f"{r['floor_ms']:.2f} ms ({r['weight_bytes_per_token']} B at {r['read_gbps']:.1f} GB/s)")
    print(f"{'peer':<24} {'position':>8} {'ms/token':>10} {'attnopt original / peer':>24}")
    for (peer, p), ms in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ours = rows.get(("attnopt-original", p))
        ratio = f"{ours / ms:.2f}" if ours and not peer.startswith("attnopt") else ""
        print(f"{peer:<24} {p:>8} {ms:>10.2f} {ratio:>24}")


def attention_only(args) -> None:
    """PyTorch SDPA alone, per sequence length: median ms of up to --reps calls (each N gets
    as many calls as fit in ~20 s after one warm-up)."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {machine()['cpu']}; torch {torch.__version__}; threads {args.threads}; "
          f"{args.heads} heads x {args.head_dim}, f32")
    print(f"{'N':>7} {'calls':>5} {'median ms':>10} {'min ms':>10}")
    for n in [int(x) for x in args.attention_seq.split(",")]:
        q, k, v = (torch.randn(1, args.heads, n, args.head_dim) for _ in range(3))
        with torch.inference_mode():
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v)
            first = time.perf_counter() - t0
            reps = max(1, min(args.reps, int(20.0 / max(first, 1e-3))))
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v)
                times.append(time.perf_counter() - t0)
        print(f"{n:>7} {reps:>5} {statistics.median(times) * 1e3:>10.1f} "
              f"{min(times) * 1e3:>10.1f}", flush=True)


def machine() -> dict:
    cpu, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and (not cpu or cpu == "x86_64"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
           if f in flags]
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": "has " + " ".join(isa) + (
        "" if "amx_tile" in flags else "; no AMX")}


def versions() -> dict:
    v = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "safetensors", "numpy", "onnx", "onnxruntime"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = "not installed"
    return v


if __name__ == "__main__":
    main()
