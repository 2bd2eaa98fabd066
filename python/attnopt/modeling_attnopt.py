"""A model attnopt converted, as a transformers model (written into the folder by attnopt).

``AutoModel.from_pretrained(folder, trust_remote_code=True)`` gives an :class:`AttnoptModel`:
PyTorch running the folder's graph — attnopt's own optimised graph (``graph.txt``, also kept in
config.json as ``attnopt_graph``), operator by operator, with the meaning attnopt's reference
interpreter gives each operator — over parameters named exactly like the graph's weights. So
whatever attnopt did to the model (Hydra attention, sparse QKV/FF layers, refitted
projections, fused or folded weights) is what PyTorch computes, and every weight is a
trainable ``nn.Parameter``. ``save_pretrained`` writes the usual files plus ``graph.txt`` and
``attnopt.json``, so attnopt loads the fine-tuned folder and runs it exactly.

Outputs: ``last_hidden_state`` (a ``BaseModelOutput``), and with ``output_hidden_states`` the
embeddings and every layer's output. Choices made by the graph and not trainable by gradient:
``block_onehot`` (a sparse feed-forward's choice of unit; no gradient flows into the
controller through it) and the fixed masks.
"""

import json
import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

_LINE = re.compile(r"^%(\d+) = ([a-z_0-9]+)(\{.*?\})?(?: \"((?:[^\"\\]|\\.)*)\" [a-z0-9]+)?"
                   r"((?: ?%\d+,?)*) : \[(.*?)\] ([a-z0-9]+) @(\S+) (\S+)$")


