//! Scaling Transformers' sparse layers against the dense layers they replace, as ratios in one
//! run (docs/SPARSE.md; results in docs/BENCHMARKS.md). Run by hand:
//!
//! ```text
//! cargo run --release --example sparse_bench -- [ROUNDS=15] [THREADS=2] [all|qkv|ff|decoder] [profile]
//! ```
//!
//! With `profile`, each comparison also prints where the sparse model's time goes (per kernel
//! name, one profiled run).
//!
//! Weights are cold, as in a real model: each comparison is a stack of blocks run in sequence
//! (24 for the layer comparisons, 12 in the decoder), so no block's weights stay in cache from
//! one run to the next. Random weights (seeded), f32 and bf16, both graphs exactly optimised
//! first as `attnopt optimize` would. Dense and sparse models are timed in alternating rounds,
//! so machine noise hits both alike; the median of each is printed with the ratio.
//!
//! * `qkv`: pre-norm residual blocks whose attention takes Q, K, V from dense `[d, d]` products
//!   and ends with a dense output product, against the sparse QKV block (one `FactoredDense`
//!   shared by Q, K, V, three local convolutions, no output product); d = 1024, S = 16, 16 heads,
//!   at 1 token and at 128;
//! * `ff`: dense ReLU feed-forward `d → 4d → d` against the sparse FF (N = 32, controller rank
//!   128 = d_ff/N), d = 1024, at 1 token and at 128;
//! * `decoder`: a 12-layer d = 1024 GPT-2-style decoder with both against the dense one
//!   (vocabulary 32000, untied LM head), a full forward at one token (decoding does not exist
//!   yet).

use std::collections::HashMap;
use std::time::Instant;

use attnopt_cpu::matmul::Precision;
use attnopt_cpu::CpuModel;
use attnopt_ir::builder::{Attention, AttentionKind, Builder, WeightLayout::InOut};
use attnopt_ir::sparse::{LocalConv, SparseFf};
use attnopt_ir::{DType, Dim, Graph, NodeId, Role, Shape, Tensor, Unary, Weight, BATCH, SEQ};
use attnopt_rewrite::{optimize, Options, RuleSet};

const D: usize = 1024;
const HEADS: usize = 16;
const MODULES: usize = 16;
const FF: usize = 4 * D;
const BLOCK: usize = 32;
const LOWRANK: usize = FF / BLOCK;
const VOCAB: usize = 32000;

/// Builds graphs with seeded random weights scaled by `1/√fan_in`.
struct Gen {
    b: Builder,
    rng: attnopt_ir::rng::Rng,
    count: usize,
}

impl Gen {
    fn new() -> Gen {
        Gen {
            b: Builder::new(),
            rng: attnopt_ir::rng::Rng::new(2026),
            count: 0,
        }
    }

    fn w(&mut self, shape: &[usize], fan_in: usize) -> NodeId {
        let n = shape.iter().product();
        let s = 1.0 / (fan_in as f32).sqrt();
        let v = self.rng.values(n, -s, s);
        self.count += 1;
        let w = Weight::from_f32(format!("w{}", self.count), shape.to_vec(), &v).unwrap();
        self.b.graph.weight(w)
    }

    fn ones(&mut self, n: usize) -> NodeId {
        self.count += 1;
        let w = Weight::from_f32(format!("w{}", self.count), vec![n], &vec![1.0; n]).unwrap();
        self.b.graph.weight(w)
    }

    fn zeros(&mut self, n: usize) -> NodeId {
        self.count += 1;
        let w = Weight::from_f32(format!("w{}", self.count), vec![n], &vec![0.0; n]).unwrap();
        self.b.graph.weight(w)
    }

    fn norm(&mut self, x: NodeId) -> NodeId {
        let (g, b) = (self.ones(D), self.zeros(D));
        self.b.layer_norm(x, g, b, 1e-5, Role::Norm).unwrap()
    }

    /// Causal softmax attention over `q, k, v [B, N, d]`.
    fn attention(&mut self, q: NodeId, k: NodeId, v: NodeId) -> NodeId {
        let spec = Attention {
            kind: AttentionKind::Softmax,
            heads: HEADS,
            kv_heads: HEADS,
            head_dim: D / HEADS,
            causal: true,
            padding_mask: None,
            rope: None,
            scale: 1.0 / ((D / HEADS) as f32).sqrt(),
        };
        self.b.attention(q, k, v, &spec).unwrap()
    }

