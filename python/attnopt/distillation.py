"""Layer-wise distillation of a converted model (attention transfer, LoLCATs' first step).

For each converted layer, the teacher's (the original model's) input and output of that layer
are recorded once by attnopt (``Model.run(..., all_layers=True)``); then only that layer's
parameters that the conversion made or that feed it — the Q, K, V and output projections
(Hydra, sparse QKV) and the sparse feed-forward's controller — are trained with Adam to
reproduce the teacher layer's output (MSE), layers independent of each other. The student
is the converted folder loaded as PyTorch (``modeling_attnopt.AttnoptModel``: attnopt's graph
run by PyTorch), so the result is saved with ``save_pretrained`` and attnopt runs it exactly.

Needs torch, transformers and safetensors (``pip install torch transformers``).

    python -m attnopt.distillation CONVERTED --teacher ORIGINAL --data INPUTS.safetensors -o OUT
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

import attnopt

# Roles of the nodes whose weights a layer's distillation trains.
TRAINED_ROLES = {"qkv_proj", "q_proj", "k_proj", "v_proj", "attn_out_proj", "mlp_gate",
                 # products the Hydra rule rewrote (its new nodes take this role)
                 "attn_context"}


def _need_torch():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as e:
        raise attnopt.AttnoptError(
            f"distill needs PyTorch: {e.name} is not installed "
            "(pip install torch transformers safetensors)") from None


def _relative(a, b):
    import torch
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def _mean_pooled(hidden, mask):
    """Sentence embeddings: the mean over the attention mask (all tokens without one)."""
    import torch
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _cosine(a, b):
    import torch
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


def distill(converted, teacher, data, out, *, layers=None, steps=200, lr=1e-3, minutes=None,
            seed=0, held_out=0.25, progress=True, finetune_steps=0, lora_rank=None,
            max_tokens=128):
    """Distils the converted folder ``converted`` layer by layer against ``teacher`` (the
    original model folder) on ``data`` — a text file, one document per line, tokenised with
    the teacher's tokenizer.json (at most ``max_tokens`` tokens each), or a safetensors file of
    token ids (``input_ids``, optionally ``attention_mask``/``token_type_ids``,
    ``[sequences, tokens]``) — and writes the result to the new folder ``out``. ``layers``: which layers (default: those
    the conversion changed); ``steps`` Adam steps per layer at learning rate ``lr``;
    ``minutes``: a time budget for all layers; the last ``held_out`` share of the sequences
    only measures. The report goes into ``out/report.json`` as ``"distill"`` (per layer the
    held-out error before, after stage 1 and after stage 2; for encoders the sentence-embedding
    cosine to the teacher before and after). ``finetune_steps``: then as many steps of end-to-end distillation of the
    whole student against the teacher's ``last_hidden_state`` (stage 2), training the same
    weights of every distilled layer in full, or, with ``lora_rank``, low-rank adapters on
    them (merged into the weights before saving). Returns the report (also written to
    ``out/report.json``)."""
    _need_torch()
    import torch
    from safetensors.numpy import load_file

    torch.manual_seed(seed)
    if os.path.exists(out):
        raise attnopt.AttnoptError(f"{out}: already exists; choose a new folder")
    report_file = os.path.join(os.fspath(converted), "report.json")
    converted_layers = []
    if os.path.exists(report_file):
        with open(report_file) as f:
            converted_layers = [l["layer"] for l in json.load(f)["layers"] if l["converted"]]
    layers = converted_layers if layers is None else [int(l) for l in layers]
    if not layers:
        raise attnopt.AttnoptError(f"{converted}: no converted layer to distil")
    if str(data).endswith((".safetensors", ".st")):
        inputs = {k: np.ascontiguousarray(v) for k, v in load_file(os.fspath(data)).items()}
    else:
        # A text file, one document per line, tokenised with the teacher's tokenizer.json
        # (truncated to max_tokens so the batch stays small).
        with open(data, encoding="utf-8") as f:
            docs = [line.strip() for line in f if line.strip()]
        if len(docs) < 2:
            raise attnopt.AttnoptError(f"{data}: {len(docs)} document(s); give at least 2")
        enc = attnopt.load(teacher, backend="interp").encode(docs)
        inputs = {k: np.ascontiguousarray(v[:, :max_tokens]) for k, v in enc.items()}
    n = next(iter(inputs.values())).shape[0]
    n_held = max(1, int(round(n * held_out)))
    if n - n_held < 1:
        raise attnopt.AttnoptError(f"{data}: {n} sequence(s); give at least 2 (one is held out)")
    # This package's graph model, whatever version of it the folder holds (it is written
    # back into the output below).
    from .modeling_attnopt import AttnoptModel
    student = AttnoptModel.from_pretrained(os.fspath(converted))
    takes = {nd["attrs"]["name"] for nd in student.nodes if nd["op"] == "input"}
    inputs = {k: v for k, v in inputs.items() if k in takes}
    if "input_ids" not in inputs and "pixel_values" not in inputs:
        raise attnopt.AttnoptError(f"{data}: holds none of the model's inputs ({sorted(takes)})")
    # The teacher's activations, recorded once by attnopt.
    ref = attnopt.load(teacher, backend="cpu").run(inputs, all_layers=True)
    split = {"fit": slice(0, n - n_held), "held": slice(n - n_held, n)}
    feeds = {part: {k: torch.from_numpy(v[s]) for k, v in inputs.items()}
             for part, s in split.items()}
    acts = {part: {k: torch.from_numpy(np.ascontiguousarray(v[s])) for k, v in ref.items()}
            for part, s in split.items()}
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    for p in student.parameters():
        p.requires_grad_(False)
    report = {"teacher": os.fspath(teacher), "data": os.fspath(data), "steps": steps, "lr": lr,
              "sequences_fit": n - n_held, "sequences_held_out": n_held, "layers": []}
    # Encoders: the sentence-embedding cosine to the teacher on the held-out sequences (mean
    # pooling over the attention mask); decoders would report perplexity, which needs logits
    # (not built yet).
    mask = feeds["held"].get("attention_mask")
    encoder = not any(nd["op"] == "causal_mask" for nd in student.nodes)

    def cosine():
        if not encoder:
            return None
        with torch.no_grad():
            vals = student.run_graph(feeds["held"], until="last_hidden_state")
            mine = _mean_pooled(student.output("last_hidden_state", vals), mask)
        return _cosine(mine, _mean_pooled(acts["held"]["last_hidden_state"], mask))

    report["cosine_before"] = cosine()

    def layer_error(l):
        start = "embeddings" if l == 0 else f"layer.{l - 1}"
        with torch.no_grad():
            vals = student.run_graph(feeds["held"], start=(start, acts["held"][start]),
                                     until=f"layer.{l}")
            return _relative(student.output(f"layer.{l}", vals), acts["held"][f"layer.{l}"])
    for l in layers:
        start = "embeddings" if l == 0 else f"layer.{l - 1}"
        target = f"layer.{l}"
        params = student.layer_parameters(l, roles=TRAINED_ROLES)
        if not params:
            raise attnopt.AttnoptError(f"layer {l} has no projections to train")

        def layer_out(part):
            vals = student.run_graph(feeds[part], start=(start, acts[part][start]), until=target)
            return student.output(target, vals)

        before = layer_error(l)
        for p in params.values():
            p.requires_grad_(True)
        opt = torch.optim.Adam(params.values(), lr=lr)
        done = 0
        for step in range(steps):
            if deadline is not None and time.monotonic() > deadline:
                break
            loss = torch.mean((layer_out("fit") - acts["fit"][target]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if progress and (step % 50 == 0 or step == steps - 1):
                print(f"[distill] layer {l}: step {step + 1}/{steps}, loss {loss.item():.3e}",
                      file=sys.stderr, flush=True)
        for p in params.values():
            p.requires_grad_(False)
        after = layer_error(l)
        report["layers"].append({"layer": l, "parameters": sorted(params), "steps": done,
                                 "error_before": before, "error_stage1": after,
                                 "error_after": after, "error_stage2": None})
        if progress:
            print(f"[distill] layer {l}: held-out error {before:.3e} -> {after:.3e}",
                  file=sys.stderr, flush=True)
    if finetune_steps > 0:
        names = sorted({name for l in layers
                        for name in student.layer_parameters(l, roles=TRAINED_ROLES)})
        if lora_rank:
            trained = student.add_lora(names, lora_rank)
        else:
            by_name = dict(student.named_parameters())
            trained = [by_name[n] for n in names if n in by_name]
        for p in trained:
            p.requires_grad_(True)

        def final(part):
            vals = student.run_graph(feeds[part], until="last_hidden_state")
            return student.output("last_hidden_state", vals)

        with torch.no_grad():
            before = _relative(final("held"), acts["held"]["last_hidden_state"])
        opt = torch.optim.Adam(trained, lr=lr)
        done = 0
        for step in range(finetune_steps):
            if deadline is not None and time.monotonic() > deadline:
                break
            loss = torch.mean((final("fit") - acts["fit"]["last_hidden_state"]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
        for p in trained:
            p.requires_grad_(False)
        if lora_rank:
            student.merge_lora()
        with torch.no_grad():
            after = _relative(final("held"), acts["held"]["last_hidden_state"])
        report["finetune"] = {"steps": done, "lora_rank": lora_rank, "weights": names,
                              "error_before": before, "error_after": after}
        for entry in report["layers"]:
            entry["error_stage2"] = layer_error(entry["layer"])
            entry["error_after"] = entry["error_stage2"]
        if progress:
            print(f"[distill] end to end: held-out final error {before:.3e} -> {after:.3e}",
                  file=sys.stderr, flush=True)
    report["cosine_after"] = cosine()
    report["perplexity_before"] = report["perplexity_after"] = None
    student.save_pretrained(os.fspath(out))
    # The converted folder's report, with the distillation's.
    full = {}
    if os.path.exists(report_file):
        with open(report_file) as f:
            full = json.load(f)
    full["distill"] = report
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(full, f, indent=2)
    modeling = os.path.join(os.path.dirname(os.path.abspath(__file__)), "modeling_attnopt.py")
    shutil.copyfile(modeling, os.path.join(out, "modeling_attnopt.py"))
    manifest_file = os.path.join(out, "attnopt.json")
    with open(manifest_file) as f:
        manifest = json.load(f)
    manifest["files"] = sorted(set(manifest["files"]) | {"report.json", "modeling_attnopt.py"})
    with open(manifest_file, "w") as f:
        json.dump(manifest, f, indent=2)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(prog="attnopt distill", description=__doc__.split("\n\n")[0])
    ap.add_argument("converted")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--layers", default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetune", type=int, default=0, metavar="STEPS")
    ap.add_argument("--lora", type=int, default=None, metavar="RANK")
    a = ap.parse_args(argv)
    try:
        report = distill(a.converted, a.teacher, a.data, a.output,
                         layers=None if a.layers is None else a.layers.split(","),
                         steps=a.steps, lr=a.lr, minutes=a.minutes, seed=a.seed,
                         finetune_steps=a.finetune, lora_rank=a.lora)
    except attnopt.AttnoptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
