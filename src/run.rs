//! The `run` command's work as a library call: read an input file, feed the model what it
//! takes, run it, optionally verify against the reference interpreter and compare with a file
//! of expected outputs, and write the outputs — all checked before the run where they can be
//! (an output path that may not be written fails before minutes of work).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use attnopt_ir::Tensor;

use crate::report::ErrorStat;
use crate::{tensors, Backend, Error, Model, RunOptions};

/// Where the inputs come from.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A safetensors file (tensors the model does not take are ignored and listed).
    File(&'a Path),
    /// Sentences, tokenised with the model's tokenizer.json (`crate::text`).
    Text(&'a [String]),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest<'a> {
    pub input: Input<'a>,
    /// Add `sentence_embedding`: `last_hidden_state` pooled per sequence.
    pub pool: Option<crate::text::Pool>,
    /// Where to write the outputs.
    pub output: Option<&'a Path>,
    /// Expected outputs to compare with (same names).
    pub compare: Option<&'a Path>,
    /// Also run the f32 reference interpreter and measure each output's error against it.
    pub verify: bool,
    pub opts: RunOptions,
}

/// What came of it.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub outputs: BTreeMap<String, Tensor>,
    /// Input tensors the model does not take.
    pub ignored: Vec<String>,
    pub ms: f64,
    /// With `verify` (and a backend other than the interpreter): per output.
    pub verified: BTreeMap<String, ErrorStat>,
    /// With `compare`: max-abs error per output found in the file.
    pub compared: Vec<(String, f32)>,
}

/// Each output's error against the same-named output of `reference`.
pub fn errors_against(
    outputs: &BTreeMap<String, Tensor>,
    reference: &HashMap<String, Tensor>,
) -> BTreeMap<String, ErrorStat> {
    outputs
        .iter()
        .filter_map(|(name, t)| Some((name.clone(), ErrorStat::between(t, reference.get(name)?))))
        .collect()
}

/// Runs `model` as `req` says; `progress` hears what is happening.
pub fn run(
    model: &Model,
    req: &RunRequest,
    progress: &mut dyn FnMut(&str),
) -> Result<RunOutcome, Error> {
    let mut inputs = model.inputs();
    if let Input::File(f) = req.input {
        inputs.add(f);
    }
    if let Some(c) = req.compare {
        inputs.add(c);
    }
    if let Some(path) = req.output {
        crate::output::check_file_target(path, &inputs)?;
    }
    let (feed, ignored): (BTreeMap<_, _>, BTreeMap<_, _>) = match req.input {
        Input::File(file) => {
            let all = tensors::read(file)?;
            let takes = model.input_names();
            let (feed, ignored): (BTreeMap<_, _>, BTreeMap<_, _>) = all
                .into_iter()
                .partition(|(k, _)| takes.contains(&k.as_str()) || k == "attention_mask");
            if feed.is_empty() {
                return Err(Error::Usage {
                    path: file.to_path_buf(),
                    msg: format!("holds none of the model's inputs ({})", takes.join(", ")),
                });
            }
            (feed, ignored)
        }
        Input::Text(texts) => (crate::text::encode(model, texts)?, BTreeMap::new()),
    };
    progress(&format!(
        "running {} ({} nodes) on {}",
        model.imported().detection.arch.name(),
        model.graph().node_count(),
        match req.opts.backend {
            Backend::Interp => "the reference interpreter",
            Backend::Cpu(_) => "the CPU backend",
            Backend::CudaSim => "the GPU backend's kernels on its CPU simulator",
            Backend::Cuda(_) => "the GPU",
        }
    ));
    let start = Instant::now();
    let mut outputs = model.run(feed.clone(), req.opts.clone())?;
    if let Some(how) = req.pool {
        let hidden = outputs.get("last_hidden_state").ok_or_else(|| {
            Error::NotSupported("pooling a model without last_hidden_state".into())
        })?;
        let pooled = crate::text::pool(hidden, feed.get("attention_mask"), how)?;
        outputs.insert("sentence_embedding".into(), pooled);
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut verified = BTreeMap::new();
    if req.verify && req.opts.backend != Backend::Interp {
        progress("--verify: running the f32 reference interpreter on the same inputs");
        let exact = model.run(
            feed,
            RunOptions {
                all_layers: req.opts.all_layers,
                backend: Backend::Interp,
            },
        )?;
        verified = errors_against(&outputs, &exact.into_iter().collect());
    }
    let mut compared = Vec::new();
    if let Some(path) = req.compare {
        let reference = tensors::read(path)?;
        for (name, t) in &outputs {
            let Some(r) = reference.get(name) else {
                continue;
            };
            let err = t.max_abs_diff(r).ok_or_else(|| Error::Usage {
                path: path.to_path_buf(),
                msg: format!(
                    "`{name}` has shape {:?}, but the output has {:?}",
                    r.shape(),
                    t.shape()
                ),
            })?;
            compared.push((name.clone(), err));
        }
        if compared.is_empty() {
            return Err(Error::Usage {
                path: path.to_path_buf(),
                msg: "has no tensor named like an output".into(),
            });
        }
    }
    if let Some(path) = req.output {
        tensors::write(path, &outputs, &inputs)?;
    }
    Ok(RunOutcome {
        outputs,
        ignored: ignored.into_keys().collect(),
        ms,
        verified,
        compared,
    })
}
