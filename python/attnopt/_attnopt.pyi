"""Type stubs of attnopt's native module (crates/python/src/lib.rs); use the wrappers in
``attnopt`` instead of calling it directly."""

from typing import Dict, List, Optional

import numpy as np

__version__: str

class AttnoptError(Exception):
    """An error from attnopt, with the message its CLI would print."""

class Model:
    @property
    def input_names(self) -> List[str]: ...
    def run(
        self, inputs: Dict[str, np.ndarray], all_layers: bool = False
    ) -> Dict[str, np.ndarray]: ...
    def encode(self, texts: List[str]) -> Dict[str, np.ndarray]: ...
    def generate(
        self,
        prompt_ids: Optional[List[int]],
        prompt: Optional[str],
        max_new_tokens: int,
        temperature: Optional[float],
        top_k: Optional[int],
        top_p: Optional[float],
        seed: int,
        ignore_eos: bool,
    ) -> str: ...

def inspect(path: str, seq: Optional[int] = None) -> str: ...
def optimize(
    path: str,
    out: str,
    allow: List[str],
    budget: Optional[float],
    seq: List[int],
    calib: Optional[str],
    calib_seq: int,
    seed: int,
    force: bool,
    standalone: bool,
    refit: bool,
    report: Optional[str],
    layers: Optional[List[int]],
    sparse_qkv_modules: Optional[int],
    sparse_ff_block: int,
    sparse_ff_rank: Optional[int],
) -> str: ...
def load(
    path: str,
    backend: str,
    precision: str,
    threads: Optional[int],
    accept_guesses: bool,
    logits: bool = False,
) -> Model: ...
