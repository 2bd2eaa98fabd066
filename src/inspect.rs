//! `inspect`: what a checkpoint is — architecture and why, dimensions, parameters by dtype,
//! FLOPs per token at a sequence length, and one row per attention layer; with
//! `--backend cpu`, how the CPU backend would run it (matrix-product library and why, kernels,
//! arena, compile time).

use std::collections::BTreeMap;
use std::fmt::Write;

use attnopt_cpu::CpuOptions;
use attnopt_ir::cost::total_cost;
use attnopt_ir::summary::{attention_layers, AttentionSummary};
use attnopt_ir::Bindings;

use crate::Model;

/// Everything `attnopt inspect` reports (also its `--json` schema).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    pub path: String,
    pub architecture: &'static str,
    pub detected_by: String,
    pub guesses: Vec<String>,
    pub dims: attnopt_import::Dims,
    pub files: Vec<String>,
    pub tensors: usize,
    pub params_total: u64,
    pub params_by_dtype: BTreeMap<String, u64>,
    pub unused_tensors: Vec<String>,
    pub graph_nodes: usize,
    pub inputs: Vec<String>,
    /// Tokens the FLOP counts are evaluated at (the `--seq` given, or fixed by the model).
    pub seq: usize,
    pub seq_fixed_by_model: bool,
    pub flops_per_token: f64,
    pub attention_flops_fraction: f64,
    /// Weight bytes one token reads (batch 1, one token: what bounds decoding), at the
    /// weights' stored sizes; a sparse feed-forward counts only its chosen units.
    pub weight_bytes_per_token: u64,
    pub attention: Vec<AttentionSummary>,
    /// With `--backend cpu`: how the CPU backend runs the model at `seq` (batch 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPlan>,
    /// With `--backend cuda|cuda-sim`: the GPU backend's program at `seq` (batch 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuPlan>,
}

/// The GPU backend's program for a model (`inspect --backend cuda|cuda-sim`): what `emit` writes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuPlan {
    /// Distinct kernels (layers share them) by name, with how many times each is launched.
    pub kernels: BTreeMap<String, usize>,
    pub launches: usize,
    /// Matrix products handed to the library.
    pub products: usize,
    /// Softmax attention layers fused into one kernel (scores never stored).
    pub fused_attention: usize,
    pub arena_bytes: usize,
    pub scratch_bytes: usize,
}

/// The GPU program of `model` at `seq` tokens (batch 1), described.
pub fn gpu_plan(model: &Model, seq: usize) -> Result<GpuPlan, crate::Error> {
    let (_, p, _) = crate::emit::program(model, 1, seq, crate::emit::Products::Library)?;
    let mut kernels = BTreeMap::new();
    let mut launches = 0;
    let mut products = 0;
    for step in &p.steps {
        match step {
            attnopt_gpu::program::Step::Launch(l) => {
                launches += 1;
                if let Some(k) = p.kernels.get(l.kernel) {
                    *kernels.entry(k.name.clone()).or_insert(0) += 1;
                }
            }
            attnopt_gpu::program::Step::Gemm(_) => products += 1,
        }
    }
    let fused_attention = kernels
        .iter()
        .filter(|(k, _)| k.starts_with("k_attention"))
        .map(|(_, n)| n)
        .sum();
    Ok(GpuPlan {
        kernels,
        launches,
        products,
        fused_attention,
        arena_bytes: p.arena_bytes,
        scratch_bytes: p.scratch_bytes,
    })
}

/// The CPU backend's plan for a model (`inspect --backend cpu`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuPlan {
    pub threads: usize,
    /// The f32 matrix-product library and why it was chosen.
    pub matmul: String,
    pub matmul_reason: String,
    /// What `--precision bf16` would use, and why (`"unavailable"` and the error where the
    /// library asked for cannot run bf16).
    pub bf16_matmul: String,
    pub bf16_reason: String,
    /// Whether the library runs the epilogues it can fuse inside its products.
    pub post_ops: bool,
    /// Whether JIT kernels call the AVX-512 row primitives (asked for and the CPU has them).
    pub row_primitives: bool,
    /// Kernels at `seq` by name (`matmul+epilogue`, `row:layer_norm`, ...) and their count.
    pub kernels: BTreeMap<String, usize>,
    pub arena_bytes: usize,
    /// Lowering, JIT compilation and weight preparation, measured now.
    pub compile_ms: f64,
}

