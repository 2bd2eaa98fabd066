"""attnopt's Python package against the fixtures' goldens (made by PyTorch/transformers,
fixtures/gen) and against the CLI: the same numbers, the same reports, the same errors.

Run by ``cargo test`` (tests/python.rs) with the package installed in ``ATTNOPT_PYTHON``'s
environment; ``ATTNOPT_BIN`` names the CLI binary for the comparisons with it.
"""

import json
import math
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import attnopt

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
GOLDEN_MODELS = ["bert", "gpt2", "vit", "llama", "gpt2-linear", "vit-hydra",
                 "gpt2-sparse-qkv", "gpt2-sparse-ff"]
# Max-abs error relative to the golden's largest magnitude (tests/goldens.rs uses the same).
TOLERANCE = 1e-5


def read_safetensors(path):
    """A safetensors file as {name: numpy array}, read here independently of attnopt."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    dtypes = {"F32": np.float32, "I64": np.int64, "F64": np.float64, "I32": np.int32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def golden(model):
    g = read_safetensors(FIXTURES / model / "golden.safetensors")
    names = set(attnopt.load(FIXTURES / model, backend="interp").input_names)
    return {k: v for k, v in g.items() if k in names}, g


def rel_max_abs(got, want):
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-6))


def cli(*args):
    binary = os.environ.get("ATTNOPT_BIN")
    if not binary:
        pytest.skip("ATTNOPT_BIN is not set (run through cargo test)")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("model", GOLDEN_MODELS)
@pytest.mark.parametrize("backend", ["interp", "cpu", "cuda-sim"])
def test_run_matches_the_pytorch_goldens(model, backend):
    inputs, want = golden(model)
    m = attnopt.load(FIXTURES / model, backend=backend, threads=2)
    out = m.run(inputs, all_layers=True)
    for name in ["last_hidden_state", "embeddings", "layer.0", "layer.1"]:
        assert out[name].dtype == np.float32 and out[name].shape == want[name].shape
        err = rel_max_abs(out[name], want[name])
        assert err <= TOLERANCE, f"{model} {backend} {name}: {err:.2e}"


def test_inputs_of_any_integer_dtype_and_without_batch_axis():
    inputs, want = golden("bert")
    m = attnopt.load(FIXTURES / "bert", backend="interp")
    one = {k: v[0].astype(np.int32) for k, v in inputs.items()}
    out = m.run(one)
    assert out["last_hidden_state"].shape == (1,) + want["last_hidden_state"].shape[1:]
    err = rel_max_abs(out["last_hidden_state"][0], want["last_hidden_state"][0])
    assert err <= TOLERANCE
    # A non-contiguous view is accepted too.
    ids = np.asfortranarray(inputs["input_ids"])
    out = m.run({"input_ids": ids, "attention_mask": inputs["attention_mask"],
                 "token_type_ids": inputs["token_type_ids"]})
    assert rel_max_abs(out["last_hidden_state"], want["last_hidden_state"]) <= TOLERANCE


def test_bf16_is_an_approximation_not_an_error():
    inputs, want = golden("bert")
    out = attnopt.load(FIXTURES / "bert", precision="bf16", threads=2).run(inputs)
    err = rel_max_abs(out["last_hidden_state"], want["last_hidden_state"])
    assert 0 < err < 0.05, err


def test_inspect_is_the_cli_json():
    got = attnopt.inspect(FIXTURES / "gpt2")
    assert got["architecture"] == "gpt2"
    r = cli("inspect", FIXTURES / "gpt2", "--json")
    assert r.returncode == 0, r.stderr
    assert got == json.loads(r.stdout)


def test_optimize_writes_a_folder_that_runs_and_reports_like_the_cli(tmp_path):
    out = tmp_path / "bert-hydra"
    page = tmp_path / "report.html"
    report = attnopt.optimize(FIXTURES / "bert", out, allow=["hydra"], budget=math.inf,
                              calib_seq=32, report=page)
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert [l["converted"] for l in report["layers"]] == [["hydra-padded"]] * 2
    assert report["budget"] is None and report["final_error"]["relative"] > 0
    assert json.loads((out / "report.json").read_text()) == report
    # The folder runs, and is what the CLI's run gives.
    inputs, _ = golden("bert")
    m = attnopt.load(out, threads=2)
    got = m.run(inputs)["last_hidden_state"]
    ref = attnopt.load(out, backend="interp").run(inputs)["last_hidden_state"]
    assert rel_max_abs(got, ref) <= TOLERANCE
    # The same call through the CLI makes the same report (timings aside).
    out2 = tmp_path / "cli"
    r = cli("optimize", FIXTURES / "bert", "-o", out2, "--allow", "hydra", "--budget", "inf",
            "--calib-seq", "32", "--json")
    assert r.returncode == 0, r.stderr
    cli_report = json.loads((out2 / "report.json").read_text())
    for rep in (report, cli_report):
        rep.pop("optimise_ms")
        rep.pop("model")
    assert cli_report == report


def test_errors_carry_the_cli_messages(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(attnopt.AttnoptError) as e:
        attnopt.load(missing)
    r = cli("inspect", missing)
    assert r.returncode != 0
    assert r.stderr.strip() == f"error: {e.value}"
    # An existing output folder is refused before any work.
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(attnopt.AttnoptError, match="already exists; pass --force"):
        attnopt.optimize(FIXTURES / "gpt2", taken)
    # A report inside the output folder or the source's is refused before any work.
    with pytest.raises(attnopt.AttnoptError, match="inside the source model"):
        attnopt.optimize(FIXTURES / "gpt2", tmp_path / "o2", report=FIXTURES / "gpt2" / "r.html")
    assert not (tmp_path / "o2").exists()
    with pytest.raises(attnopt.AttnoptError, match="unknown approximate family `sparse-attention`"):
        attnopt.optimize(FIXTURES / "gpt2", tmp_path / "o", allow="sparse-attention")
    # Inputs the model lacks.
    m = attnopt.load(FIXTURES / "bert", backend="interp")
    with pytest.raises(attnopt.AttnoptError, match="input_ids"):
        m.run({"token_type_ids": np.zeros((1, 3), dtype=np.int64)})


def test_bad_arguments_are_value_errors(tmp_path):
    with pytest.raises(ValueError):
        attnopt.load(FIXTURES / "bert", backend="tpu")
    with pytest.raises(ValueError):
        attnopt.load(FIXTURES / "bert", precision="fp8")
    with pytest.raises(ValueError):
        attnopt.load(FIXTURES / "bert", backend="interp", precision="bf16")
    with pytest.raises(ValueError):
        attnopt.optimize(FIXTURES / "bert", tmp_path / "x", seq=[0])
    with pytest.raises(ValueError):
        attnopt.optimize(FIXTURES / "bert", tmp_path / "x", allow="hydra", budget=-1.0)
    m = attnopt.load(FIXTURES / "bert", backend="interp")
    with pytest.raises(ValueError):
        m.run({"input_ids": np.array(["a", "b"])})
    with pytest.raises(attnopt.AttnoptError, match="language-model head"):
        m.generate(prompt_ids=[1, 2])
    with pytest.raises(ValueError, match="exactly one"):
        m.generate()
    # A misspelled input is an error, not silently dropped; float ids are refused.
    with pytest.raises(ValueError, match="attention_masks"):
        m.run({"input_ids": np.zeros((1, 3), dtype=np.int64),
               "attention_masks": np.ones((1, 3), dtype=np.int64)})
    with pytest.raises(ValueError, match="integers expected"):
        m.run({"input_ids": np.zeros((1, 3), dtype=np.float16)})
    with pytest.raises(ValueError):
        attnopt.optimize(FIXTURES / "bert", tmp_path / "x", seq="128")
    with pytest.raises(ValueError, match="block must hold at least 2"):
        attnopt.optimize(FIXTURES / "bert", tmp_path / "x", allow="sparse-ff", sparse_ff_block=1)
    # bytes paths work like str ones.
    assert attnopt.load(os.fsencode(str(FIXTURES / "bert")), backend="interp").input_names
    assert "bert" in repr(m) and "interp" in repr(m)


# The round trip through PyTorch: needs torch and transformers (skipped without them).
ROUND_TRIPS = [("bert", ["hydra"]), ("gpt2", ["sparse-qkv", "sparse-ff"]),
               ("llama", ["sparse-qkv"]), ("vit", ["hydra"])]


@pytest.mark.parametrize("model,allow", ROUND_TRIPS)
def test_round_trip_through_transformers(tmp_path, model, allow):
    torch = pytest.importorskip("torch", reason="torch and transformers are not installed")
    transformers = pytest.importorskip("transformers",
                                       reason="torch and transformers are not installed")
    out = tmp_path / "converted"
    # Named layers convert even where the cost model sees no gain (LLaMA's bf16 weights).
    report = attnopt.optimize(FIXTURES / model, out, allow=allow, budget=math.inf, calib_seq=32,
                              layers=[0, 1])
    assert all(l["converted"] for l in report["layers"]), report
    inputs, _ = golden(model)
    want = attnopt.load(out, backend="interp").run(inputs)["last_hidden_state"]
    pt = transformers.AutoModel.from_pretrained(out, trust_remote_code=True)
    feed = {k: torch.from_numpy(np.array(v)) for k, v in inputs.items()}
    with torch.no_grad():
        got = pt(**feed).last_hidden_state.numpy()
    # The measure: max-abs difference ÷ max-abs value.
    assert rel_max_abs(got, want) <= 1e-4, rel_max_abs(got, want)
    # One optimiser step changes the model...
    opt = torch.optim.SGD(pt.parameters(), lr=0.05)
    loss = pt(**feed).last_hidden_state.square().mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        tuned = pt(**feed).last_hidden_state.numpy()
    assert rel_max_abs(tuned, got) > 1e-5
    # ...and attnopt runs the saved fine-tuned folder exactly, on both backends; a sharded save
    # (which attnopt could not read) is refused before anything is written.
    with pytest.raises(ValueError, match="max_shard_size"):
        pt.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert not (tmp_path / "sharded").exists()
    saved = tmp_path / "tuned"
    saved.mkdir()
    (saved / "notes.txt").write_text("the user's")
    pt.save_pretrained(saved)
    manifest = json.loads((saved / "attnopt.json").read_text())
    assert "notes.txt" not in manifest["files"] and "model.safetensors" in manifest["files"]
    for backend in ["interp", "cpu"]:
        back = attnopt.load(saved, backend=backend, threads=2).run(inputs)["last_hidden_state"]
        assert rel_max_abs(back, tuned) <= 1e-4, (backend, rel_max_abs(back, tuned))


@pytest.mark.parametrize("model,allow", [("bert", ["hydra"]), ("gpt2", ["sparse-qkv", "sparse-ff"])])
def test_distillation_lowers_each_converted_layers_error(tmp_path, model, allow):
    pytest.importorskip("torch", reason="torch and transformers are not installed")
    pytest.importorskip("transformers", reason="torch and transformers are not installed")
    from safetensors.numpy import save_file
    converted = tmp_path / "converted"
    attnopt.optimize(FIXTURES / model, converted, allow=allow, budget=math.inf, calib_seq=32)
    rng = np.random.default_rng(0)
    data = tmp_path / "data.safetensors"
    save_file({"input_ids": rng.integers(0, 100, size=(8, 16), dtype=np.int64)}, str(data))
    out = tmp_path / "distilled"
    report = attnopt.distill(converted, FIXTURES / model, data, out, steps=60, lr=3e-3,
                             progress=False)
    assert [l["layer"] for l in report["layers"]] == [0, 1]
    for l in report["layers"]:
        assert l["error_after"] < l["error_before"], l
    # attnopt runs the result, and on new inputs of the same kind it is closer to the teacher
    # than the converted model was.
    inputs = {"input_ids": np.random.default_rng(1).integers(0, 100, size=(4, 16), dtype=np.int64)}
    teacher = attnopt.load(FIXTURES / model, backend="interp").run(inputs, all_layers=True)
    before = attnopt.load(converted, backend="interp").run(inputs, all_layers=True)
    after = attnopt.load(out, backend="cpu", threads=2).run(inputs, all_layers=True)
    err = lambda o: float(np.linalg.norm(o["layer.0"] - teacher["layer.0"]) /
                          np.linalg.norm(teacher["layer.0"]))
    assert err(after) < err(before), (err(before), err(after))
    written = json.loads((out / "report.json").read_text())
    assert written["distill"]["layers"] == report["layers"] and written["layers"]
    if model == "bert":
        assert report["cosine_after"] > report["cosine_before"], report
    else:
        assert report["cosine_before"] is None and report["perplexity_after"] is None
    # And transformers loads it.
    import transformers
    pt = transformers.AutoModel.from_pretrained(out, trust_remote_code=True)
    import torch
    with torch.no_grad():
        got = pt(input_ids=torch.from_numpy(inputs["input_ids"])).last_hidden_state.numpy()
    assert rel_max_abs(got, after["last_hidden_state"]) <= 1e-4


@pytest.mark.parametrize("lora", [None, 2])
def test_end_to_end_distillation_full_or_lora(tmp_path, lora):
    pytest.importorskip("torch", reason="torch and transformers are not installed")
    pytest.importorskip("transformers", reason="torch and transformers are not installed")
    from safetensors.numpy import save_file
    converted = tmp_path / "converted"
    attnopt.optimize(FIXTURES / "bert", converted, allow=["hydra"], budget=math.inf,
                     calib_seq=32)
    data = tmp_path / "data.safetensors"
    save_file({"input_ids": np.random.default_rng(0).integers(0, 100, size=(32, 16),
                                                              dtype=np.int64)}, str(data))
    out = tmp_path / "distilled"
    report = attnopt.distill(converted, FIXTURES / "bert", data, out, steps=20, lr=1e-3,
                             finetune_steps=40, lora_rank=lora, progress=False)
    ft = report["finetune"]
    assert ft["steps"] == 40 and ft["lora_rank"] == lora and ft["weights"]
    for l in report["layers"]:
        assert l["error_stage2"] is not None and l["error_after"] == l["error_stage2"]
    assert ft["error_after"] < ft["error_before"], ft
    # The adapters were merged: the saved folder has no adapter weights and attnopt runs it.
    names = json.loads((out / "config.json").read_text())["attnopt_graph"]
    assert "lora" not in names
    ids = {"input_ids": np.random.default_rng(2).integers(0, 100, size=(2, 16), dtype=np.int64)}
    assert attnopt.load(out, backend="cpu", threads=2).run(ids)["last_hidden_state"].shape == (2, 16, 32)



def test_text_in_and_sentence_embeddings():
    m = attnopt.load(FIXTURES / "bert", backend="interp")
    g = json.loads((FIXTURES / "bert" / "text_golden.json").read_text())
    enc = m.encode(g["sentences"])
    for name in ["input_ids", "attention_mask", "token_type_ids"]:
        assert enc[name].tolist() == g[name], name
    e = m.embed(g["sentences"])
    h = m.run(enc)["last_hidden_state"]
    mask = np.array(g["attention_mask"], dtype=np.float64)
    want = (h * mask[..., None]).sum(axis=1) / mask.sum(axis=1)[:, None]
    assert e.shape == (3, 32) and np.allclose(e, want, atol=1e-5)
    assert np.allclose(m.embed(g["sentences"], pool="cls"), h[:, 0, :])
    with pytest.raises(attnopt.AttnoptError, match="has no tokenizer.json"):
        attnopt.load(FIXTURES / "gpt2").encode(["hi"])


def test_distillation_on_a_text_file(tmp_path):
    pytest.importorskip("torch", reason="torch and transformers are not installed")
    pytest.importorskip("transformers", reason="torch and transformers are not installed")
    converted = tmp_path / "converted"
    attnopt.optimize(FIXTURES / "bert", converted, allow=["hydra"], budget=math.inf,
                     calib_seq=32)
    text = tmp_path / "docs.txt"
    words = "the quick brown fox jumps over a lazy dog while attention is linear".split()
    rng = np.random.default_rng(3)
    text.write_text("\n".join(" ".join(rng.choice(words, 10)) for _ in range(12)) + "\n")
    report = attnopt.distill(converted, FIXTURES / "bert", text, tmp_path / "out", steps=30,
                             lr=3e-3, progress=False)
    assert report["sequences_fit"] == 9 and report["sequences_held_out"] == 3
    assert all(l["error_after"] < l["error_before"] for l in report["layers"])
    assert report["cosine_after"] > report["cosine_before"]



def test_decoder_logits():
    inputs, _ = golden("gpt2")
    out = attnopt.load(FIXTURES / "gpt2", backend="interp", logits=True).run(inputs)
    assert out["logits"].shape == (2, 7, 128)
    with pytest.raises(attnopt.AttnoptError, match="no language-model head"):
        attnopt.load(FIXTURES / "bert", logits=True)


def _golden(name):
    return json.loads((FIXTURES / name / "generate_golden.json").read_text())


def test_generate_greedy_equals_transformers_and_sampling_repeats():
    # Goldens: transformers' generate(do_sample=False), 32 new tokens, EOS ignored
    # (fixtures/gen/generate_decode.py).
    for name in ["gpt2", "llama"]:
        case = _golden(name)["cases"][0]
        for backend in ["cpu", "interp"]:
            m = attnopt.load(FIXTURES / name, backend=backend)  # no logits: loaded on demand
            out = m.generate(prompt_ids=case["prompt_ids"], max_new_tokens=32, ignore_eos=True)
            assert out["generated_ids"] == case["generated_ids"], (name, backend)
            assert len(out["per_token_ms"]) == 31 and out["state_bytes"] > 0
    text = _golden("llama")["text_case"]
    m = attnopt.load(FIXTURES / "llama", logits=True)
    out = m.generate(text["prompt"], max_new_tokens=32, ignore_eos=True)
    assert out["prompt_ids"] == text["prompt_ids"] and out["text"] == text["text"]
    a = m.generate(prompt_ids=[1, 5], temperature=1.3, top_p=0.9, seed=4, ignore_eos=True)
    assert a["generated_ids"] == m.generate(prompt_ids=[1, 5], temperature=1.3, top_p=0.9,
                                            seed=4, ignore_eos=True)["generated_ids"]
    with pytest.raises(ValueError, match="above 0"):
        m.generate(prompt_ids=[1], temperature=0.0)
    with pytest.raises(attnopt.AttnoptError, match="vocabulary"):
        m.generate(prompt_ids=[100000])
