//! Decoding: a [`Session`] runs a causal model's step graph (`ir::incremental`: derived from
//! the model's own graph, original or optimised) over a prompt (prefill) and then one token at
//! a time, carrying the per-layer state between runs — key/value caches for softmax layers
//! (`kv_heads` wide), constant-size running sums for causal linear and Hydra layers.
//! [`generate`] is the loop `attnopt generate` runs.

use std::collections::HashMap;
use std::time::Instant;

use attnopt_cpu::CpuModel;
use attnopt_ir::incremental::{self, Incremental, StateKind, PAST_LENGTH, POSITION_IDS};
use attnopt_ir::{interp, Dim, Op, Sym, Tensor};

use crate::sample::Sampler;
use crate::{Backend, Error, Model};

/// The output a session reads: the language-model head's.
const LOGITS: &str = "logits";

/// The most tokens one run of the step graph takes; longer prompts run in chunks.
pub const PREFILL_CHUNK: usize = 512;

/// A decoding session: the step graph on a backend, and the state after the tokens fed so far.
pub struct Session {
    step: Incremental,
    exec: Exec,
    /// One per `step.states`, holding `past` tokens.
    states: Vec<Tensor>,
    past: usize,
    /// The most tokens the model can hold (its position table or configured maximum).
    max_positions: Option<usize>,
    vocab: usize,
    /// Time every kernel of the CPU backend's runs (see [`Session::profile`]).
    profile: bool,
    last_profile: Vec<attnopt_cpu::KernelTime>,
}

enum Exec {
    Interp,
    Cpu(Box<CpuModel>),
    /// The GPU backend's kernels on its simulator.
    Sim(Box<attnopt_gpu::simrun::SimModel>),
    /// On a GPU.
    Cuda(Box<attnopt_gpu::runtime::CudaModel>),
}

impl Session {
    /// A session on `model`, which must have been loaded with its language-model head
    /// ([`attnopt_import::LoadOptions::logits`]).
    pub fn new(model: &Model, backend: &Backend) -> Result<Session, Error> {
        Session::from_graph(model.graph(), model.imported().dims.max_positions, backend)
    }

    /// A session on a graph with a `logits` output (e.g. a model's graph optimised in memory);
    /// `max_positions` is the most tokens it may hold.
    pub fn from_graph(
        g: &attnopt_ir::Graph,
        max_positions: Option<usize>,
        backend: &Backend,
    ) -> Result<Session, Error> {
        let Some(logits) = g.output(LOGITS) else {
            return Err(Error::NotSupported(
                "decoding without the language-model head: load the model with its logits".into(),
            ));
        };
        let vocab = g.node(logits).ty.shape.last().fixed().unwrap_or(0);
        let step = incremental::incremental(g)?;
        let exec = match backend {
            Backend::Interp => Exec::Interp,
            Backend::CudaSim => {
                Exec::Sim(Box::new(attnopt_gpu::simrun::SimModel::new(&step.graph)?))
            }
            Backend::Cuda(cuda) => Exec::Cuda(Box::new(attnopt_gpu::runtime::CudaModel::new(
                &step.graph,
                cuda,
            )?)),
            Backend::Cpu(opts) => {
                let opts = attnopt_cpu::CpuOptions {
                    threads: crate::limits::threads(opts.threads).0,
                    ..opts.clone()
                };
                Exec::Cpu(Box::new(CpuModel::with_options(step.graph.clone(), &opts)?))
            }
        };
        let mut s = Session {
            states: vec![],
            step,
            exec,
            past: 0,
            max_positions,
            vocab,
            profile: false,
            last_profile: vec![],
        };
        s.reset();
        Ok(s)
    }

    /// Forgets every token fed: empty caches, zero sums.
    pub fn reset(&mut self) {
        self.past = 0;
        self.states = (self.step.states.iter())
            .map(|s| Tensor::zeros(s.dims(1, 0)))
            .collect();
    }

    /// Tokens fed so far (the position of the next one).
    pub fn position(&self) -> usize {
        self.past
    }

    /// The most tokens the model holds, if it has a limit.
    pub fn max_positions(&self) -> Option<usize> {
        self.max_positions
    }