def _split_top(text):
    """Splits ``a=1, b=[1, 2]`` at the commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _value(text):
    text = text.strip()
    if text.startswith("["):
        return [_value(t) for t in _split_top(text[1:-1])]
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_graph(text):
    """attnopt's graph text: ``(nodes, outputs)``; a node is a dict with ``id``, ``op``,
    ``attrs``, ``args`` (operand ids), ``shape`` and, for weights, ``name`` and ``dtype``."""
    nodes, outputs = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("output "):
            name, ref = line[len("output "):].rsplit(" = ", 1)
            outputs[name] = int(ref.lstrip("%"))
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"graph line {number}: cannot read {line!r}")
        ident, op, attrs, wname, args, shape, dtype, layer, role = m.groups()
        parsed = {}
        if attrs:
            for part in _split_top(attrs[1:-1]):
                if "=" in part and not re.match(r"^-?[0-9.e+-]+$", part):
                    k, v = part.split("=", 1)
                    parsed[k] = _value(v)
                else:
                    parsed["value"] = _value(part)
        nodes.append({
            "id": int(ident),
            "op": op,
            "attrs": parsed,
            "args": [int(a) for a in re.findall(r"%(\d+)", args or "")],
            "shape": [_value(d) for d in _split_top(shape)] if shape else [],
            "dtype": dtype,
            "name": json.loads(f'"{wname}"') if wname is not None else None,
            "layer": int(layer[1:]) if layer.startswith("L") else None,
            "role": role,
        })
    return nodes, outputs


_TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                 "f64": torch.float64, "i64": torch.int64, "i32": torch.int32}


class AttnoptConfig(PretrainedConfig):
    """The source model's config plus ``attnopt_graph`` (the graph text) and
    ``attnopt_manifest`` (attnopt.json's object)."""

    model_type = "attnopt"

    def __init__(self, attnopt_graph="", attnopt_manifest=None, **kwargs):
        self.attnopt_graph = attnopt_graph
        self.attnopt_manifest = attnopt_manifest or {}
        super().__init__(**kwargs)


class AttnoptModel(PreTrainedModel):
    """attnopt's optimised graph run by PyTorch (see the module docs)."""

    config_class = AttnoptConfig
    base_model_prefix = "attnopt_model"
    _supports_param_buffer_assignment = False

    def __init__(self, config):
        super().__init__(config)
        self.nodes, self.graph_outputs = parse_graph(config.attnopt_graph)
        self._params = {}
        for n in self.nodes:
            if n["op"] != "weight":
                continue
            dtype = _TORCH_DTYPES.get(n["dtype"], torch.float32)
            shape = [int(d) for d in n["shape"]]
            p = nn.Parameter(torch.zeros(shape, dtype=dtype),
                             requires_grad=dtype.is_floating_point)
            owner = self
            *path, leaf = n["name"].split(".")
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, nn.Module())
                owner = owner._modules[part]
            owner.register_parameter(leaf, p)
            self._params[n["id"]] = (owner, leaf)
        self.post_init()

    def _graph_with_param_dtypes(self):
        by_id = {n["id"]: n for n in self.nodes}
        lines = []
        for line in self.config.attnopt_graph.splitlines():
            m = re.match(r"^%(\d+) = weight ", line)
            if m and int(m.group(1)) in self._params:
                dtype = self._weight(int(m.group(1))).dtype
                name = _DTYPE_NAMES.get(dtype, by_id[int(m.group(1))]["dtype"])
                line = _retype(line, name)
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _init_weights(self, module):
        """The weights come from the checkpoint; nothing to initialise."""

    def _weight(self, ident):
        owner, leaf = self._params[ident]
        return getattr(owner, leaf)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        # Arguments that would change the numbers are refused, not ignored.
        for name, value in kwargs.items():
            if value is not None and value is not False and name not in ("use_cache",):
                raise TypeError(f"AttnoptModel.forward does not take {name} (the graph fixes "
                                "positions, masks and heads)")
        takes = {n["attrs"]["name"] for n in self.nodes if n["op"] == "input"}
        # A vision model's pixels given as the first positional argument.
        if input_ids is not None and "input_ids" not in takes and pixel_values is None \
                and "pixel_values" in takes:
            input_ids, pixel_values = None, input_ids
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids, "pixel_values": pixel_values}
        values = self.run_graph({k: v for k, v in given.items() if v is not None})
        out = {name: values[i] for name, i in self.graph_outputs.items()}
        hidden = None
        if output_hidden_states:
            layers = sorted((k for k in out if k.startswith("layer.")),
                            key=lambda k: int(k.split(".")[1]))
            hidden = tuple(out[k] for k in ["embeddings", *layers] if k in out)
        return BaseModelOutput(last_hidden_state=out["last_hidden_state"], hidden_states=hidden)

    def run_graph(self, given, start=None, until=None):
        """Runs the graph on the inputs ``given`` (``{name: tensor}``); returns every node's
        value by id. ``start``: ``(output name, tensor)`` to use as that output's value
        (e.g. ``("layer.2", h)``: run from a layer's input); ``until``: an output name, to
        compute only what it needs. What layer-wise distillation runs."""
        values, dims = {}, {}
        for n in self.nodes:
            if n["op"] != "input":
                continue
            name = n["attrs"]["name"]
            x = given.get(name)
            if x is None:
                ids = given.get("input_ids")
                if name == "attention_mask" and ids is not None:
                    x = torch.ones_like(ids)
                elif name == "token_type_ids" and ids is not None:
                    x = torch.zeros_like(ids)
                else:
                    raise ValueError(f"the model takes {name}")
            want = n["attrs"]["shape"]
            if x.dim() + 1 == len(want):
                x = x.unsqueeze(0)
            for d, size in zip(want, x.shape):
                if isinstance(d, str):
                    dims[d] = size
            values[n["id"]] = x.long() if n["attrs"]["dtype"] == "i64" else x.float()
        fixed = None
        if start is not None:
            fixed = self.graph_outputs[start[0]]
            values[fixed] = start[1]
        needed = None
        if until is not None:
            by_id = {n["id"]: n for n in self.nodes}
            needed, stack = set(), [self.graph_outputs[until]]
            while stack:
                i = stack.pop()
                if i in needed:
                    continue
                needed.add(i)
                if i != fixed:
                    stack.extend(by_id[i]["args"])
        for n in self.nodes:
            if n["op"] == "input" or n["id"] == fixed:
                continue
            if needed is not None and n["id"] not in needed:
                continue
            args = [values[a] for a in n["args"]]
            values[n["id"]] = self._eval(n, args, dims)
        return values

    def output(self, name, values):
        """The value of graph output ``name`` in ``values`` (from :meth:`run_graph`)."""
        return values[self.graph_outputs[name]]

    def add_lora(self, names, rank):
        """Low-rank adapters on the 2-D weights ``names``: each reads as ``W + A·B`` (``A`` zero
        at first, so nothing changes until trained). Returns the adapter parameters; only they
        train. :meth:`merge_lora` folds them into the weights (before ``save_pretrained``)."""
        if not hasattr(self, "_lora"):
            self._lora = {}
            self.lora_adapters = nn.ParameterList()
        by_name = {n["name"]: n for n in self.nodes if n["op"] == "weight"}
        made = []
        for name in names:
            n = by_name[name]
            w = self._weight(n["id"])
            if w.dim() != 2 or not w.is_floating_point():
                continue
            r = min(rank, *w.shape)
            a = nn.Parameter(torch.zeros(w.shape[0], r))
            b = nn.Parameter(torch.randn(r, w.shape[1]) / math.sqrt(w.shape[1]))
            self.lora_adapters.extend([a, b])
            self._lora[n["id"]] = (a, b)
            made += [a, b]
        return made

    def merge_lora(self):
        """Folds every adapter into its weight and removes the adapters."""
        for ident, (a, b) in getattr(self, "_lora", {}).items():
            w = self._weight(ident)
            with torch.no_grad():
                w.copy_((w.float() + a @ b).to(w.dtype))
        if hasattr(self, "_lora"):
            del self._lora
            del self.lora_adapters

    def layer_parameters(self, layer, roles=None):
        """``{weight name: parameter}`` of the weights only layer ``layer``'s nodes read (with
        ``roles``, only those read by nodes of those roles, e.g. ``q_proj``)."""
        users = {}
        for n in self.nodes:
            for a in n["args"]:
                users.setdefault(a, []).append(n)
        out = {}
        for n in self.nodes:
            if n["op"] != "weight":
                continue
            us = users.get(n["id"], [])
            # Through weight-only views (a permute of the weight), to the nodes that compute.
            frontier, readers = list(us), []
            while frontier:
                u = frontier.pop()
                if u["layer"] is None and u["role"] == "weight":
                    frontier.extend(users.get(u["id"], []))
                else:
                    readers.append(u)
            if not readers or any(u["layer"] != layer for u in readers):
                continue
            if roles is not None and not any(u["role"] in roles for u in readers):
                continue
            out[n["name"]] = self._weight(n["id"])
        return out

    def _eval(self, n, a, dims):
        op, at = n["op"], n["attrs"]

        def size(d):
            return dims[d] if isinstance(d, str) else int(d)

        if op == "weight":
            w = self._weight(n["id"])
            w = w.float() if w.is_floating_point() else w
            lora = self._lora.get(n["id"]) if hasattr(self, "_lora") else None
            if lora is not None:
                a, b = lora
                w = w + a @ b
            return w
        unary = {"neg": torch.neg, "exp": torch.exp, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
                 "recip": torch.reciprocal, "square": torch.square, "tanh": torch.tanh,
                 "sigmoid": torch.sigmoid, "relu": torch.relu, "elu": F.elu, "gelu": F.gelu,
                 "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}
        if op in unary:
            return unary[op](a[0])
        binary = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
                  "max": torch.maximum, "min": torch.minimum}
        if op in binary:
            return binary[op](a[0], a[1])
        if op == "scale":
            return a[0] * at["value"]
        if op == "add_scalar":
            return a[0] + at["value"]
        if op == "matmul":
            return torch.matmul(a[0], a[1])
        if op == "permute":
            return a[0].permute(*at["perm"])
        if op == "reshape":
            return a[0].reshape([size(d) for d in at["shape"]])
        if op == "expand":
            return torch.broadcast_to(a[0], [size(d) for d in at["shape"]])
        if op == "split_heads":
            b, t, d = a[0].shape
            h = at["heads"]
            return a[0].reshape(b, t, h, d // h).permute(0, 2, 1, 3)
        if op == "merge_heads":
            b, h, t, d = a[0].shape
            return a[0].permute(0, 2, 1, 3).reshape(b, t, h * d)
        if op == "repeat_heads":
            return a[0].repeat_interleave(at["times"], dim=1)
        if op == "softmax":
            x, axis = a[0], at["axis"]
            m = x.amax(dim=axis, keepdim=True)
            m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
            e = torch.exp(x - m)
            s = e.sum(dim=axis, keepdim=True)
            return torch.where(s > 0, e / torch.where(s > 0, s, torch.ones_like(s)),
                               torch.zeros_like(e))
        if op in ("causal_mask", "tril"):
            x = a[0]
            nq, nk = x.shape[-2], x.shape[-1]
            masked = torch.ones(nq, nk, dtype=torch.bool, device=x.device).triu(nk - nq + 1)
            fill = float("-inf") if op == "causal_mask" else 0.0
            return x.masked_fill(masked, fill)
        if op == "padding_mask":
            x, m = a
            return x.masked_fill((m == 0)[:, None, None, :], float("-inf"))
        if op == "cast":
            return a[0].long() if at["dtype"] == "i64" else a[0].float()
        if op in ("reduce_sum", "reduce_max", "reduce_mean"):
            f = {"reduce_sum": torch.sum, "reduce_mean": torch.mean,
                 "reduce_max": lambda x, dim, keepdim: x.amax(dim=dim, keepdim=keepdim)}[op]
            return f(a[0], dim=at["axis"], keepdim=at["keep_dim"])
        if op == "cumsum":
            return torch.cumsum(a[0], dim=at["axis"])
        if op == "unsqueeze":
            return a[0].unsqueeze(at["axis"])
        if op == "squeeze":
            return a[0].squeeze(at["axis"])
        if op == "l2_normalize":
            x = a[0]
            norm = x.square().sum(dim=at["axis"], keepdim=True).sqrt()
            return x / norm.clamp_min(at["eps"])
        if op == "layer_norm":
            x, g, b = a
            return F.layer_norm(x, (x.shape[-1],), g, b, at["eps"])
        if op == "rms_norm":
            x, g = a
            return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + at["eps"]) * g
        if op == "gather":
            return F.embedding(a[1], a[0])
        if op == "rope":
            return _rope(a[0], at["theta"], at["style"])
        if op == "concat":
            return torch.cat(a, dim=at["axis"])
        if op == "slice":
            start, end = at["start"], size(at["end"])
            return a[0].narrow(at["axis"], start, end - start)
        if op == "conv_windows":
            return _conv_windows(a[0], at["length"], at["width"])
        if op == "block_onehot":
            x = a[0]
            blk = at["block"]
            v = torch.nan_to_num(x, nan=float("-inf")).reshape(*x.shape[:-1], -1, blk)
            hot = F.one_hot(v.argmax(dim=-1), blk).to(x.dtype)
            return hot.reshape(x.shape)
        raise NotImplementedError(f"operator {op} (node %{n['id']})")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, plus ``graph.txt`` and ``attnopt.json`` so
        that attnopt loads the folder. The graph's weight lines take the dtypes the parameters
        have now (transformers may have loaded bf16 weights as f32). attnopt reads one
        ``model.safetensors``: sharding or another format is refused before anything is
        written."""
        if kwargs.get("safe_serialization", True) is False:
            raise ValueError("attnopt reads safetensors: save with safe_serialization=True")
        if "max_shard_size" in kwargs:
            raise ValueError("attnopt reads one model.safetensors: do not pass max_shard_size")
        # Larger than any model: one file.
        kwargs["max_shard_size"] = "1000000GB"
        self.config.attnopt_graph = self._graph_with_param_dtypes()
        os.makedirs(save_directory, exist_ok=True)
        before = {f: os.stat(os.path.join(save_directory, f)).st_mtime_ns
                  for f in os.listdir(save_directory)}
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        with open(os.path.join(save_directory, "graph.txt"), "w") as f:
            f.write(self.config.attnopt_graph)
        # What this save wrote (new or rewritten files), and nothing else in the folder.
        written = {f for f in os.listdir(save_directory)
                   if os.stat(os.path.join(save_directory, f)).st_mtime_ns != before.get(f)}
        weights = "model.safetensors"
        if weights not in written:
            raise ValueError(f"save_pretrained did not write {weights}; attnopt cannot read "
                             f"{sorted(written)}")
        manifest = dict(self.config.attnopt_manifest)
        manifest.update({"weights": weights, "graph": "graph.txt", "source_files": [],
                         "files": sorted(written | {"attnopt.json", "graph.txt"})})
        with open(os.path.join(save_directory, "attnopt.json"), "w") as f:
            json.dump(manifest, f, indent=2)


_DTYPE_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}


def _retype(line, dtype):
    """A weight line of the graph text with its stored dtype replaced."""
    m = re.match(r'^(%\d+ = weight "(?:[^"\\]|\\.)*" )([a-z0-9]+)( .*)$', line)
    return f"{m.group(1)}{dtype}{m.group(3)}" if m else line


def _rope(x, theta, style):
    d = x.shape[-1]
    half = d // 2
    t = torch.arange(x.shape[2], dtype=torch.float64, device=x.device)
    inv = theta ** (-(2.0 * torch.arange(half, dtype=torch.float64, device=x.device)) / d)
    angle = t[:, None] * inv[None, :]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    if style == "Half":
        x1, x2 = x[..., :half], x[..., half:2 * half]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * half:]], dim=-1)
    x1, x2 = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    return torch.cat([out, x[..., 2 * half:]], dim=-1)


def _conv_windows(x, length, width):
    b, t, s, c = x.shape
    half = (width - 1) // 2
    xp = F.pad(x, (0, 0, half, half, length - 1, 0))
    parts = [xp[:, i:i + t, j:j + s, :] for i in range(length) for j in range(width)]
    return torch.cat(parts, dim=-1)


__all__ = ["AttnoptConfig", "AttnoptModel", "parse_graph"]