/// Lowers and compiles `model` for the CPU backend at `seq` (batch 1) as `options` say
/// (threads 0: all cores) and describes the result.
pub fn cpu_plan(model: &Model, seq: usize, options: &CpuOptions) -> Result<CpuPlan, crate::Error> {
    let budget = crate::limits::memory_available();
    crate::limits::check_run_size(
        model,
        &attnopt_ir::Bindings::new(1, seq),
        &format!("--seq {seq}"),
        budget,
    )?;
    let mut cpu = attnopt_cpu::CpuModel::with_options(model.graph().clone(), options)?;
    cpu.set_memory_budget(budget);
    let compile = cpu.prepare(1, seq)?;
    let (bf16, bf16_why) = match attnopt_cpu::matmul::best_available_for(
        cpu.threads(),
        attnopt_cpu::matmul::Precision::Bf16,
        options.matmul,
        options.onednn_library.as_deref(),
    ) {
        Ok((m, why)) => (m.name().to_string(), why),
        Err(e) => ("unavailable".to_string(), e.to_string()),
    };
    let mut kernels = BTreeMap::new();
    if let Some(l) = cpu.lowered(1, seq) {
        for k in &l.kernels {
            *kernels.entry(k.name.clone()).or_insert(0) += 1;
        }
    }
    Ok(CpuPlan {
        threads: cpu.threads(),
        matmul: cpu.matmul_name().0.to_string(),
        matmul_reason: cpu.matmul_name().1.to_string(),
        bf16_matmul: bf16,
        bf16_reason: bf16_why,
        post_ops: cpu.post_ops(),
        row_primitives: cpu.row_primitives(),
        kernels,
        arena_bytes: cpu.arena_bytes(1, seq).unwrap_or(0),
        compile_ms: compile.as_secs_f64() * 1e3,
    })
}

/// Inspects `model` at sequence length `seq` (batch 1).
pub fn inspect(model: &Model, seq: usize) -> Inspection {
    let m = model.imported();
    let g = &m.graph;
    let fixed = model.fixed_tokens();
    let has_seq = fixed.is_none();
    let tokens = fixed.unwrap_or(seq);
    let b = Bindings::new(1, seq);
    let total = total_cost(g, &b);
    let attention = attention_layers(g, &b);
    let attn_flops: u64 = attention.iter().map(|a| a.cost.flops).sum();
    let params_by_dtype = m.params_by_dtype();
    Inspection {
        path: m.dir.display().to_string(),
        architecture: m.detection.arch.name(),
        detected_by: m.detection.reason.clone(),
        guesses: m.guesses.clone(),
        dims: m.dims.clone(),
        weight_bytes_per_token: attnopt_lower::lower(g, &Bindings::new(1, 1))
            .map(|l| attnopt_lower::weight_bytes_by_layer(g, &l).values().sum())
            .unwrap_or(0),
        files: m
            .checkpoint
            .files()
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        tensors: m.checkpoint.tensors().len(),
        params_total: params_by_dtype.values().sum(),
        params_by_dtype,
        unused_tensors: m.unused.clone(),
        graph_nodes: g.node_count(),
        inputs: g
            .inputs()
            .iter()
            .map(|(n, id)| format!("{n} {} {}", g.node(*id).ty.shape, g.node(*id).ty.dtype))
            .collect(),
        seq: tokens,
        seq_fixed_by_model: !has_seq,
        // A saturated count divided by the tokens would look like a real number.
        flops_per_token: if total.flops == u64::MAX {
            f64::INFINITY
        } else {
            total.flops as f64 / tokens.max(1) as f64
        },
        attention_flops_fraction: if total.flops == 0 {
            0.0
        } else {
            attn_flops as f64 / total.flops as f64
        },
        attention,
        cpu: None,
        gpu: None,
    }
}

/// Groups digits by thousands: 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// FLOPs with an SI suffix: 1.23 GFLOP.
///
/// Counts are computed with saturating arithmetic, so `u64::MAX` means "too many to count":
/// it is shown as an overflow, never as a number.
pub fn si(x: f64) -> String {
    if x >= u64::MAX as f64 || !x.is_finite() {
        return "overflow (> 1.8e19) ".into();
    }
    let (v, unit) = match x {
        x if x >= 1e12 => (x / 1e12, "T"),
        x if x >= 1e9 => (x / 1e9, "G"),
        x if x >= 1e6 => (x / 1e6, "M"),
        x if x >= 1e3 => (x / 1e3, "k"),
        x => (x, ""),
    };
    format!("{v:.2} {unit}")
}

