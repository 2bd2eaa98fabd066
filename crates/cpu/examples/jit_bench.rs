//! JIT row kernels by hand: compile time per kernel and single-thread throughput.
//!
//! `cargo run -p attnopt-cpu --release --example jit_bench [-- --unroll N]`
//!
//! GB/s = (bytes read + bytes written) / time, counting each tensor input and the output once
//! (per-row vectors — bias, γ, β, the mask — are cache-resident and not counted).
//! Kernels: bias + GELU (erf) and residual + LayerNorm on rows of 768, masked scaled softmax on
//! rows of 128; 128 and 8192 rows; `run_rows_serial`, so one thread. Softmax runs twice: as
//! compiled by default (its exp pass a call to the AVX-512 row primitive where the CPU has
//! avx512f) and with the f32x4 code forced (`row_primitives: false`).

use std::time::{Duration, Instant};

use attnopt_cpu::jit::{
    BinaryOp, Expr, InputKind, JitModule, JitOptions, ReduceKind, Reduction, RowProgram, UnaryOp,
    Valid,
};

fn bin(op: BinaryOp, a: Expr, b: Expr) -> Expr {
    Expr::bin(op, a, b)
}

fn bias_gelu() -> RowProgram {
    RowProgram::elementwise(
        vec![InputKind::Rows, InputKind::Vector],
        Expr::un(
            UnaryOp::Gelu,
            bin(BinaryOp::Add, Expr::Input(0), Expr::Input(1)),
        ),
    )
}

fn residual_layer_norm() -> RowProgram {
    let h = || bin(BinaryOp::Add, Expr::Input(0), Expr::Input(1));
    let centred = || {
        bin(
            BinaryOp::Sub,
            h(),
            bin(BinaryOp::Mul, Expr::Reduced(0), Expr::Param(1)),
        )
    };
    let var = bin(BinaryOp::Mul, Expr::Reduced(1), Expr::Param(1));
    let inv = Expr::un(
        UnaryOp::Recip,
        Expr::un(UnaryOp::Sqrt, bin(BinaryOp::Add, var, Expr::Param(0))),
    );
    RowProgram {
        inputs: vec![
            InputKind::Rows,
            InputKind::Rows,
            InputKind::Vector,
            InputKind::Vector,
        ],
        params: 2,
        reductions: vec![
            Reduction {
                kind: ReduceKind::Sum,
                expr: h(),
            },
            Reduction {
                kind: ReduceKind::Sum,
                expr: Expr::un(UnaryOp::Square, centred()),
            },
        ],
        output: bin(
            BinaryOp::Add,
            bin(
                BinaryOp::Mul,
                bin(BinaryOp::Mul, centred(), inv),
                Expr::Input(2),
            ),
            Expr::Input(3),
        ),
        fill: 0.0,
        zero_if_all_masked: false,
    }
}

fn softmax(rows_per_group: usize) -> RowProgram {
    let x = bin(
        BinaryOp::Add,
        bin(BinaryOp::Mul, Expr::Input(0), Expr::Param(0)),
        Expr::Input(1),
    );
    RowProgram::softmax(
        vec![InputKind::Rows, InputKind::GroupVector { rows_per_group }],
        1,
        x,
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median time of `f` over batches lasting ≥ 20 ms each (7 batches).
fn time(mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_nanos(100));
    let reps = (Duration::from_millis(20).as_nanos() / once.as_nanos()).max(1) as u32;
    median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                t.elapsed() / reps
            })
            .collect(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let unroll = args
        .iter()
        .position(|a| a == "--unroll")
        .map(|i| args[i + 1].parse::<usize>().expect("--unroll N"));
    let options = JitOptions {
        unroll,
        ..JitOptions::default()
    };
    println!("options: {options:?}");
    println!(
        "row primitives: {}",
        JitModule::with_options(options).unwrap().row_primitives()
    );

    println!("\n| kernel | compile median (20×), verifier off | verifier on |");
    println!("|---|---|---|");
    let programs: [(&str, RowProgram); 3] = [
        ("bias+GELU(erf)", bias_gelu()),
        ("residual+LayerNorm", residual_layer_norm()),
        ("masked softmax", softmax(128)),
    ];
    for (name, p) in &programs {
        let ms = |verifier: bool| {
            // A fresh module each time: a module compiles a program once and then reuses it.
            let times: Vec<Duration> = (0..20)
                .map(|_| {
                    let mut m = JitModule::with_options(JitOptions {
                        verifier,
                        ..options
                    })
                    .unwrap();
                    m.compile(p).unwrap().compile_time()
                })
                .collect();
            median(times).as_secs_f64() * 1e3
        };
        println!("| {name} | {:.2} ms | {:.2} ms |", ms(false), ms(true));
    }

    println!("\n| kernel | d | rows | time per call | GB/s | ns/element |");
    println!("|---|---|---|---|---|---|");
    let mut m = JitModule::with_options(options).unwrap();
    let mut m4 = JitModule::with_options(JitOptions {
        row_primitives: false,
        ..options
    })
    .unwrap();
    let gelu = m.compile(&bias_gelu()).unwrap();
    let ln = m.compile(&residual_layer_norm()).unwrap();
    for rows in [128, 8192] {
        let d = 768;
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect();
        let r: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let v: Vec<f32> = (0..d).map(|i| (i % 13) as f32 / 13.0).collect();
        let mut out = vec![0.0f32; rows * d];
        let report = |name: &str, t: Duration, bytes_per_elem: usize, d: usize| {
            let n = (rows * d) as f64;
            println!(
                "| {name} | {d} | {rows} | {:.1} µs | {:.2} | {:.2} |",
                t.as_secs_f64() * 1e6,
                n * bytes_per_elem as f64 / t.as_secs_f64() / 1e9,
                t.as_secs_f64() * 1e9 / n
            );
        };
        let t = time(|| {
            gelu.run_rows_serial(&[&x, &v], &mut out, d, Valid::Full, &[])
                .unwrap()
        });
        report("bias+GELU(erf)", t, 8, d);
        let params = [1e-12, 1.0 / d as f32];
        let t = time(|| {
            ln.run_rows_serial(&[&x, &r, &v, &v], &mut out, d, Valid::Full, &params)
                .unwrap()
        });
        report("residual+LayerNorm", t, 12, d);

        let d = 128;
        let s = &x[..rows * d];
        let mask = vec![0.0f32; d];
        let mut out = vec![0.0f32; rows * d];
        for (module, path) in [(&mut m, ""), (&mut m4, ", f32x4")] {
            let sm = module.compile(&softmax(rows)).unwrap();
            let t = time(|| {
                sm.run_rows_serial(&[s, &mask], &mut out, d, Valid::Full, &[0.125])
                    .unwrap()
            });
            report(&format!("masked softmax{path}"), t, 8, d);
            let causal = Valid::Causal {
                queries: 128,
                offset: 0,
            };
            let t = time(|| {
                sm.run_rows_serial(&[s, &mask], &mut out, d, causal, &[0.125])
                    .unwrap()
            });
            report(&format!("softmax, causal{path}"), t, 8, d);
        }
    }
}
