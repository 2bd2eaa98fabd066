//! `attnopt._attnopt`: the native half of attnopt's Python package (the Python half, with the
//! docstrings users read and the type stubs, is `python/attnopt/`). A thin layer over the
//! `attnopt` facade — the same calls the CLI makes, so errors carry the CLI's messages (as
//! `attnopt.AttnoptError`) and reports are the CLI's JSON. Long work (optimising, running)
//! releases the GIL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attnopt::ir::Tensor;
use attnopt::optimize::OptimizeOptions;
use attnopt::{Backend, CpuOptions, LoadOptions, Precision, RunOptions};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(
    _attnopt,
    AttnoptError,
    PyException,
    "An error from attnopt, with the message its CLI would print."
);

fn err(e: impl std::fmt::Display) -> PyErr {
    AttnoptError::new_err(e.to_string())
}

fn load_model(path: &Path, accept_guesses: bool) -> PyResult<attnopt::Model> {
    load_model_with(path, accept_guesses, false)
}

fn load_model_with(path: &Path, accept_guesses: bool, logits: bool) -> PyResult<attnopt::Model> {
    attnopt::Model::load_with(
        path,
        &LoadOptions {
            accept_guesses,
            logits,
            ..LoadOptions::default()
        },
    )
    .map_err(err)
}

/// The `inspect --json` object of the model at `path`, as JSON text.
#[pyfunction]
#[pyo3(signature = (path, seq=None))]
fn inspect(py: Python<'_>, path: PathBuf, seq: Option<usize>) -> PyResult<String> {
    py.detach(|| {
        // Like the CLI, inspect shows guesses rather than refusing them.
        let m = load_model(&path, true)?;
        if seq == Some(0) {
            return Err(PyValueError::new_err("seq must be at least 1"));
        }
        let seq = seq.unwrap_or_else(|| attnopt::limits::default_seq(&m));
        serde_json::to_string(&attnopt::inspect::inspect(&m, seq)).map_err(err)
    })
}

/// Optimises the model at `path` into the folder `out`; returns report.json's text.
#[pyfunction]
#[pyo3(signature = (path, out, allow, budget, seq, calib, calib_seq, seed, force, standalone, refit, report, layers, sparse_qkv_modules, sparse_ff_block, sparse_ff_rank))]
#[allow(clippy::too_many_arguments)]
fn optimize(
    py: Python<'_>,
    path: PathBuf,
    out: PathBuf,
    allow: Vec<String>,
    budget: Option<f64>,
    seq: Vec<usize>,
    calib: Option<PathBuf>,
    calib_seq: usize,
    seed: u64,
    force: bool,
    standalone: bool,
    refit: bool,
    report: Option<PathBuf>,
    layers: Option<Vec<u32>>,
    sparse_qkv_modules: Option<usize>,
    sparse_ff_block: usize,
    sparse_ff_rank: Option<usize>,
) -> PyResult<String> {
    let sparse = attnopt::convert::SparseSettings {
        qkv_modules: sparse_qkv_modules,
        ff_block: sparse_ff_block,
        ff_rank: sparse_ff_rank,
    };
    sparse.check().map_err(PyValueError::new_err)?;
    py.detach(|| {
        let m = load_model(&path, false)?;
        attnopt::save::preflight(&m, &out, force).map_err(err)?;
        let opts = OptimizeOptions {
            seqs: seq,
            allow,
            budget,
            calib,
            calib_seq,
            seed,
            refit,
            layers,
            sparse,
            ..OptimizeOptions::default()
        };
        if let Some(r) = &report {
            attnopt::save::check_report_target(&m, &out, r, &opts).map_err(err)?;
        }
        let opt = attnopt::optimize::optimize(&m, &opts, &mut |_| {}).map_err(err)?;
        let save = attnopt::save::SaveOptions {
            force,
            standalone,
            ..Default::default()
        };
        attnopt::save::save(&m, &opt, &out, &save).map_err(err)?;
        if let Some(r) = &report {
            attnopt::save::check_report_target(&m, &out, r, &opts).map_err(err)?;
            let page = attnopt::html_report::page(m.graph(), &opt.graph, &opt.report);
            attnopt::output::write_file(r, page.as_bytes(), &m.inputs()).map_err(err)?;
        }
        serde_json::to_string(&opt.report).map_err(err)
    })
}