impl Inspection {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let d = &self.dims;
        let _ = writeln!(s, "model        {}", self.path);
        let _ = writeln!(
            s,
            "architecture {}  ({})",
            self.architecture, self.detected_by
        );
        for g in &self.guesses {
            let _ = writeln!(s, "  guessed:   {g}");
        }
        let mut dims = format!(
            "hidden {}, layers {}, heads {} (kv {}, head dim {}), intermediate {}, activation {}",
            d.hidden, d.layers, d.heads, d.kv_heads, d.head_dim, d.intermediate, d.activation
        );
        if let Some(v) = d.vocab {
            let _ = write!(dims, ", vocab {v}");
        }
        if let Some(p) = d.max_positions {
            let _ = write!(dims, ", positions {p}");
        }
        if let Some((c, img, p)) = d.image {
            let _ = write!(dims, ", image {c}×{img}×{img} in {p}×{p} patches");
        }
        let _ = writeln!(s, "dims         {dims}");
        if let Some(q) = &d.sparse_qkv {
            let _ = writeln!(
                s,
                "sparse QKV   factored over {} modules of {}, convs {}×{} (Q, K) and {}×{} (V), {} (docs/SPARSE.md)",
                q.modules,
                q.module_dim,
                q.length,
                q.qk_width,
                q.length,
                q.v_width,
                if q.output_dense { "dense output projection" } else { "no output projection" }
            );
        }
        if let Some(f) = &d.sparse_ff {
            let _ = writeln!(
                s,
                "sparse FF    one unit of every {} ({} blocks of {} units), controller rank {}",
                f.block,
                f.units / f.block.max(1),
                f.units,
                f.lowrank
            );
        }
        let by: Vec<String> = self
            .params_by_dtype
            .iter()
            .map(|(k, v)| format!("{k} {}", thousands(*v)))
            .collect();
        let _ = writeln!(
            s,
            "parameters   {} ({}) in {} tensors, {} file(s)",
            thousands(self.params_total),
            by.join(", "),
            self.tensors,
            self.files.len()
        );
        if !self.unused_tensors.is_empty() {
            let _ = writeln!(s, "  unused:    {}", self.unused_tensors.join(", "));
        }
        let _ = writeln!(s, "inputs       {}", self.inputs.join("; "));
        let seq_note = if self.seq_fixed_by_model {
            " (fixed by the model)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "compute      {}FLOP per token at {} tokens{seq_note}; attention {:.1}% of FLOPs; {} graph nodes",
            si(self.flops_per_token),
            self.seq,
            100.0 * self.attention_flops_fraction,
            self.graph_nodes
        );
        let _ = writeln!(
            s,
            "weights      {}B read per token (batch 1: what bounds decoding)",
            si(self.weight_bytes_per_token as f64)
        );
        let _ = writeln!(
            s,
            "\nlayer  attention  heads  kv  head_dim  causal  padding  rope  attention FLOPs"
        );
        for a in &self.attention {
            let opt = |x: Option<usize>| x.map_or("?".to_string(), |v| v.to_string());
            let yn = |b: bool| if b { "yes" } else { "no" };
            let _ = writeln!(
                s,
                "{:>5}  {:9}  {:>5}  {:>2}  {:>8}  {:>6}  {:>7}  {:>4}  {:>14}",
                a.layer,
                a.kind,
                opt(a.heads),
                opt(a.kv_heads),
                opt(a.head_dim),
                yn(a.causal),
                yn(a.padding_mask),
                yn(a.rope),
                format!("{}FLOP", si(a.cost.flops as f64))
            );
        }
        if let Some(c) = &self.cpu {
            let _ = writeln!(
                s,
                "\nCPU backend ({} threads, batch 1, {} tokens)",
                c.threads, self.seq
            );
            let _ = writeln!(s, "  matrix products  {} ({})", c.matmul, c.matmul_reason);
            let _ = writeln!(
                s,
                "  with bf16        {} ({})",
                c.bf16_matmul, c.bf16_reason
            );
            let on = |b: bool| if b { "on" } else { "off" };
            let _ = writeln!(
                s,
                "  post-ops         {}; AVX-512 row primitives {}",
                on(c.post_ops),
                on(c.row_primitives)
            );
            let ks: Vec<String> = c.kernels.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            let _ = writeln!(
                s,
                "  kernels          {} in all: {}",
                c.kernels.values().sum::<usize>(),
                ks.join(", ")
            );
            let _ = writeln!(
                s,
                "  arena            {}B; compile (lower + JIT + weight preparation) {:.1} ms",
                si(c.arena_bytes as f64),
                c.compile_ms
            );
        }
        if let Some(g) = &self.gpu {
            let _ = writeln!(
                s,
                "\nGPU backend (batch 1, {} tokens; `attnopt emit` writes it)",
                self.seq
            );
            let _ = writeln!(
                s,
                "  launches         {} of {} distinct kernels; {} matrix products; {} attention layers fused",
                g.launches,
                g.kernels.len(),
                g.products,
                g.fused_attention
            );
            let ks: Vec<String> = g.kernels.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            let _ = writeln!(s, "  kernels          {}", ks.join(", "));
            let _ = writeln!(
                s,
                "  arena            {}B; scratch {}B",
                si(g.arena_bytes as f64),
                si(g.scratch_bytes as f64)
            );
        }
        s
    }
}
