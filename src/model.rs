//! [`Model`]: a loaded checkpoint and what can be done with it, for build pipelines and the CLI.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use attnopt_cpu::CpuOptions;
use attnopt_import::{Imported, LoadOptions};
use attnopt_ir::{interp, DType, Dim, Graph, Op, Sym, Tensor};

use crate::output::Inputs;
use crate::Error;

/// A model loaded from a checkpoint folder.
pub struct Model {
    imported: Imported,
    /// CPU backends compiled by [`Model::run`], by their options (threads resolved), so that
    /// calling it again compiles nothing (each keeps its kernels and prepared weights per input
    /// size).
    cpu: Mutex<HashMap<CpuOptions, attnopt_cpu::CpuModel>>,
}

/// Which outputs [`Model::run`] returns, and where it runs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Also return `embeddings` and every `layer.{i}`, not only `last_hidden_state`.
    pub all_layers: bool,
    /// Where to run.
    pub backend: Backend,
}

/// Where a model runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// The reference interpreter: slow, exact by definition.
    #[default]
    Interp,
    /// The CPU backend (JIT kernels, oneDNN or gemm) as the options say: threads (0: all
    /// cores), the precision of products against weights (bf16 is an approximation: measure
    /// it), the matrix-product library.
    Cpu(CpuOptions),
    /// The GPU backend's kernels run by its CPU simulator (`attnopt_gpu::simrun`): every
    /// generated kernel executed thread by thread with bounds, races and barriers checked.
    /// For testing generated code without a GPU; slower than the interpreter.
    CudaSim,
    /// An NVIDIA GPU through the driver and NVRTC loaded at run time (`attnopt_gpu::runtime`;
    /// not yet run on a GPU: see docs/GPU.md).
    Cuda(attnopt_gpu::runtime::CudaOptions),
}

impl Model {
    /// Loads the checkpoint at `path` (a folder with config.json and safetensors files), with
    /// the default checks: a model whose dimensions had to be guessed is refused, and an
    /// optimised folder's source is checked by fingerprint (see [`LoadOptions`]).
    pub fn load(path: &Path) -> Result<Model, Error> {
        Model::load_with(path, &LoadOptions::default())
    }

    /// [`Model::load`] with options.
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Model, Error> {
        Ok(Model {
            imported: attnopt_import::load_with(path, opts)?,
            cpu: Mutex::default(),
        })
    }

    /// The files this model was read from; outputs must never replace them.
    pub fn inputs(&self) -> Inputs {
        let mut inputs = Inputs::new();
        for f in &self.imported.files_read {
            inputs.add(f);
        }
        inputs
    }

    pub fn graph(&self) -> &Graph {
        &self.imported.graph
    }

    pub fn imported(&self) -> &Imported {
        &self.imported
    }

    /// The tokens per sequence when the model fixes them (a ViT: patches plus CLS, set by the
    /// image size), else `None` (the length comes from the input).
    pub fn fixed_tokens(&self) -> Option<usize> {
        let g = self.graph();
        let has_seq = g.inputs().iter().any(|(_, id)| match &g.node(*id).op {
            Op::Input { shape, .. } => shape.0.contains(&Dim::Sym(Sym::Seq)),
            _ => false,
        });
        if has_seq {
            return None;
        }
        g.output("last_hidden_state")
            .and_then(|o| g.node(o).ty.shape.0.get(1).and_then(|d| d.fixed()))
    }

    /// Whether this is an optimised folder (written by `optimize`) rather than a checkpoint.
    pub fn is_optimised_folder(&self) -> bool {
        self.imported
            .dir
            .join(attnopt_import::optimized::MANIFEST)
            .is_file()
    }