/// A loaded model and where it runs.
#[pyclass(module = "attnopt._attnopt", frozen)]
struct Model {
    model: attnopt::Model,
    run: RunOptions,
    path: PathBuf,
    accept_guesses: bool,
}

/// One input array as a tensor: integer arrays as i64 (token ids, masks), float arrays as f32.
fn tensor(name: &str, a: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let bad = |e: attnopt::ir::LenMismatch| err(format!("input {name}: {e}"));
    if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, i64>>() {
        let shape = x.shape().to_vec();
        return Tensor::i64(shape, x.as_array().iter().copied().collect()).map_err(bad);
    }
    if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'_, f32>>() {
        let shape = x.shape().to_vec();
        return Tensor::f32(shape, x.as_array().iter().copied().collect()).map_err(bad);
    }
    Err(PyValueError::new_err(format!(
        "input {name}: give a numpy array of int64 (token ids, masks) or float32 (pixels)"
    )))
}

#[pymethods]
impl Model {
    /// The names of the inputs the model takes.
    #[getter]
    fn input_names(&self) -> Vec<String> {
        self.model
            .input_names()
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// Runs the model on `{name: numpy array}`; returns `{name: numpy array}`.
    #[pyo3(signature = (inputs, all_layers=false))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        all_layers: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut feed = BTreeMap::new();
        for (k, v) in inputs.iter() {
            let name: String = k.extract()?;
            let t = tensor(&name, &v)?;
            feed.insert(name, t);
        }
        let opts = RunOptions {
            all_layers,
            ..self.run.clone()
        };
        let out = py.detach(|| self.model.run(feed, opts).map_err(err))?;
        let dict = PyDict::new(py);
        for (name, t) in out {
            let shape = t.shape().to_vec();
            let array = match t.as_i64() {
                Some(v) => PyArray1::from_vec(py, v.to_vec())
                    .reshape(shape)?
                    .into_any(),
                None => PyArray1::from_vec(py, t.to_f32_vec())
                    .reshape(shape)?
                    .into_any(),
            };
            dict.set_item(name, array)?;
        }
        Ok(dict)
    }