    /// `x + attn(LN(x))` with dense Q/K/V/O products, or the sparse QKV block.
    fn attention_block(&mut self, x: NodeId, sparse: bool) -> NodeId {
        let h = self.norm(x);
        let a = if sparse {
            let m = D / MODULES;
            let (g, p, bias) = (self.w(&[MODULES, D], 1), self.w(&[D, m], D), self.zeros(D));
            let u = self
                .b
                .factored_dense(h, g, p, bias, (MODULES, m), Role::QkvProj)
                .unwrap();
            let mut qkv = [h; 3];
            for (o, width) in qkv.iter_mut().zip([3, 3, 1]) {
                let c = LocalConv {
                    kernel: self.w(&[3, width, m, m], 3 * width * m),
                    bias: self.zeros(m),
                    length: 3,
                    width,
                };
                let y = self.b.local_conv(u, &c, (m, m), Role::QProj).unwrap();
                *o = self.b.merge_modules(y, D, Role::QProj).unwrap();
            }
            self.attention(qkv[0], qkv[1], qkv[2])
        } else {
            let mut qkv = [h; 3];
            for o in qkv.iter_mut() {
                let w = self.w(&[D, D], D);
                *o = self.b.linear(h, w, None, InOut, Role::QProj).unwrap();
            }
            let c = self.attention(qkv[0], qkv[1], qkv[2]);
            let wo = self.w(&[D, D], D);
            self.b
                .linear(c, wo, None, InOut, Role::AttnOutProj)
                .unwrap()
        };
        self.b.add(x, a, Role::Residual).unwrap()
    }

    /// `x + ff(LN(x))`: dense ReLU `d → 4d → d`, or the sparse FF.
    fn ff_block(&mut self, x: NodeId, sparse: bool) -> NodeId {
        let h = self.norm(x);
        let o = if sparse {
            let xb = FF / BLOCK;
            let f = SparseFf {
                m1: self.w(&[D, LOWRANK], D),
                m2: self.w(&[LOWRANK, xb, BLOCK], LOWRANK),
                mb: self.w(&[xb, BLOCK], 1),
                w1: self.w(&[D, xb, BLOCK], D),
                w2: self.w(&[BLOCK, xb, D], xb),
                b2: Some(self.zeros(D)),
                b1: None,
                act: attnopt::ir::Unary::Relu,
                block: BLOCK,
                units: FF,
                lowrank: LOWRANK,
            };
            self.b.sparse_ff(h, &f, D).unwrap()
        } else {
            let (w1, b1) = (self.w(&[D, FF], D), self.zeros(FF));
            let (w2, b2) = (self.w(&[FF, D], FF), self.zeros(D));
            self.b
                .mlp(h, (w1, Some(b1)), Unary::Relu, (w2, Some(b2)), InOut)
                .unwrap()
        };
        self.b.add(x, o, Role::Residual).unwrap()
    }

    fn finish(mut self, y: NodeId) -> Graph {
        self.b.graph.set_output("y", y).unwrap();
        self.b.finish()
    }
}

/// `blocks` blocks over an input `x [B, N, d]`.
fn stack(blocks: usize, block: impl Fn(&mut Gen, NodeId) -> NodeId) -> Graph {
    let mut g = Gen::new();
    let shape = Shape(vec![BATCH, SEQ, Dim::Fixed(D)]);
    let mut x = g.b.graph.input("x", DType::F32, shape).unwrap();
    for i in 0..blocks {
        g.b.set_layer(Some(i as u32));
        x = block(&mut g, x);
    }
    g.b.set_layer(None);
    g.finish(x)
}