    pub fn step_graph(&self) -> &Incremental {
        &self.step
    }

    /// With `on`, the CPU backend times every kernel of each run; [`Session::profile`] gives
    /// the last run's.
    pub fn set_profile(&mut self, on: bool) {
        self.profile = on;
    }

    pub fn profile(&self) -> &[attnopt_cpu::KernelTime] {
        &self.last_profile
    }

    /// The CPU backend running the steps, if that is the backend.
    pub fn cpu(&self) -> Option<&CpuModel> {
        match &self.exec {
            Exec::Cpu(c) => Some(c),
            Exec::Interp | Exec::Sim(_) | Exec::Cuda(_) => None,
        }
    }

    /// Bytes of state held now (f32 caches and sums).
    pub fn state_bytes(&self) -> u64 {
        self.states.iter().map(|t| t.numel() as u64 * 4).sum()
    }

    /// Bytes of state per cached token (0 for a model whose state does not grow).
    pub fn state_bytes_per_token(&self) -> u64 {
        (self.step.states.iter())
            .filter(|s| matches!(s.kind, StateKind::Cache { .. }))
            .map(|s| s.dims(1, 1).iter().product::<usize>() as u64 * 4)
            .sum()
    }

    /// Feeds `ids` (a prompt, or one generated token) after the tokens fed so far; returns the
    /// logits of the last of them. A long prompt runs in chunks of [`PREFILL_CHUNK`] tokens
    /// (each a step of many tokens), so no run holds scores for all its tokens at once.
    pub fn feed(&mut self, ids: &[i64]) -> Result<Vec<f32>, Error> {
        // Everything that can be checked is checked before anything runs: a refused feed
        // changes nothing. (A run that fails anyway resets the session.)
        if ids.is_empty() {
            return Err(Error::NotSupported(
                "an empty prompt: decoding starts from at least one token".into(),
            ));
        }
        if let Some(&bad) = ids
            .iter()
            .find(|&&i| i < 0 || i as u64 >= self.vocab as u64)
        {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the model's vocabulary (0..{})",
                self.vocab
            )));
        }
        let total = self.past + ids.len();
        if let Some(max) = self.max_positions.filter(|&m| total > m) {
            return Err(Error::TooLarge(format!(
                "{total} tokens (the prompt and what is generated) exceed the model's {max} positions"
            )));
        }
        let mut logits = vec![];
        for chunk in ids.chunks(PREFILL_CHUNK) {
            logits = self.run(chunk)?;
        }
        Ok(logits)
    }

    /// One run of the step graph over `ids` (at most [`PREFILL_CHUNK`]). The state has moved
    /// into the run, so a run that fails resets the session.
    fn run(&mut self, ids: &[i64]) -> Result<Vec<f32>, Error> {
        let r = self.run_once(ids);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn run_once(&mut self, ids: &[i64]) -> Result<Vec<f32>, Error> {
        let (past, n) = (self.past, ids.len());
        let total = past + n;
        let feed = self.feed_for(ids)?;
        let mut wanted = vec![LOGITS];
        wanted.extend(self.step.states.iter().map(|s| s.output.as_str()));
        let mut out = match &mut self.exec {
            Exec::Interp => interp::run(&self.step.graph, &feed, &wanted)?,
            Exec::Sim(sim) => sim.run(&feed)?,
            Exec::Cuda(gpu) => gpu.run(&feed)?,
            Exec::Cpu(cpu) => {
                let (out, times) = cpu.run(&feed, &wanted, self.profile)?;
                self.last_profile = times;
                out
            }
        };
        for (slot, s) in self.states.iter_mut().zip(&self.step.states) {
            *slot = out
                .remove(&s.output)
                .ok_or_else(|| Error::NotSupported(format!("the step gave no `{}`", s.output)))?;
        }
        self.past = total;
        let logits = out
            .remove(LOGITS)
            .and_then(|t| t.as_f32().map(|v| v.to_vec()))
            .ok_or_else(|| Error::NotSupported("the step gave no float logits".into()))?;
        let v = self.vocab.max(1);
        if logits.len() != n * v {
            return Err(Error::NotSupported(format!(
                "logits of {} values for {n} tokens of a {v}-token vocabulary",
                logits.len()
            )));
        }
        Ok(logits[(n - 1) * v..].to_vec())
    }

    /// The step graph's inputs for `ids` after `self.past` tokens.
    /// The state moves into the feed (no copy of a cache per step); [`Session::run`] puts the
    /// new state back, or resets the session when the run fails.
    fn feed_for(&mut self, ids: &[i64]) -> Result<HashMap<String, Tensor>, Error> {
        let (past, n) = (self.past, ids.len());
        let g = &self.step.graph;
        let mut feed = HashMap::new();
        for (name, id) in g.inputs() {
            let Op::Input { shape, .. } = &g.node(*id).op else {
                continue;
            };
            let len = |d: &Dim| match d {
                Dim::Sym(Sym::Total) => past + n,
                _ => n,
            };
            let t = match name.as_str() {
                "input_ids" => Tensor::i64(vec![1, n], ids.to_vec()),
                POSITION_IDS => Tensor::i64(vec![n], (past as i64..(past + n) as i64).collect()),
                PAST_LENGTH => Tensor::i64(vec![past, 0], vec![]),
                "attention_mask" => {
                    let k = len(&shape.0[1]);
                    Tensor::i64(vec![1, k], vec![1; k])
                }
                "token_type_ids" => Tensor::i64(vec![1, n], vec![0; n]),
                other => match self.step.states.iter().position(|s| s.input == other) {
                    Some(i) => Ok(std::mem::replace(
                        &mut self.states[i],
                        Tensor::zeros(vec![0]),
                    )),
                    None => {
                        return Err(Error::NotSupported(format!(
                            "decoding a model that takes `{other}`"
                        )))
                    }
                },
            }
            .expect("lengths match the shapes");
            feed.insert(name.clone(), t);
        }
        Ok(feed)
    }
}