    /// `texts` tokenised with the model folder's tokenizer.json, as `{name: int64 array}`
    /// (padded to the longest, like a transformers batch).
    fn encode<'py>(&self, py: Python<'py>, texts: Vec<String>) -> PyResult<Bound<'py, PyDict>> {
        let feed = attnopt::text::encode(&self.model, &texts).map_err(err)?;
        let dict = PyDict::new(py);
        for (name, t) in feed {
            let shape = t.shape().to_vec();
            let v = t.as_i64().map(<[i64]>::to_vec).unwrap_or_default();
            dict.set_item(name, PyArray1::from_vec(py, v).reshape(shape)?)?;
        }
        Ok(dict)
    }

    /// Generates after a prompt (ids, or text through tokenizer.json); returns the
    /// `generate --json` object as JSON text.
    #[pyo3(signature = (prompt_ids, prompt, max_new_tokens, temperature, top_k, top_p, seed, ignore_eos))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt_ids: Option<Vec<i64>>,
        prompt: Option<String>,
        max_new_tokens: usize,
        temperature: Option<f32>,
        top_k: Option<usize>,
        top_p: Option<f32>,
        seed: u64,
        ignore_eos: bool,
    ) -> PyResult<String> {
        use attnopt::sample::Sampling;
        let sampling = if temperature.is_some() || top_k.is_some() || top_p.is_some() {
            Sampling::Random {
                temperature: temperature.unwrap_or(1.0),
                top_k,
                top_p,
                seed,
            }
        } else {
            Sampling::Greedy
        };
        sampling
            .check()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.detach(|| {
            // The language-model head is added on request: load it when this model lacks it.
            let with_head;
            let m = if self.model.graph().output("logits").is_some() {
                &self.model
            } else {
                with_head = load_model_with(&self.path, self.accept_guesses, true)?;
                &with_head
            };
            let codec = attnopt::text::Codec::of(m);
            let ids = match (prompt_ids, &prompt) {
                (Some(ids), None) => ids,
                (None, Some(text)) => codec
                    .as_ref()
                    .map_err(|e| err(e.to_string()))?
                    .encode(text)
                    .map_err(err)?,
                _ => {
                    return Err(PyValueError::new_err(
                        "give exactly one of prompt and prompt_ids",
                    ))
                }
            };
            let mut session = attnopt::decode::Session::new(m, &self.run.backend).map_err(err)?;
            let opts = attnopt::decode::GenerateOptions {
                max_new_tokens,
                sampling,
                eos: attnopt::import::generation::eos_token_ids(&m.imported().dir).map_err(err)?,
                ignore_eos,
            };
            let done =
                attnopt::decode::generate(&mut session, &ids, &opts, |_| Ok(())).map_err(err)?;
            let mut v = serde_json::to_value(&done).map_err(err)?;
            if let (Some(_), Ok(c)) = (&prompt, &codec) {
                v["text"] = c.decode(&done.generated_ids).map_err(err)?.into();
            }
            Ok(v.to_string())
        })
    }

    fn __repr__(&self) -> String {
        let backend = match &self.run.backend {
            Backend::Interp => "interp".to_string(),
            Backend::Cpu(o) => format!("cpu, {:?}", o.precision).to_lowercase(),
            Backend::CudaSim => "cuda-sim".to_string(),
            Backend::Cuda(_) => "cuda".to_string(),
        };
        format!(
            "attnopt.Model({:?}, {backend})",
            self.path.display().to_string()
        )
    }
}

/// Loads the model at `path` to run on `backend` (`"cpu"` or `"interp"`).
#[pyfunction]
#[pyo3(signature = (path, backend, precision, threads, accept_guesses, logits=false))]
fn load(
    py: Python<'_>,
    path: PathBuf,
    backend: &str,
    precision: &str,
    threads: Option<usize>,
    accept_guesses: bool,
    logits: bool,
) -> PyResult<Model> {
    let precision = match precision {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        other => {
            return Err(PyValueError::new_err(format!(
                "precision must be \"f32\" or \"bf16\", not {other:?}"
            )))
        }
    };
    let backend =
        match backend {
            "cpu" => Backend::Cpu(CpuOptions {
                threads: threads.unwrap_or(0),
                precision,
                ..CpuOptions::default()
            }),
            "interp" if precision == Precision::F32 => Backend::Interp,
            "interp" => return Err(PyValueError::new_err(
                "the interpreter computes in f32 only; precision=\"bf16\" needs backend=\"cpu\"",
            )),
            "cuda-sim" if precision == Precision::F32 => Backend::CudaSim,
            "cuda-sim" => return Err(PyValueError::new_err(
                "the GPU simulator computes in f32 only; precision=\"bf16\" needs backend=\"cpu\"",
            )),
            "cuda" => return Err(err(
                "not supported yet: backend cuda (running on a GPU); backend=\"cuda-sim\" runs the GPU kernels on the CPU simulator",
            )),
            other => {
                return Err(PyValueError::new_err(format!(
                    "backend must be \"cpu\", \"interp\" or \"cuda-sim\", not {other:?}"
                )))
            }
        };
    let model = py.detach(|| load_model_with(&path, accept_guesses, logits))?;
    Ok(Model {
        model,
        run: RunOptions {
            all_layers: false,
            backend,
        },
        path,
        accept_guesses,
    })
}

#[pymodule]
fn _attnopt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("AttnoptError", m.py().get_type::<AttnoptError>())?;
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(optimize, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