/// A 12-layer decoder (embeddings, pre-norm blocks, final norm, untied LM head).
fn decoder(sparse: bool) -> Graph {
    let mut g = Gen::new();
    let ids =
        g.b.graph
            .input("input_ids", DType::I64, Shape(vec![BATCH, SEQ]))
            .unwrap();
    let wte = g.w(&[VOCAB, D], 1);
    let mut x =
        g.b.op(attnopt_ir::Op::Gather, &[wte, ids], Role::Embedding)
            .unwrap();
    for i in 0..12 {
        g.b.set_layer(Some(i));
        x = g.attention_block(x, sparse);
        x = g.ff_block(x, sparse);
    }
    g.b.set_layer(None);
    let h = g.norm(x);
    let head = g.w(&[D, VOCAB], D);
    let logits = g.b.linear(h, head, None, InOut, Role::Other).unwrap();
    g.finish(logits)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Weight bytes (f32) a graph holds.
fn weight_bytes(g: &Graph) -> usize {
    g.weights().iter().map(|w| w.numel() * 4).sum()
}

/// Times the dense and the sparse graph in alternating rounds at `tokens`, f32 and bf16.
fn compare(
    label: &str,
    dense: &Graph,
    sparse: &Graph,
    tokens: usize,
    (rounds, threads, profile): (usize, usize, bool),
) {
    let feed = |g: &Graph| -> HashMap<String, Tensor> {
        let (name, id) = &g.inputs()[0];
        let t = match g.node(*id).ty.dtype {
            DType::I64 => Tensor::i64(vec![1, tokens], (0..tokens as i64).collect()),
            _ => Tensor::f32(
                vec![1, tokens, D],
                attnopt_ir::rng::Rng::new(7).values(tokens * D, -1.0, 1.0),
            ),
        }
        .unwrap();
        HashMap::from([(name.clone(), t)])
    };
    for precision in [Precision::F32, Precision::Bf16] {
        let mut models: Vec<CpuModel> = [dense, sparse]
            .iter()
            .map(|g| CpuModel::with_precision((*g).clone(), threads, precision).unwrap())
            .collect();
        let feeds = [feed(dense), feed(sparse)];
        for (m, f) in models.iter_mut().zip(&feeds) {
            m.run(f, &[], false).unwrap();
        }
        let mut times = [vec![], vec![]];
        for _ in 0..rounds {
            for (i, (m, f)) in models.iter_mut().zip(&feeds).enumerate() {
                let t = Instant::now();
                m.run(f, &[], false).unwrap();
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let [td, ts] = times.map(|mut t| median(&mut t));
        println!(
            "{label:8} {tokens:4} tok {:5}  dense {td:9.3} ms  sparse {ts:9.3} ms  dense/sparse {:6.2}x  ({} vs {} MB of f32 weights, {})",
            format!("{precision:?}").to_lowercase(),
            td / ts,
            weight_bytes(dense) >> 20,
            weight_bytes(sparse) >> 20,
            models[0].matmul_name().0,
        );
        if profile {
            // Per kernel name: the median over `rounds` profiled runs of its total.
            let mut by: HashMap<String, (Vec<f64>, usize)> = HashMap::new();
            for _ in 0..rounds {
                let (_, times) = models[1].run(&feeds[1], &[], true).unwrap();
                let mut run: HashMap<&str, (f64, usize)> = HashMap::new();
                for k in &times {
                    let e = run.entry(k.name.as_str()).or_default();
                    e.0 += k.seconds * 1e3;
                    e.1 += 1;
                }
                for (name, (ms, n)) in run {
                    let e = by.entry(name.to_string()).or_default();
                    e.0.push(ms);
                    e.1 = n;
                }
            }
            let mut by: Vec<(String, f64, usize)> = by
                .into_iter()
                .map(|(name, (mut v, n))| (name, median(&mut v), n))
                .collect();
            by.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (name, ms, n) in by.iter().take(8) {
                println!("    {name:28} {ms:9.3} ms in {n} kernels");
            }
        }
    }
}

fn optimised(g: Graph) -> Graph {
    let rules = RuleSet::embedded().unwrap();
    optimize(&g, &Options::exact(&rules, 128)).unwrap().graph
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let which = args.next().unwrap_or_else(|| "all".into());
    let want = |w: &str| which == "all" || which == w;
    let run = (rounds, threads, args.next().as_deref() == Some("profile"));
    println!("rounds {rounds}, threads {threads}; median ms per forward");
    if want("qkv") {
        let dense = optimised(stack(24, |g, x| g.attention_block(x, false)));
        let sparse = optimised(stack(24, |g, x| g.attention_block(x, true)));
        for tokens in [1, 128] {
            compare("qkv x24", &dense, &sparse, tokens, run);
        }
    }
    if want("ff") {
        let dense = optimised(stack(24, |g, x| g.ff_block(x, false)));
        let sparse = optimised(stack(24, |g, x| g.ff_block(x, true)));
        for tokens in [1, 128] {
            compare("ff x24", &dense, &sparse, tokens, run);
        }
    }
    if want("decoder") {
        let (dense, sparse) = (optimised(decoder(false)), optimised(decoder(true)));
        compare("decoder", &dense, &sparse, 1, run);
    }
}