/// What [`generate`] does.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: crate::sample::Sampling,
    /// Ids that end generation (the config's `eos_token_id`); not checked with `ignore_eos`.
    pub eos: Vec<i64>,
    pub ignore_eos: bool,
}

/// What [`generate`] did (`generate --json` prints it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    pub prompt_ids: Vec<i64>,
    pub generated_ids: Vec<i64>,
    /// The prompt's run, which also gives the first new token.
    pub prefill_ms: f64,
    /// Each one-token step after it (one fewer than the tokens generated).
    pub per_token_ms: Vec<f64>,
    /// State held at the end.
    pub state_bytes: u64,
}

/// Feeds `prompt`, then picks and feeds tokens until `max_new_tokens` or an end-of-sequence
/// id; `on_token` sees each new token as it is picked.
pub fn generate(
    session: &mut Session,
    prompt: &[i64],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(i64) -> Result<(), Error>,
) -> Result<Generated, Error> {
    let mut sampler = Sampler::new(opts.sampling)?;
    if let Some(max) = session.max_positions() {
        // Refused before the prompt runs: the last new token is picked, never fed.
        let need = session.position() + prompt.len() + opts.max_new_tokens.saturating_sub(1);
        if need > max {
            return Err(Error::TooLarge(format!(
                "a prompt of {} tokens and {} new ones need {need} positions; the model has {max}",
                prompt.len(),
                opts.max_new_tokens
            )));
        }
    }
    let mut done = Generated {
        prompt_ids: prompt.to_vec(),
        generated_ids: vec![],
        prefill_ms: 0.0,
        per_token_ms: vec![],
        state_bytes: 0,
    };
    if opts.max_new_tokens > 0 {
        let t0 = Instant::now();
        let mut logits = session.feed(prompt)?;
        done.prefill_ms = ms(t0);
        loop {
            let id = sampler.pick(&logits) as i64;
            done.generated_ids.push(id);
            on_token(id)?;
            let end = !opts.ignore_eos && opts.eos.contains(&id);
            if end || done.generated_ids.len() >= opts.max_new_tokens {
                break;
            }
            let t = Instant::now();
            logits = session.feed(&[id])?;
            done.per_token_ms.push(ms(t));
        }
    }
    done.state_bytes = session.state_bytes();
    Ok(done)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
