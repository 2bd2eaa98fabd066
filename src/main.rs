//! The `attnopt` command line: thin glue from arguments to the library facade.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use attnopt::optimize::OptimizeOptions;
use attnopt::rewrite::Limits;
use attnopt::{inspect, output, Model, RunOptions};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// attnopt — a compiler for transformer checkpoints.
///
/// Point it at a Hugging Face-style model folder (config.json + *.safetensors). Supported
/// architectures: BERT, GPT-2, ViT, LLaMA-style decoders.
#[derive(Parser)]
#[command(name = "attnopt", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a checkpoint is: architecture (and how it was detected), dimensions,
    /// parameters by dtype, FLOPs per token and a per-layer table of attention blocks.
    #[command(after_help = "Examples:
  attnopt inspect fixtures/bert
  attnopt inspect fixtures/llama --seq 4096 --json
  attnopt inspect fixtures/gpt2 --backend cpu --threads 2")]
    Inspect {
        /// Model folder (config.json + safetensors) or a .safetensors file.
        model: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// Sequence length (tokens) at which FLOPs are counted (default: 128, or the model's
        /// position count if smaller).
        #[arg(long)]
        seq: Option<usize>,
        /// Also show how this backend would run the model: `cpu` lowers and compiles it at
        /// --seq and reports the matrix-product library (and why), kernels, arena and compile
        /// time.
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Threads for --backend cpu (0: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[command(flatten)]
        matmul: MatMulArgs,
        /// Print one JSON object instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Run a model on inputs from a safetensors file and write its outputs.
    ///
    /// Input tensors are named like the Hugging Face forward arguments (input_ids,
    /// attention_mask, token_type_ids, pixel_values); ids may be any signed integer dtype or u8; tensors
    /// the model does not take are ignored with a note. Missing attention_mask means
    /// "attend everywhere", missing token_type_ids means segment 0.
    #[command(after_help = "Examples:
  attnopt run fixtures/bert -i fixtures/bert/golden.safetensors -o out.safetensors
  attnopt run OPTIMISED_DIR -i inputs.safetensors --compare fixtures/bert/golden.safetensors
  attnopt run fixtures/llama -i in.safetensors -o out.safetensors --precision bf16 --verify")]
    Run {
        /// Model folder.
        model: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// Safetensors file with the inputs.
        #[arg(long, short, required_unless_present = "text", conflicts_with = "text")]
        input: Option<PathBuf>,
        /// A sentence to run on, tokenised with the model's tokenizer.json (repeat for a
        /// batch; padded to the longest with an attention mask, as transformers does).
        #[arg(long)]
        text: Vec<String>,
        /// Add `sentence_embedding`: `last_hidden_state` pooled per sentence, by the mean over
        /// the attention mask (`mean`, sentence-transformers') or the first token (`cls`).
        #[arg(long, value_enum)]
        pool: Option<PoolArg>,
        /// Add `logits` (`[batch, tokens, vocab]`): a decoder's language-model head
        /// (lm_head.weight, or the tied token embedding).
        #[arg(long)]
        logits: bool,
        /// Where to write the outputs (safetensors; written atomically).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also output `embeddings` and every `layer.{i}`, not only `last_hidden_state`.
        #[arg(long)]
        all_layers: bool,
        /// Compare outputs with same-named tensors in this safetensors file (e.g. goldens)
        /// and print the max-abs error of each.
        #[arg(long)]
        compare: Option<PathBuf>,
        #[command(flatten)]
        exec: ExecArgs,
        /// Also run the f32 reference interpreter on the same inputs and print each output's
        /// error against it (slow on large models: the interpreter is plain loops).
        #[arg(long)]
        verify: bool,
    },
    /// Export the model graph: Graphviz DOT, SVG (needs graphviz's `dot`), or the text form.
    #[command(after_help = "Examples:
  attnopt graph fixtures/bert | head
  attnopt graph fixtures/vit --dot vit.dot --text vit.txt")]
    Graph {
        /// Model folder.
        model: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// Write Graphviz DOT here.
        #[arg(long)]
        dot: Option<PathBuf>,
        /// Write an SVG picture here (runs graphviz's `dot -Tsvg`).
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Write the stable text form here (default: standard output when no other format
        /// is asked for).
        #[arg(long)]
        text: Option<PathBuf>,
    },
    /// Optimise a model: exact e-graph rewriting of every layer (always on), and approximate
    /// conversions such as softmax → Hydra attention only where you allow them, with their
    /// error measured on calibration inputs and kept within --budget. Writes an optimised
    /// model folder that `run` and `inspect` accept; the input model is never modified.
    #[command(after_help = "Examples:
  attnopt optimize fixtures/vit-hydra -o vit-opt --seq 4096,128 --verify
  attnopt optimize fixtures/bert -o bert-hydra --allow hydra --budget 0.05
  attnopt optimize fixtures/gpt2 -o gpt2-sparse --allow sparse-qkv,sparse-ff --budget inf
  attnopt optimize fixtures/bert --explain 0
  attnopt optimize fixtures/llama -o llama-opt --standalone --force")]
    Optimize {
        /// Model folder.
        model: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// Output folder (written atomically; must not exist unless --force). Required, except
        /// with --explain.
        #[arg(long, short, required_unless_present = "explain")]
        output: Option<PathBuf>,
        /// Sequence lengths to report costs at; the first is the length the graph is
        /// optimised for (the same model may rewrite differently at 128 and 16384).
        #[arg(long, value_delimiter = ',', default_value = "128")]
        seq: Vec<usize>,
        /// Approximate conversions to enable, comma-separated: `hydra` (softmax → Hydra linear
        /// attention), `sparse-qkv` (dense Q/K/V products → factored gating × projection
        /// fitted to their outputs), `sparse-ff` (a dense feed-forward → one unit per block
        /// chosen by a fitted low-rank controller). Never on by default; each conversion's
        /// error is measured and kept within --budget, families in the order given.
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
        /// Convert exactly these layers (comma-separated), where an allowed family applies,
        /// whether or not the cost model says it pays (to follow a paper's recipe); without
        /// --budget, whatever the error. Other layers are left exact.
        #[arg(long, value_delimiter = ',')]
        layers: Option<Vec<u32>>,
        /// sparse-qkv: modules S per hidden size d (module width d/S). Default: the layer's
        /// attention heads.
        #[arg(long)]
        sparse_qkv_modules: Option<usize>,
        /// sparse-ff: units per block N (one of each N is computed per token).
        #[arg(long, default_value_t = attnopt::convert::SparseSettings::default().ff_block)]
        sparse_ff_block: usize,
        /// sparse-ff: the controller's rank L (at most the hidden size d, where it is exact).
        /// Default: units / N, as in trax's configurations.
        #[arg(long)]
        sparse_ff_rank: Option<usize>,
        /// Largest relative error (‖Δ‖₂/‖ref‖₂ of the final output on calibration inputs) the
        /// approximations may cause; layers are converted, most profitable first, while it
        /// holds. Default 0.01; `inf` converts every eligible layer. Needs --allow.
        #[arg(long)]
        budget: Option<f64>,
        /// Safetensors file of calibration inputs (default: seeded random inputs).
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Tokens per generated calibration sequence.
        #[arg(long, default_value_t = OptimizeOptions::default().calib_seq)]
        calib_seq: usize,
        /// Seed for generated calibration inputs.
        #[arg(long, default_value_t = OptimizeOptions::default().seed)]
        seed: u64,
        /// Read rules from this folder instead of the rules built into the binary.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Measure the error against the original even with exact rules only.
        #[arg(long)]
        verify: bool,
        /// Keep each converted layer's output projection as it is (by default it is refitted
        /// by least squares on the calibration activations, where that lowers the error on
        /// held-out calibration rows).
        #[arg(long)]
        no_refit: bool,
        /// Print the egg explanation of the rewrite chain of this layer and exit.
        #[arg(long)]
        explain: Option<u32>,
        /// Replace an existing output folder, if it holds exactly the files attnopt wrote there
        /// (any other file in it and the folder is left alone).
        #[arg(long)]
        force: bool,
        /// Record a hash of every byte of the source checkpoint, so that `--verify-source` can
        /// check it later (done anyway for checkpoints up to 256 MiB; reads the whole checkpoint).
        #[arg(long)]
        hash_source: bool,
        /// Write a folder that needs nothing from the source checkpoint: weight-only
        /// transformations folded and every weight the graph reads copied in (by default the
        /// folder refers to the source's tensors and holds only what optimisation created).
        #[arg(long)]
        standalone: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the report as one self-contained HTML page: the per-layer table, bar
        /// charts of cost and error per layer, and one layer's graph before and after.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// E-graph node limit per block.
        #[arg(long, default_value_t = Limits::default().nodes)]
        node_limit: usize,
        /// Rewrite iterations per block.
        #[arg(long, default_value_t = Limits::default().iterations)]
        iter_limit: usize,
        /// Seconds per block before giving up on saturation.
        #[arg(long, default_value_t = Limits::default().time.as_secs_f64())]
        time_limit: f64,
    },
    /// Measure a model on the CPU backend: the original and the exactly optimised graph at each
    /// sequence length — latency (median, min, max), compile time, per-kernel breakdown,
    /// GFLOP/s. Uses oneDNN for matrix products when installed, else the gemm crate (see
    /// --matmul).
    #[command(after_help = "Examples:
  attnopt bench fixtures/bert
  attnopt bench fixtures/gpt2 --seq 16,64 --threads 2 --reps 20 --json
  attnopt bench fixtures/llama --precision bf16
  attnopt bench fixtures/bert --ab 31")]
    Bench {
        /// Model folder.
        model: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// Sequence lengths, comma-separated (default: 128, or the model's position count if
        /// smaller; a ViT always runs at its own length).
        #[arg(long, value_delimiter = ',')]
        seq: Option<Vec<usize>>,
        /// Batch size.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Threads (0: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Timed repetitions per configuration.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Only the original graph (skip the optimised one).
        #[arg(long)]
        no_optimise: bool,
        /// `f32`, or `bf16` (bf16 weights and product inputs, f32 accumulation; its error
        /// against the f32 interpreter is measured and reported per output).
        #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
        precision: PrecisionArg,
        #[command(flatten)]
        matmul: MatMulArgs,
        /// Also time the original and the optimised graph alternately in one process for N
        /// rounds and report the median of the per-round ratios (optimised ÷ original) with a
        /// 95% interval: what to trust on a noisy machine.
        #[arg(long, value_name = "ROUNDS", num_args = 0..=1, default_missing_value = "21")]
        ab: Option<usize>,
        /// Measure decoding instead (a decoder): per-token latency of one-token steps after a
        /// prompt of each --positions length (--reps steps each), prefill time, state held,
        /// and the bandwidth floor (weight bytes per token ÷ read bandwidth measured here).
        #[arg(long, conflicts_with_all = ["seq", "batch", "ab"])]
        decode: bool,
        /// With --decode: the positions (tokens held) to time steps at. Default: 128, 1024 and
        /// 8192, where the model holds them.
        #[arg(long, value_delimiter = ',', requires = "decode")]
        positions: Option<Vec<usize>>,
        /// Print one JSON object (schema in docs/CLI.md).
        #[arg(long)]
        json: bool,
    },
    /// Distil a converted model layer by layer against the original (attention transfer: each
    /// converted layer's projections, or sparse controller, trained to reproduce the original
    /// layer's output), in PyTorch through the Python package. Writes a folder that attnopt and
    /// transformers load.
    #[command(after_help = "Example:
  attnopt optimize fixtures/bert -o bert-hydra --allow hydra --budget inf
  attnopt distill bert-hydra --teacher fixtures/bert --data ids.safetensors -o bert-distilled

Needs a Python with attnopt (pip install .) and PyTorch (pip install torch transformers).")]
    Distill {
        /// A folder `optimize --allow …` wrote.
        converted: PathBuf,
        /// The original model folder.
        #[arg(long)]
        teacher: PathBuf,
        /// A text file (one document per line, tokenised with the original's tokenizer.json)
        /// or a safetensors file of token ids (`input_ids` [sequences, tokens]); a quarter of
        /// the sequences are held out to measure.
        #[arg(long)]
        data: PathBuf,
        /// Output folder (must not exist).
        #[arg(long, short)]
        output: PathBuf,
        /// Layers to distil (default: those the conversion changed).
        #[arg(long, value_delimiter = ',')]
        layers: Option<Vec<u32>>,
        /// Adam steps per layer.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// Learning rate.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Time budget for all layers, in minutes.
        #[arg(long)]
        minutes: Option<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Then this many steps of end-to-end distillation against the original's
        /// last_hidden_state (stage 2).
        #[arg(long, default_value_t = 0)]
        finetune: usize,
        /// In stage 2, train rank-R adapters (merged before saving) instead of full weights.
        #[arg(long)]
        lora: Option<usize>,
        /// The Python interpreter to use (default: $ATTNOPT_PYTHON, else python3).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Generate text with a decoder (GPT-2, LLaMA-style, and their optimised folders): the
    /// prompt runs once (prefill), then one token at a time with per-layer state — a key/value
    /// cache for softmax attention, a constant-size running sum for causal linear and Hydra
    /// attention — derived from the model's own graph. Stops at the config's eos_token_id.
    ///
    /// Prints the text as it is generated (--prompt), or the new ids (--prompt-ids); timings
    /// go to standard error. Greedy unless a sampling option is given.
    #[command(after_help = "Examples:
  attnopt generate fixtures/gpt2 --prompt-ids 5,17,99 --max-new-tokens 16
  attnopt generate fixtures/llama --prompt 'the quick brown' --max-new-tokens 20
  attnopt generate fixtures/llama --prompt-ids 1,42 --temperature 0.8 --top-p 0.9 --seed 3 --json")]
    Generate {
        /// Model folder (a decoder; optimised folders too).
        model: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// The prompt as token ids, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "prompt",
            conflicts_with = "prompt"
        )]
        prompt_ids: Option<Vec<i64>>,
        /// The prompt as text, tokenised with the model folder's tokenizer.json.
        #[arg(long)]
        prompt: Option<String>,
        /// The most tokens to generate.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Pick the most likely token every time (the default).
        #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
        greedy: bool,
        /// Sample: logits divided by T (> 0) before the softmax.
        #[arg(long)]
        temperature: Option<f32>,
        /// Sample among the K most likely tokens only.
        #[arg(long)]
        top_k: Option<usize>,
        /// Sample among the most likely tokens whose probabilities first reach P (0 < P <= 1).
        #[arg(long)]
        top_p: Option<f32>,
        /// Seed of the sampler (the same seed gives the same text).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep going after an end-of-sequence token.
        #[arg(long)]
        ignore_eos: bool,
        #[command(flatten)]
        exec: ExecArgs,
        /// Print one JSON object at the end: prompt_ids, generated_ids, prefill_ms,
        /// per_token_ms (each one-token step), state_bytes (and text with --prompt).
        #[arg(long)]
        json: bool,
    },
    /// Write the GPU backend's program for one batch and sequence size as a folder that runs
    /// without attnopt: one CUDA C file per kernel (each compiles with only the folder on its
    /// include path), launch.json (every kernel launch and matrix product in order, over one
    /// memory arena; docs/GPU.md), the weights as f32 and constant tables. Running it on a GPU
    /// from attnopt (`--backend cuda`) is not supported yet; `run --backend cuda-sim` runs the
    /// same kernels on the CPU simulator.
    #[command(after_help = "Examples:
  attnopt emit fixtures/bert --target cuda -o bert-cuda --seq 16
  attnopt emit OPTIMISED_DIR -o opt-cuda --batch 2 --seq 128 --force")]
    Emit {
        /// Model folder (original or optimised).
        model: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// What to generate code for.
        #[arg(long, value_enum, default_value = "cuda")]
        target: TargetArg,
        /// Output folder (written atomically; must not exist unless --force, which replaces
        /// only a folder `emit` wrote).
        #[arg(long, short)]
        output: PathBuf,
        /// Batch size the program is made for.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Tokens per sequence (default: the model's default length; fixed for image models).
        #[arg(long)]
        seq: Option<usize>,
        /// Matrix products as `gemm` steps for the library (cuBLASLt), or as generated tiled
        /// kernels like every other step (no library needed; slower).
        #[arg(long, value_enum, default_value = "library")]
        products: ProductsArg,
        /// Replace an existing folder that `emit` wrote.
        #[arg(long)]
        force: bool,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How a model is loaded (shared by every command that reads one).
#[derive(Args, Clone, Copy)]
struct LoadArgs {
    /// Use a model whose config.json is missing or lacks a setting that nothing in the
    /// checkpoint confirms (the head count): the guesses `inspect` lists are taken as they are.
    /// Without this flag such a model is refused, since a wrong guess gives wrong numbers.
    #[arg(long)]
    accept_guesses: bool,
    /// For an optimised folder: hash every byte of its source checkpoint and compare with the
    /// hash recorded by `optimize` (by default only file metadata, the header and sampled
    /// blocks are checked, which costs the same at 1 MB and 100 GB).
    #[arg(long)]
    verify_source: bool,
}

/// Where `run` and `generate` execute.
#[derive(Args)]
struct ExecArgs {
    /// Execution backend.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Threads for the CPU backend (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Precision of the CPU backend's products against weights: `f32` (exact within float
    /// rounding) or `bf16` (bf16 weights and product inputs, f32 accumulation and f32
    /// elsewhere; approximate — `run --verify` measures its error).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    #[command(flatten)]
    matmul: MatMulArgs,
}

impl LoadArgs {
    fn load(self, path: &Path) -> Result<Model> {
        self.load_logits(path, false)
    }

    /// With `logits`, a decoder's language-model head too (the output `logits`).
    fn load_logits(self, path: &Path, logits: bool) -> Result<Model> {
        Ok(Model::load_with(
            path,
            &attnopt::LoadOptions {
                verify_source: self.verify_source,
                accept_guesses: self.accept_guesses,
                logits,
            },
        )?)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PoolArg {
    Mean,
    Cls,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    F32,
    Bf16,
}

impl From<PrecisionArg> for attnopt::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => attnopt::Precision::F32,
            PrecisionArg::Bf16 => attnopt::Precision::Bf16,
        }
    }
}

/// The CPU backend's matrix-product library (shared by `run`, `bench` and `inspect`).
#[derive(Args, Clone, Copy)]
struct MatMulArgs {
    /// Matrix-product library of the CPU backend: `auto` (oneDNN when libdnnl.so.2 loads, else
    /// gemm), `onednn` (an error saying why when it cannot be used) or `gemm`. Default:
    /// $ATTNOPT_MATMUL, else auto.
    #[arg(long, value_enum)]
    matmul: Option<MatMulArg>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum MatMulArg {
    Auto,
    Onednn,
    Gemm,
}

impl From<MatMulArg> for attnopt::MatMulChoice {
    fn from(m: MatMulArg) -> Self {
        match m {
            MatMulArg::Auto => attnopt::MatMulChoice::Auto,
            MatMulArg::Onednn => attnopt::MatMulChoice::OneDnn,
            MatMulArg::Gemm => attnopt::MatMulChoice::Gemm,
        }
    }
}

/// The environment variables that configure the CPU backend (docs/CLI.md). This file is the
/// only place attnopt reads them; the library takes [`attnopt::CpuOptions`].
const MATMUL_ENV: &str = "ATTNOPT_MATMUL";
const POSTOPS_ENV: &str = "ATTNOPT_POSTOPS";
const JIT_AVX512_ENV: &str = "ATTNOPT_JIT_AVX512";
const ONEDNN_LIBRARY_ENV: &str = "ATTNOPT_ONEDNN_LIBRARY";

/// The CPU backend's options from the flags and the process environment; a flag wins over a
/// variable.
fn cpu_options(
    matmul: MatMulArgs,
    threads: usize,
    precision: PrecisionArg,
) -> Result<attnopt::CpuOptions> {
    cpu_options_from(matmul, threads, precision, |name| std::env::var_os(name))
}

/// [`cpu_options`] with the environment as a lookup (so tests need not change the process's).
/// An empty variable counts as unset; `ATTNOPT_POSTOPS` and `ATTNOPT_JIT_AVX512` turn their
/// feature off only when `0`.
fn cpu_options_from(
    matmul: MatMulArgs,
    threads: usize,
    precision: PrecisionArg,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<attnopt::CpuOptions> {
    let text = |name: &str| {
        var(name)
            .map(|v| v.to_string_lossy().trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let choice = match (matmul.matmul, text(MATMUL_ENV)) {
        (Some(m), _) => m,
        (None, Some(v)) => <MatMulArg as ValueEnum>::from_str(&v, true)
            .map_err(|_| anyhow!("{MATMUL_ENV}={v}: expected auto, onednn or gemm"))?,
        (None, None) => MatMulArg::Auto,
    };
    Ok(attnopt::CpuOptions {
        threads,
        precision: precision.into(),
        matmul: choice.into(),
        post_ops: text(POSTOPS_ENV).is_none_or(|v| v != "0"),
        row_primitives: text(JIT_AVX512_ENV).is_none_or(|v| v != "0"),
        onednn_library: var(ONEDNN_LIBRARY_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    })
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// The reference interpreter (slow, exact by definition).
    Interp,
    /// JIT-compiled CPU kernels with oneDNN or gemm matrix products.
    Cpu,
    /// An NVIDIA GPU: the driver (libcuda.so.1) and NVRTC loaded at run time, f32 (not yet
    /// run on a GPU; ATTNOPT_LIBCUDA, ATTNOPT_NVRTC, ATTNOPT_CUDA_CACHE say where things are).
    Cuda,
    /// The GPU backend's generated kernels executed by its CPU simulator (every block and
    /// thread, with bounds, races and barriers checked): for checking generated code without a
    /// GPU. Slow.
    CudaSim,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProductsArg {
    /// `gemm` steps in launch.json.
    Library,
    /// Generated kernels.
    Kernels,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetArg {
    /// CUDA C for NVIDIA GPUs (sm_90 checked).
    Cuda,
}

/// `print!` that returns an error instead of panicking when standard output is closed
/// (`attnopt graph M | head -1`); `main` ends quietly on that error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `println!` without the panic; see [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `s` with control characters escaped: messages carry names and paths from strangers' files
/// (a manifest's paths, tensor names), which must not add lines or drive the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The GPU runtime's libraries and PTX cache, from the environment: `ATTNOPT_LIBCUDA` (the
/// driver, default `libcuda.so.1`), `ATTNOPT_NVRTC` (NVRTC, default the first `libnvrtc.so*`
/// that loads), `ATTNOPT_CUDA_CACHE` (default `$XDG_CACHE_HOME/attnopt/nvrtc` or
/// `~/.cache/attnopt/nvrtc`; `0` turns caching off).
fn cuda_options() -> attnopt_gpu::runtime::CudaOptions {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = match var("ATTNOPT_CUDA_CACHE") {
        Some(p) if p.as_os_str() == "0" => None,
        Some(p) => Some(p),
        None => var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("attnopt").join("nvrtc")),
    };
    attnopt_gpu::runtime::CudaOptions {
        libcuda: var("ATTNOPT_LIBCUDA"),
        nvrtc: var("ATTNOPT_NVRTC"),
        cache_dir: cache,
        device: 0,
    }
}

/// `--threads N`, clamped to the machine's cores with a warning.
/// The backend `run` and `generate` use, from their flags.
fn backend_of(exec: ExecArgs) -> Result<attnopt::Backend> {
    let ExecArgs {
        backend,
        threads,
        precision,
        matmul,
    } = exec;
    Ok(match backend {
        Backend::Interp if precision != PrecisionArg::F32 => {
            bail!("the interpreter runs in f32 only; --precision bf16 needs --backend cpu")
        }
        Backend::Interp if matmul.matmul.is_some() => {
            bail!("--matmul chooses the CPU backend's library; it needs --backend cpu")
        }
        Backend::Interp => attnopt::Backend::Interp,
        Backend::Cpu => {
            attnopt::Backend::Cpu(cpu_options(matmul, clamp_threads(threads), precision)?)
        }
        Backend::Cuda if precision != PrecisionArg::F32 => {
            bail!("not supported yet: --backend cuda with --precision bf16 (weights are f32 on the GPU)")
        }
        Backend::Cuda if matmul.matmul.is_some() => {
            bail!("--matmul chooses the CPU backend's library; it needs --backend cpu")
        }
        Backend::Cuda => attnopt::Backend::Cuda(cuda_options()),
        Backend::CudaSim if precision != PrecisionArg::F32 => {
            bail!("--backend cuda-sim runs in f32 only")
        }
        Backend::CudaSim if matmul.matmul.is_some() => {
            bail!("--matmul chooses the CPU backend's library; it needs --backend cpu")
        }
        Backend::CudaSim => attnopt::Backend::CudaSim,
    })
}

fn clamp_threads(n: usize) -> usize {
    let (threads, warning) = attnopt::limits::threads(n);
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    threads
}

/// Whether `e` is a write to a closed pipe (the reader, e.g. `head`, has all it wants).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let top = e.to_string();
            eprintln!("error: {}", printable(&top));
            // Library errors already spell out their cause; print only causes not yet said.
            for cause in e
                .chain()
                .skip(1)
                .map(|c| c.to_string())
                .filter(|c| !top.contains(c.as_str()))
            {
                eprintln!("  caused by: {}", printable(&cause));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect {
            model,
            load,
            seq,
            backend,
            threads,
            matmul,
            json,
        } => {
            if seq == Some(0) {
                bail!("--seq must be at least 1");
            }
            // inspect is where guesses are shown, so it takes them.
            let load = LoadArgs {
                accept_guesses: true,
                ..load
            };
            let m = load.load(&model)?;
            let seq = seq.unwrap_or_else(|| attnopt::limits::default_seq(&m));
            let mut report = inspect::inspect(&m, seq);
            match backend {
                None | Some(Backend::Interp) if matmul.matmul.is_some() => {
                    bail!("--matmul chooses the CPU backend's library; it needs --backend cpu")
                }
                None | Some(Backend::Interp) => {}
                Some(Backend::Cpu) => {
                    let options = cpu_options(matmul, clamp_threads(threads), PrecisionArg::F32)?;
                    report.cpu = Some(inspect::cpu_plan(&m, report.seq, &options)?)
                }
                Some(Backend::Cuda | Backend::CudaSim) if matmul.matmul.is_some() => {
                    bail!("--matmul chooses the CPU backend's library; it needs --backend cpu")
                }
                Some(Backend::Cuda | Backend::CudaSim) => {
                    report.gpu = Some(inspect::gpu_plan(&m, report.seq)?)
                }
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", report.render());
            }
        }
        Command::Run {
            model,
            load,
            input,
            text,
            pool,
            logits,
            output,
            all_layers,
            compare,
            exec,
            verify,
        } => {
            let backend = backend_of(exec)?;
            if output.is_none() && compare.is_none() && text.is_empty() {
                bail!("nothing to do: give --output FILE and/or --compare FILE");
            }
            let input = match &input {
                Some(f) => attnopt::run::Input::File(f),
                None => attnopt::run::Input::Text(&text),
            };
            run_model(
                &load.load_logits(&model, logits)?,
                &attnopt::run::RunRequest {
                    input,
                    pool: pool.map(|p| match p {
                        PoolArg::Mean => attnopt::text::Pool::Mean,
                        PoolArg::Cls => attnopt::text::Pool::Cls,
                    }),
                    output: output.as_deref(),
                    compare: compare.as_deref(),
                    verify,
                    opts: RunOptions {
                        all_layers,
                        backend,
                    },
                },
            )?;
        }
        Command::Graph {
            model,
            load,
            dot,
            svg,
            text,
        } => {
            let m = load.load(&model)?;
            let g = m.graph();
            let inputs = m.inputs();
            let targets: Vec<&PathBuf> = [&dot, &svg, &text].into_iter().flatten().collect();
            for (i, path) in targets.iter().enumerate() {
                output::check_file_target(path, &inputs)?;
                if targets[..i].contains(path) {
                    bail!(
                        "{}: given for two outputs; each needs its own path",
                        path.display()
                    );
                }
            }
            if svg.is_some()
                && std::process::Command::new("dot")
                    .arg("-V")
                    .output()
                    .is_err()
            {
                bail!("graphviz's `dot` is not installed (apt-get install graphviz); use --dot to write DOT instead");
            }
            if let Some(path) = &dot {
                output::write_file(path, attnopt::ir::dot::to_dot(g).as_bytes(), &inputs)?;
                eprintln!("wrote {}", path.display());
            }
            if let Some(path) = &svg {
                write_svg(&attnopt::ir::dot::to_dot(g), path, &inputs)?;
                eprintln!("wrote {}", path.display());
            }
            match &text {
                Some(path) => {
                    output::write_file(path, g.to_string().as_bytes(), &inputs)?;
                    eprintln!("wrote {}", path.display());
                }
                None if dot.is_none() && svg.is_none() => out!("{g}"),
                None => {}
            }
        }
        Command::Optimize {
            model,
            load,
            output,
            seq,
            allow,
            layers,
            sparse_qkv_modules,
            sparse_ff_block,
            sparse_ff_rank,
            budget,
            calib,
            calib_seq,
            seed,
            rules,
            verify,
            no_refit,
            explain,
            force,
            hash_source,
            standalone,
            json,
            report,
            node_limit,
            iter_limit,
            time_limit,
        } => {
            if seq.is_empty() || seq.contains(&0) || calib_seq == 0 {
                bail!("--seq and --calib-seq take positive lengths");
            }
            if budget.is_some_and(|b| b.is_nan() || b < 0.0) {
                bail!("--budget must be a non-negative number (or `inf`)");
            }
            if budget.is_some() && allow.is_empty() {
                eprintln!(
                    "warning: --budget does nothing without --allow (only approximate \
                     conversions have an error to budget)"
                );
            }
            if no_refit && allow.is_empty() {
                eprintln!(
                    "warning: --no-refit does nothing without --allow (only converted layers \
                     have output projections to refit)"
                );
            }
            if layers.is_some() && allow.is_empty() {
                eprintln!(
                    "warning: --layers does nothing without --allow (it picks layers to convert)"
                );
            }
            if budget.is_none() && !allow.is_empty() && layers.is_some() {
                eprintln!(
                    "note: no --budget given: the layers named by --layers are converted whatever \
                     the error (pass --budget E to limit it)"
                );
            } else if budget.is_none() && !allow.is_empty() {
                eprintln!(
                    "note: no --budget given: layers are converted only while the final output's \
                     relative error stays within {} (pass --budget E to change it, `inf` for no limit)",
                    attnopt::optimize::DEFAULT_BUDGET
                );
            }
            if !(time_limit > 0.0 && time_limit <= 86_400.0) {
                bail!("--time-limit must be a positive number of seconds, at most 86400 (a day)");
            }
            let opts = OptimizeOptions {
                seqs: seq,
                allow,
                budget,
                calib,
                calib_seq,
                seed,
                rules_dir: rules,
                limits: Limits {
                    nodes: node_limit,
                    iterations: iter_limit,
                    time: std::time::Duration::from_secs_f64(time_limit),
                },
                verify,
                refit: !no_refit,
                sparse: attnopt::convert::SparseSettings {
                    qkv_modules: sparse_qkv_modules,
                    ff_block: sparse_ff_block,
                    ff_rank: sparse_ff_rank,
                },
                layers,
            };
            if let Err(e) = opts.sparse.check() {
                bail!("{e} (--sparse-qkv-modules, --sparse-ff-block, --sparse-ff-rank)");
            }
            let m = load.load(&model)?;
            if let Some(layer) = explain {
                for line in attnopt::optimize::explain(&m, &opts, layer, None)? {
                    outln!("{line}");
                }
                return Ok(());
            }
            let Some(output) = output else {
                bail!("give the output folder with -o/--output")
            };
            attnopt::save::preflight(&m, &output, force)?;
            if let Some(r) = &report {
                attnopt::save::check_report_target(&m, &output, r, &opts)?;
            }
            let mut reporter = attnopt::progress::Reporter::new("optimize");
            let mut progress = |step: &str| reporter.step(attnopt::progress::Step::phase(step));
            let opt = attnopt::optimize::optimize(&m, &opts, &mut progress)?;
            let saved = attnopt::save::save(
                &m,
                &opt,
                &output,
                &attnopt::save::SaveOptions {
                    force,
                    standalone,
                    hash_source,
                },
            )?;
            eprintln!(
                "[optimize] wrote {} ({} graph nodes, {} new weight tensor(s))",
                saved.dir.display(),
                saved.graph_nodes,
                saved.new_weights
            );
            if let Some(r) = &report {
                let page = attnopt::html_report::page(m.graph(), &opt.graph, &opt.report);
                attnopt::save::check_report_target(&m, &output, r, &opts)?;
                output::write_file(r, page.as_bytes(), &m.inputs())?;
                eprintln!("[optimize] wrote {}", r.display());
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&opt.report)?);
            } else {
                out!("{}", opt.report.render());
            }
        }
        Command::Bench {
            model,
            load,
            seq,
            batch,
            threads,
            reps,
            no_optimise,
            precision,
            matmul,
            ab,
            decode,
            positions,
            json,
        } => {
            if decode {
                if reps == 0 || reps > 100_000 {
                    bail!("--reps takes 1 to 100000");
                }
                let m = load.load_logits(&model, true)?;
                let opts = attnopt::bench_decode::DecodeOptions {
                    positions,
                    reps,
                    optimised: !no_optimise,
                    cpu: cpu_options(matmul, clamp_threads(threads), precision)?,
                };
                let mut reporter = attnopt::progress::Reporter::new("bench");
                let r = attnopt::bench_decode::bench_decode(&m, &opts, &mut |s| reporter.step(s))?;
                drop(reporter);
                let threads = attnopt::limits::threads(opts.cpu.threads).0;
                let precision = match opts.cpu.precision {
                    attnopt::Precision::Bf16 => "bf16",
                    attnopt::Precision::F32 => "f32",
                };
                if json {
                    let v = serde_json::json!({
                        "model": model.display().to_string(),
                        "threads": threads,
                        "precision": precision,
                        "weight_bytes_per_token": r.weight_bytes_per_token,
                        "read_gbps": r.read_gbps,
                        "floor_ms": r.floor_ms,
                        "decode": r.points,
                    });
                    outln!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    outln!(
                        "{}: decoding, {threads} threads, {precision}; {} weight bytes per token, read bandwidth {:.1} GB/s: floor {:.3} ms per token",
                        model.display(),
                        r.weight_bytes_per_token,
                        r.read_gbps,
                        r.floor_ms
                    );
                    outln!(
                        "{:<17} {:>8} {:>12} {:>9} {:>10} {:>12} {:>12}",
                        "graph",
                        "position",
                        "ms/token",
                        "× floor",
                        "tokens/s",
                        "prefill ms",
                        "state B"
                    );
                    for p in &r.points {
                        outln!(
                            "{:<17} {:>8} {:>12.3} {:>9.2} {:>10.1} {:>12.1} {:>12}",
                            p.graph,
                            p.position,
                            p.per_token_ms,
                            p.vs_floor,
                            p.tokens_per_s,
                            p.prefill_ms,
                            p.state_bytes
                        );
                    }
                }
                return Ok(());
            }
            if seq.as_ref().is_some_and(|s| s.is_empty() || s.contains(&0))
                || batch == 0
                || reps == 0
            {
                bail!("--seq, --batch and --reps take positive numbers");
            }
            // Timings are kept per repetition: bound the counts before anything is reserved.
            if reps > 100_000 {
                bail!("--reps takes at most 100000");
            }
            if ab.is_some_and(|r| !(5..=100_000).contains(&r)) {
                bail!("--ab takes 5 to 100000 rounds (fewer give no confidence interval)");
            }
            let m = load.load(&model)?;
            let (seq, notes) = attnopt::bench::resolve_seqs(&m, seq);
            for n in notes {
                eprintln!("note: {n}");
            }
            let opts = attnopt::bench::BenchOptions {
                seqs: seq,
                batch,
                reps,
                optimised: !no_optimise,
                cpu: cpu_options(matmul, clamp_threads(threads), precision)?,
                ab_rounds: ab.unwrap_or(0),
            };
            if ab.is_some() && no_optimise {
                bail!("--ab compares the original with the optimised graph; drop --no-optimise");
            }
            let mut reporter = attnopt::progress::Reporter::new("bench");
            let report = attnopt::bench::bench(&m, &opts, &mut |s| reporter.step(s))?;
            drop(reporter);
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", report.render());
            }
        }
        Command::Distill {
            converted,
            teacher,
            data,
            output,
            layers,
            steps,
            lr,
            minutes,
            seed,
            finetune,
            lora,
            python,
        } => {
            let python = python
                .or_else(|| std::env::var_os("ATTNOPT_PYTHON").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("python3"));
            let probe = std::process::Command::new(&python)
                .args(["-c", "import attnopt.distillation, torch, transformers"])
                .output();
            if !probe.as_ref().is_ok_and(|o| o.status.success()) {
                let why = match &probe {
                    Ok(o) => String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string(),
                    Err(e) => e.to_string(),
                };
                bail!(
                    "distill runs in Python ({}: {why}); install attnopt (pip install .) and \
                     PyTorch (pip install torch transformers) there, or name another \
                     interpreter with --python",
                    python.display()
                );
            }
            let mut cmd = std::process::Command::new(&python);
            cmd.args(["-m", "attnopt.distillation"])
                .arg(&converted)
                .arg("--teacher")
                .arg(&teacher)
                .arg("--data")
                .arg(&data)
                .arg("--output")
                .arg(&output)
                .args(["--steps", &steps.to_string(), "--lr", &lr.to_string()])
                .args(["--seed", &seed.to_string()]);
            if let Some(l) = layers {
                let l: Vec<String> = l.iter().map(u32::to_string).collect();
                cmd.args(["--layers", &l.join(",")]);
            }
            if let Some(m) = minutes {
                cmd.args(["--minutes", &m.to_string()]);
            }
            cmd.args(["--finetune", &finetune.to_string()]);
            if let Some(r) = lora {
                cmd.args(["--lora", &r.to_string()]);
            }
            let status = cmd.status()?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
        }
        Command::Generate {
            model,
            load,
            prompt_ids,
            prompt,
            max_new_tokens,
            greedy: _,
            temperature,
            top_k,
            top_p,
            seed,
            ignore_eos,
            exec,
            json,
        } => {
            let backend = backend_of(exec)?;
            let sampling = if temperature.is_some() || top_k.is_some() || top_p.is_some() {
                attnopt::sample::Sampling::Random {
                    temperature: temperature.unwrap_or(1.0),
                    top_k,
                    top_p,
                    seed,
                }
            } else {
                attnopt::sample::Sampling::Greedy
            };
            sampling.check()?;
            let m = load.load_logits(&model, true)?;
            let codec = match (&prompt, attnopt::text::Codec::of(&m)) {
                (_, Ok(c)) => Some(c),
                (Some(_), Err(e)) => {
                    bail!("--prompt needs the model's tokenizer: {e}; give --prompt-ids instead")
                }
                (None, Err(_)) => None,
            };
            let prompt_ids = match (prompt_ids, &prompt, &codec) {
                (Some(ids), _, _) => ids,
                (None, Some(text), Some(c)) => c.encode(text)?,
                _ => unreachable!("clap requires one of --prompt and --prompt-ids"),
            };
            let mut session = attnopt::decode::Session::new(&m, &backend)?;
            let opts = attnopt::decode::GenerateOptions {
                max_new_tokens,
                sampling,
                eos: attnopt::import::generation::eos_token_ids(&m.imported().dir)?,
                ignore_eos,
            };
            let text_out = prompt.is_some() && !json;
            let mut stream = codec.as_ref().map(attnopt::text::Stream::new);
            let mut first = true;
            let done = attnopt::decode::generate(&mut session, &prompt_ids, &opts, |id| {
                if json {
                    return Ok(());
                }
                let piece = match (&mut stream, text_out) {
                    (Some(s), true) => s.push(id)?,
                    _ => format!("{}{id}", if first { "" } else { "," }),
                };
                first = false;
                // Written as it comes; a closed pipe ends generation quietly (see `main`).
                let mut stdout = std::io::stdout().lock();
                std::io::Write::write_all(&mut stdout, piece.as_bytes())
                    .and_then(|()| std::io::Write::flush(&mut stdout))
                    .map_err(|e| attnopt::Error::Io {
                        path: "standard output".into(),
                        source: e,
                    })
            });
            let done = done?;
            if json {
                #[derive(serde::Serialize)]
                struct WithText<'a> {
                    #[serde(flatten)]
                    done: &'a attnopt::decode::Generated,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    text: Option<String>,
                }
                let text = match (&codec, &prompt) {
                    (Some(c), Some(_)) => Some(c.decode(&done.generated_ids)?),
                    _ => None,
                };
                let v = WithText { done: &done, text };
                outln!("{}", serde_json::to_string(&v)?);
            } else {
                outln!();
                let steps = done.per_token_ms.len();
                let per_token = match steps {
                    0 => String::new(),
                    n => format!(
                        ", {:.2} ms per token",
                        done.per_token_ms.iter().sum::<f64>() / n as f64
                    ),
                };
                eprintln!(
                    "{} new tokens after a prompt of {}: prefill {:.1} ms{per_token}, state {} B",
                    done.generated_ids.len(),
                    done.prompt_ids.len(),
                    done.prefill_ms,
                    done.state_bytes
                );
            }
        }
        Command::Emit {
            model,
            load,
            target: TargetArg::Cuda,
            output,
            batch,
            seq,
            products,
            force,
            json,
        } => {
            let m = load.load(&model)?;
            let seq = seq.unwrap_or_else(|| attnopt::limits::default_seq(&m));
            let products = match products {
                ProductsArg::Library => attnopt::emit::Products::Library,
                ProductsArg::Kernels => attnopt::emit::Products::Kernels,
            };
            let done = attnopt::emit::emit(&m, &output, (batch, seq), products, force)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                outln!(
                    "wrote {}: {} CUDA kernels, {} launches and {} matrix products per run \
                     (batch {batch}, {seq} tokens), arena {} bytes, {} weights",
                    output.display(),
                    done.kernels,
                    done.launches,
                    done.products,
                    done.arena_bytes,
                    done.weights
                );
            }
        }
    }
    Ok(())
}

fn run_model(m: &Model, req: &attnopt::run::RunRequest) -> Result<()> {
    let bf16 = matches!(
        &req.opts.backend,
        attnopt::Backend::Cpu(o) if o.precision == attnopt::Precision::Bf16
    );
    let o = attnopt::run::run(m, req, &mut |s| eprintln!("{s}..."))?;
    if !o.ignored.is_empty() {
        let mut names: Vec<&str> = o.ignored.iter().map(String::as_str).take(6).collect();
        if o.ignored.len() > names.len() {
            names.push("...");
        }
        eprintln!(
            "note: ignoring {} tensor(s) the model does not take: {}",
            o.ignored.len(),
            names.join(", ")
        );
    }
    eprintln!("done in {:.1} ms", o.ms);
    for (name, t) in &o.outputs {
        outln!("{name:20} {:?}", t.shape());
    }
    // Text in, nothing written: the sentence embeddings are the answer, one JSON line each.
    if let (attnopt::run::Input::Text(texts), None) = (req.input, req.output) {
        if let Some(e) = o.outputs.get("sentence_embedding") {
            let d = e.shape().last().copied().unwrap_or(0).max(1);
            for (text, row) in texts.iter().zip(e.to_f32_vec().chunks(d)) {
                outln!(
                    "{}",
                    serde_json::json!({ "text": text, "sentence_embedding": row })
                );
            }
        }
    }
    if bf16 && !req.verify {
        eprintln!(
            "note: bf16 is an approximation; add --verify to measure its error against the f32 \
             reference interpreter"
        );
    }
    if req.verify && req.opts.backend == attnopt::Backend::Interp {
        eprintln!("note: --verify: the reference interpreter is what ran; nothing to compare");
    }
    let what = if bf16 { "bf16" } else { "f32" };
    for (name, e) in &o.verified {
        outln!("{name:20} {what} error vs the f32 interpreter: {e}");
    }
    if let Some(path) = req.output {
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = req.compare {
        for (name, err) in &o.compared {
            outln!("{name:20} max-abs error vs {}: {err:.3e}", path.display());
        }
    }
    Ok(())
}

fn write_svg(dot: &str, path: &Path, inputs: &output::Inputs) -> Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("graphviz's `dot` is not installed (apt-get install graphviz); use --dot to write DOT instead")?;
    child
        .stdin
        .take()
        .context("dot's stdin")?
        .write_all(dot.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("dot -Tsvg failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    output::write_file(path, &out.stdout, inputs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options from `flag` and an environment holding exactly `env`.
    fn options(flag: Option<MatMulArg>, env: &[(&str, &str)]) -> Result<attnopt::CpuOptions> {
        cpu_options_from(MatMulArgs { matmul: flag }, 2, PrecisionArg::F32, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        })
    }

    #[test]
    fn nothing_set_gives_the_library_defaults() {
        let o = options(None, &[]).unwrap();
        assert_eq!(
            o,
            attnopt::CpuOptions {
                threads: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn variables_set_the_options_and_a_flag_wins() {
        let env = [
            (MATMUL_ENV, "GEMM"),
            (POSTOPS_ENV, "0"),
            (JIT_AVX512_ENV, " 0 "),
            (ONEDNN_LIBRARY_ENV, "/opt/dnnl/libdnnl.so.2"),
        ];
        let o = options(None, &env).unwrap();
        assert_eq!(o.matmul, attnopt::MatMulChoice::Gemm);
        assert!(!o.post_ops);
        assert!(!o.row_primitives);
        assert_eq!(
            o.onednn_library.as_deref(),
            Some(Path::new("/opt/dnnl/libdnnl.so.2"))
        );
        let o = options(Some(MatMulArg::Onednn), &env).unwrap();
        assert_eq!(o.matmul, attnopt::MatMulChoice::OneDnn);
        // Only `0` turns a feature off; an empty variable is unset.
        let o = options(
            None,
            &[(POSTOPS_ENV, "1"), (JIT_AVX512_ENV, "no"), (MATMUL_ENV, "")],
        )
        .unwrap();
        assert!(o.post_ops && o.row_primitives);
        assert_eq!(o.matmul, attnopt::MatMulChoice::Auto);
    }

    #[test]
    fn an_unknown_matmul_variable_is_an_error() {
        let e = options(None, &[(MATMUL_ENV, "mkl")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ATTNOPT_MATMUL=mkl: expected auto, onednn or gemm"
        );
        assert!(options(Some(MatMulArg::Gemm), &[(MATMUL_ENV, "mkl")]).is_ok());
    }
}