    /// Names of the inputs the model takes (Hugging Face forward-argument names).
    pub fn input_names(&self) -> Vec<&str> {
        self.graph()
            .inputs()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The interpreter's feed for `inputs`, named like the Hugging Face forward arguments. Token ids may be any signed
    /// integer dtype or u8 (already widened to i64 by [`crate::tensors::read`]); a missing batch axis is
    /// added; a missing `attention_mask` means "attend everywhere" and missing
    /// `token_type_ids` mean segment 0, as in transformers.
    pub fn prepare_inputs(
        &self,
        inputs: BTreeMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, Error> {
        let g = self.graph();
        let mut inputs = inputs;
        // A missing input the model cannot do without is the first thing to say (a ViT given a
        // text model's inputs must hear "pixel_values is missing", not about their mask).
        let required: Vec<&str> = self
            .input_names()
            .into_iter()
            .filter(|n| !matches!(*n, "attention_mask" | "token_type_ids"))
            .collect();
        if let Some(missing) = required.iter().find(|n| !inputs.contains_key(**n)) {
            return Err(Error::MissingInput {
                name: missing.to_string(),
                takes: self.input_names().join(", "),
                given: inputs.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        if !self.input_names().contains(&"attention_mask") {
            // Models without padding support (linear attention) take no mask; an all-ones mask
            // changes nothing, anything else would be silently wrong.
            if let Some(m) = inputs.remove("attention_mask") {
                if m.as_i64().is_some_and(|v| v.contains(&0)) {
                    return Err(Error::NotSupported(
                        "padding (an attention_mask with zeros) for this model's attention kind"
                            .into(),
                    ));
                }
            }
        }
        let mut feed: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in inputs {
            let declared = g
                .inputs()
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, id)| &g.node(id).op);
            let t = match declared {
                Some(Op::Input { shape, .. }) if t.rank() + 1 == shape.rank() => add_batch_axis(t),
                _ => t,
            };
            feed.insert(name, t);
        }
        let ids_shape = feed.get("input_ids").map(|t| t.shape().to_vec());
        for (name, id) in g.inputs() {
            if feed.contains_key(name) {
                continue;
            }
            let Op::Input {
                dtype: DType::I64, ..
            } = g.node(*id).op
            else {
                continue;
            };
            let fill = match name.as_str() {
                "attention_mask" => 1,
                "token_type_ids" => 0,
                _ => continue,
            };
            if let Some(shape) = &ids_shape {
                let n = shape.iter().product();
                let t = Tensor::i64(shape.clone(), vec![fill; n])
                    .expect("length is the product of the shape");
                feed.insert(name.clone(), t);
            }
        }
        Ok(feed)
    }

    /// Runs the reference interpreter on `inputs` (see [`Model::prepare_inputs`]).
    pub fn run(
        &self,
        inputs: BTreeMap<String, Tensor>,
        opts: RunOptions,
    ) -> Result<BTreeMap<String, Tensor>, Error> {
        let feed = self.prepare_inputs(inputs)?;
        let budget = crate::limits::memory_available();
        let b = crate::limits::check_feed(self, &feed, "the input", budget)?;
        let g = self.graph();
        let wanted: Vec<&str> = if opts.all_layers {
            vec![]
        } else if g.output("logits").is_some() {
            vec!["last_hidden_state", "logits"]
        } else {
            vec!["last_hidden_state"]
        };
        let out = match opts.backend {
            Backend::Interp => {
                crate::limits::check_interpreter_memory(g, &b, "the input", budget)?;
                interp::run(g, &feed, &wanted)?
            }
            Backend::Cuda(cuda) => {
                let mut gpu = attnopt_gpu::runtime::CudaModel::new(g, &cuda)?;
                only_wanted(gpu.run(&feed)?, &wanted)
            }
            Backend::CudaSim => {
                crate::limits::check_interpreter_memory(g, &b, "the input", budget)?;
                let sim = attnopt_gpu::simrun::SimModel::new(g)?;
                only_wanted(sim.run(&feed)?, &wanted)
            }
            Backend::Cpu(options) => {
                let options = CpuOptions {
                    threads: crate::limits::threads(options.threads).0,
                    ..options
                };
                // A panic in another call poisons the lock; the cache is still sound (a
                // CpuModel is only ever replaced whole), so carry on with it.
                let mut cache = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
                let cpu = match cache.entry(options) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(v) => {
                        let cpu = attnopt_cpu::CpuModel::with_options(g.clone(), v.key())?;
                        v.insert(cpu)
                    }
                };
                // The backend checks a new size's activation memory where it plans it.
                cpu.set_memory_budget(budget);
                cpu.run(&feed, &wanted, false)?.0
            }
        };
        Ok(out.into_iter().collect())
    }
}

/// The `wanted` outputs of a backend that computes every output (all when none is named).
fn only_wanted(mut all: HashMap<String, Tensor>, wanted: &[&str]) -> HashMap<String, Tensor> {
    if wanted.is_empty() {
        return all;
    }
    wanted.iter().filter_map(|&w| all.remove_entry(w)).collect()
}

fn add_batch_axis(t: Tensor) -> Tensor {
    let mut shape = vec![1];
    shape.extend_from_slice(t.shape());
    Tensor::new(shape, t.into_data()).expect("adding a size-1 axis keeps the element count")
}
