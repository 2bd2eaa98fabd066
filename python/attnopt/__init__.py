"""attnopt from Python: inspect, optimise and run transformer checkpoints.

The same engine as the ``attnopt`` command: a folder holding a safetensors checkpoint and its
config.json goes in; :func:`optimize` writes an optimised folder (exact e-graph rewriting, and
the approximate conversions you allow, each measured and kept within a budget); :func:`load`
gives a :class:`Model` that runs on numpy arrays with the reference interpreter or the JIT CPU
backend. Errors raise :class:`AttnoptError` with the message the CLI prints.

    >>> import attnopt, numpy as np
    >>> m = attnopt.load("fixtures/bert")
    >>> out = m.run({"input_ids": np.array([[1, 2, 3]])})
    >>> out["last_hidden_state"].shape
    (1, 3, 32)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _attnopt
from ._attnopt import AttnoptError

__all__ = ["AttnoptError", "Model", "distill", "inspect", "load", "optimize", "__version__"]
__version__: str = _attnopt.__version__

PathLike = Union[str, "os.PathLike[str]"]


def _path(p) -> str:
    """A path argument (str, bytes or os.PathLike) as the str the native module takes."""
    return os.fsdecode(os.fspath(p))


def inspect(path: PathLike, seq: Optional[int] = None) -> dict:
    """What attnopt sees in the model at ``path``: the ``attnopt inspect --json`` object.

    Architecture and how it was detected, dimensions (and any guessed), parameters, attention
    per layer, FLOPs and bytes at ``seq`` tokens (default: the model's natural length).
    """
    return json.loads(_attnopt.inspect(_path(path), seq))


def optimize(
    path: PathLike,
    out: PathLike,
    allow: Iterable[str] = (),
    budget: Optional[float] = None,
    seq: Sequence[int] = (128,),
    calib: Optional[PathLike] = None,
    *,
    calib_seq: int = 16,
    seed: int = 0,
    force: bool = False,
    standalone: bool = False,
    refit: bool = True,
    report: Optional[PathLike] = None,
    layers: Optional[Iterable[int]] = None,
    sparse_qkv_modules: Optional[int] = None,
    sparse_ff_block: int = 32,
    sparse_ff_rank: Optional[int] = None,
) -> dict:
    """Optimises the model at ``path`` into the new folder ``out``; returns report.json's object.

    Exact rewrites always run. ``allow`` enables approximate conversions (``"hydra"``,
    ``"sparse-qkv"``, ``"sparse-ff"``), kept while the final output's relative error on
    calibration inputs stays within ``budget`` (default 0.01; ``math.inf`` converts every
    eligible layer). ``seq``: the sequence lengths to report costs at, the first the one the
    graph is optimised for. ``calib``: a safetensors file of calibration inputs (default:
    ``calib_seq`` seeded random tokens). ``out`` must not exist unless ``force`` (and then only
    a folder attnopt wrote is replaced). ``standalone`` copies every weight into ``out``.
    ``report``: also write the report as one self-contained HTML page there. ``layers``:
    convert exactly these layers where an allowed family applies, paying or not, and (without
    a ``budget``) whatever the error. ``sparse_qkv_modules`` (default: the heads),
    ``sparse_ff_block`` and ``sparse_ff_rank`` (default: units / block) tune the sparse
    conversions (docs/SPARSE.md).
    """
    if isinstance(allow, str):
        allow = [a for a in allow.split(",") if a]
    allow = list(allow)
    if isinstance(seq, (str, bytes)):
        raise ValueError("seq takes lengths (e.g. (128, 4096)), not a string")
    seq = [seq] if isinstance(seq, int) else list(seq)
    if budget is not None and not allow:
        warnings.warn("budget does nothing without allow (only approximate conversions have "
                      "an error to budget)", stacklevel=2)
    if not seq or any(int(n) < 1 for n in seq) or calib_seq < 1:
        raise ValueError("seq and calib_seq take positive lengths")
    if budget is not None and (math.isnan(budget) or budget < 0):
        raise ValueError("budget must be a non-negative number (or math.inf)")
    text = _attnopt.optimize(
        _path(path),
        _path(out),
        allow,
        None if budget is None else float(budget),
        [int(n) for n in seq],
        None if calib is None else _path(calib),
        int(calib_seq),
        int(seed),
        bool(force),
        bool(standalone),
        bool(refit),
        None if report is None else _path(report),
        None if layers is None else [int(l) for l in layers],
        None if sparse_qkv_modules is None else int(sparse_qkv_modules),
        int(sparse_ff_block),
        None if sparse_ff_rank is None else int(sparse_ff_rank),
    )
    return json.loads(text)


class Model:
    """A loaded model (an original checkpoint or an optimised folder); see :func:`load`."""

    def __init__(self, native: "_attnopt.Model"):
        self._native = native

    @property
    def input_names(self) -> list:
        """The inputs the model takes (Hugging Face forward-argument names)."""
        return self._native.input_names

    def run(
        self, inputs: Mapping[str, "np.ndarray"], all_layers: bool = False
    ) -> Dict[str, "np.ndarray"]:
        """Runs the model: ``{name: array}`` in, ``{name: array}`` out.

        Token ids and masks are integer arrays (any integer dtype; ``[batch, tokens]``, or
        ``[tokens]`` for one sequence), ``pixel_values`` float arrays. A missing
        ``attention_mask`` attends everywhere and missing ``token_type_ids`` are 0, as in
        transformers. Returns ``last_hidden_state`` (float32), and with ``all_layers`` also
        ``embeddings`` and every ``layer.{i}``.
        """
        feed = {}
        takes = set(self.input_names)
        unknown = sorted(set(map(str, inputs)) - takes)
        if unknown:
            raise ValueError(f"the model takes {sorted(takes)}, not {unknown}")
        for name, value in inputs.items():
            a = np.asarray(value)
            if a.dtype.kind == "f" and name != "pixel_values":
                raise ValueError(f"input {name}: integers expected, got dtype {a.dtype}")
            if a.dtype.kind in "iub":
                a = np.ascontiguousarray(a, dtype=np.int64)
            elif a.dtype.kind == "f":
                a = np.ascontiguousarray(a, dtype=np.float32)
            else:
                raise ValueError(f"input {name}: numbers expected, got dtype {a.dtype}")
            feed[str(name)] = a
        return self._native.run(feed, all_layers)

    def encode(self, texts: Sequence[str]) -> Dict[str, "np.ndarray"]:
        """``texts`` tokenised with the model folder's tokenizer.json: ``input_ids``,
        ``attention_mask`` (and ``token_type_ids`` where the model takes them), padded to the
        longest as a transformers batch is."""
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        return self._native.encode(texts)

    def embed(self, texts: Sequence[str], pool: str = "mean") -> "np.ndarray":
        """Sentence embeddings ``[len(texts), d]``: ``last_hidden_state`` pooled by the mean
        over the attention mask (``"mean"``) or the first token (``"cls"``)."""
        if pool not in ("mean", "cls"):
            raise ValueError(f'pool must be "mean" or "cls", not {pool!r}')
        feed = self.encode(texts)
        h = self.run(feed)["last_hidden_state"]
        if pool == "cls":
            return h[:, 0, :]
        m = feed.get("attention_mask", np.ones(h.shape[:2], dtype=np.int64)).astype(np.float32)
        return (h * m[..., None]).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)[:, None]

    def generate(
        self,
        prompt: Optional[str] = None,
        *,
        prompt_ids: Optional[Sequence[int]] = None,
        max_new_tokens: int = 32,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: int = 0,
        ignore_eos: bool = False,
    ) -> dict:
        """Generates with a decoder after ``prompt`` (text, tokenised with the folder's
        tokenizer.json) or ``prompt_ids``; as ``attnopt generate --json``.

        Greedy unless ``temperature``, ``top_k`` or ``top_p`` is given (then seeded sampling:
        the same ``seed`` gives the same tokens). Stops at the config's ``eos_token_id``
        unless ``ignore_eos``. Returns ``{"prompt_ids", "generated_ids", "prefill_ms",
        "per_token_ms", "state_bytes"}`` (and ``"text"`` for a text prompt). The language-model
        head is loaded for it if the model was loaded without ``logits``.
        """
        if (prompt is None) == (prompt_ids is None):
            raise ValueError("give exactly one of prompt and prompt_ids")
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be at least 0")
        ids = None if prompt_ids is None else [int(i) for i in prompt_ids]
        text = self._native.generate(
            ids,
            None if prompt is None else str(prompt),
            int(max_new_tokens),
            None if temperature is None else float(temperature),
            None if top_k is None else int(top_k),
            None if top_p is None else float(top_p),
            int(seed),
            bool(ignore_eos),
        )
        return json.loads(text)

    def __repr__(self) -> str:
        return repr(self._native)


def distill(converted: PathLike, teacher: PathLike, data: PathLike, out: PathLike,
            **kwargs) -> dict:
    """Layer-wise distillation (attention transfer) of a converted folder against the original
    model, in PyTorch; writes the folder ``out`` that attnopt and transformers load. See
    :func:`attnopt.distillation.distill` for the options (``layers``, ``steps``, ``lr``,
    ``minutes``, ``seed``, ``held_out``). Needs torch and transformers."""
    from .distillation import distill as _distill

    return _distill(converted, teacher, data, out, **kwargs)


def load(
    path: PathLike,
    backend: str = "cpu",
    precision: str = "f32",
    threads: Optional[int] = None,
    *,
    accept_guesses: bool = False,
    logits: bool = False,
) -> Model:
    """Loads the model at ``path``.

    ``backend``: ``"cpu"`` (JIT-compiled kernels with oneDNN or gemm products; the default),
    ``"interp"`` (the reference interpreter: slow, exact by definition) or ``"cuda-sim"`` (the
    GPU backend's generated kernels on its CPU simulator; f32). ``precision``:
    ``"f32"``, or ``"bf16"`` (products against weights in bfloat16, CPU only: an
    approximation). ``threads``: CPU threads (default: all cores). ``accept_guesses``: use a
    model whose config.json lacks settings attnopt would otherwise refuse to guess.
    ``logits``: also output a decoder's ``logits`` (its language-model head: ``lm_head.weight``
    or the tied token embedding).
    """
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    return Model(
        _attnopt.load(_path(path), backend, precision, threads, bool(accept_guesses),
                      bool(logits))
    )
