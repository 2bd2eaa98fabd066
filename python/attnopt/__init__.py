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
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _attnopt
from ._attnopt import AttnoptError

__all__ = ["AttnoptError", "Model", "inspect", "load", "optimize", "__version__"]
__version__: str = _attnopt.__version__

PathLike = Union[str, "os.PathLike[str]"]


def inspect(path: PathLike, seq: Optional[int] = None) -> dict:
    """What attnopt sees in the model at ``path``: the ``attnopt inspect --json`` object.

    Architecture and how it was detected, dimensions (and any guessed), parameters, attention
    per layer, FLOPs and bytes at ``seq`` tokens (default: the model's natural length).
    """
    return json.loads(_attnopt.inspect(os.fspath(path), seq))


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
    a ``budget``) whatever the error.
    """
    allow = [allow] if isinstance(allow, str) else list(allow)
    seq = list(seq)
    if not seq or any(int(n) < 1 for n in seq) or calib_seq < 1:
        raise ValueError("seq and calib_seq take positive lengths")
    if budget is not None and (math.isnan(budget) or budget < 0):
        raise ValueError("budget must be a non-negative number (or math.inf)")
    text = _attnopt.optimize(
        os.fspath(path),
        os.fspath(out),
        allow,
        None if budget is None else float(budget),
        [int(n) for n in seq],
        None if calib is None else os.fspath(calib),
        int(calib_seq),
        int(seed),
        bool(force),
        bool(standalone),
        bool(refit),
        None if report is None else os.fspath(report),
        None if layers is None else [int(l) for l in layers],
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
        for name, value in inputs.items():
            a = np.asarray(value)
            if a.dtype.kind in "iub":
                a = np.ascontiguousarray(a, dtype=np.int64)
            elif a.dtype.kind == "f":
                a = np.ascontiguousarray(a, dtype=np.float32)
            else:
                raise ValueError(f"input {name}: numbers expected, got dtype {a.dtype}")
            feed[str(name)] = a
        return self._native.run(feed, all_layers)

    def generate(self, *args, **kwargs):
        """Not supported yet: text generation needs attnopt's decoding (not built yet)."""
        raise AttnoptError("not supported yet: generate (decoding is not built yet)")

    def __repr__(self) -> str:
        return repr(self._native)


def load(
    path: PathLike,
    backend: str = "cpu",
    precision: str = "f32",
    threads: Optional[int] = None,
    *,
    accept_guesses: bool = False,
) -> Model:
    """Loads the model at ``path``.

    ``backend``: ``"cpu"`` (JIT-compiled kernels with oneDNN or gemm products; the default) or
    ``"interp"`` (the reference interpreter: slow, exact by definition). ``precision``:
    ``"f32"``, or ``"bf16"`` (products against weights in bfloat16, CPU only: an
    approximation). ``threads``: CPU threads (default: all cores). ``accept_guesses``: use a
    model whose config.json lacks settings attnopt would otherwise refuse to guess.
    """
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    return Model(
        _attnopt.load(os.fspath(path), backend, precision, threads, bool(accept_guesses))
    )
