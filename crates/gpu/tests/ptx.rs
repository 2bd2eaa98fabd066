//! The printed CUDA C compiles: hand-built kernels covering every statement, expression,
//! operator and type of the kernel IR are printed and compiled to PTX by Debian's clang-19
//! without the CUDA toolkit (`-nocudainc -nocudalib`, the prelude standing in for the headers).
//!
//! Without clang-19 these tests print a skip line and pass, unless `ATTNOPT_REQUIRE_CLANG=1`
//! (CI), then they fail. The refusals of malformed kernels need no compiler.

use std::path::Path;
use std::process::Command;

use attnopt_gpu::cuda::{self, PRELUDE_NAME};
use attnopt_gpu::kir::{
    BinOp, Expr, GpuKernel, Param, Scalar, Shared, Special, Stmt, UnOp, Var, WARP,
};

const CLANG: &str = "clang-19";

/// Whether clang-19 runs; if not, a skip line (or a failure when `ATTNOPT_REQUIRE_CLANG=1`).
fn have_clang(test: &str) -> bool {
    let ok = Command::new(CLANG)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("ATTNOPT_REQUIRE_CLANG").as_deref() != Ok("1"),
            "{CLANG} is not installed and ATTNOPT_REQUIRE_CLANG=1"
        );
        eprintln!("SKIPPED {test}: no {CLANG} to compile the printed CUDA C with");
    }
    ok
}

/// Compiles `dir/file` (CUDA C) to PTX for sm_90 with clang-19 and no CUDA installation,
/// `dir` on the include path; the PTX text, or clang's diagnostics.
fn compile_ptx(dir: &Path, file: &str) -> Result<String, String> {
    compile_ptx_with(dir, file, &[])
}

fn compile_ptx_with(dir: &Path, file: &str, extra: &[&str]) -> Result<String, String> {
    let tag: String = extra
        .concat()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let out = dir.join(format!("{file}{tag}.ptx"));
    let o = Command::new(CLANG)
        .args([
            "--cuda-device-only",
            "-nocudainc",
            "-nocudalib",
            "--cuda-gpu-arch=sm_90",
            "-S",
            "-x",
            "cuda",
            "-Werror",
        ])
        .args(extra)
        .arg("-I")
        .arg(dir)
        .arg("-o")
        .arg(&out)
        .arg(dir.join(file))
        .output()
        .map_err(|e| format!("running {CLANG}: {e}"))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    std::fs::read_to_string(&out).map_err(|e| format!("reading {}: {e}", out.display()))
}

/// Prints `k` into `dir` (with the prelude) and compiles it at -O0 and -O3: both PTX texts,
/// each checked to define the kernel's entry point.
fn print_and_compile(dir: &Path, k: &GpuKernel) -> [String; 2] {
    std::fs::write(dir.join(PRELUDE_NAME), cuda::prelude()).unwrap();
    let src = cuda::print(k).unwrap();
    let file = format!("{}.cu", k.name);
    std::fs::write(dir.join(&file), &src).unwrap();
    let compile = |extra: &[&str]| {
        let ptx = compile_ptx_with(dir, &file, extra)
            .unwrap_or_else(|e| panic!("{file} {extra:?} does not compile:\n{e}\n{src}"));
        assert!(
            ptx.contains(&format!(".entry {}(", k.name)),
            "no `.entry {}` in the PTX of {file}:\n{ptx}",
            k.name
        );
        ptx
    };
    [compile(&[]), compile(&["-O3"])]
}

fn param(name: &str, elem: Scalar, writes: bool) -> Param {
    Param {
        name: name.into(),
        elem,
        writes,
    }
}

fn kernel(name: &str, params: Vec<Param>, vars: Vec<Scalar>, body: Vec<Stmt>) -> GpuKernel {
    GpuKernel {
        name: name.into(),
        doc: vec![format!("test kernel {name}")],
        params,
        vars,
        shared: vec![],
        grid: [2, 3],
        block: 64,
        body,
    }
}

fn v(i: u32) -> Expr {
    Expr::Var(Var(i))
}
fn f(x: f32) -> Expr {
    Expr::F32(x)
}
fn i(x: i64) -> Expr {
    Expr::I64(x)
}
fn tid() -> Expr {
    Expr::Special(Special::Thread)
}
fn assign(var: u32, value: Expr) -> Stmt {
    Stmt::Assign {
        var: Var(var),
        value,
    }
}
fn store(param: usize, index: Expr, value: Expr) -> Stmt {
    Stmt::Store {
        param,
        index,
        value,
    }
}

/// Every unary and binary operator on every type it takes, every special, loads of both types,
/// `Select` of both types, conditions from comparisons and from plain integers.
fn all_ops() -> GpuKernel {
    // Vars: 0, 1 F32; 2, 3 I64.
    let (xf, xi, of, oi) = (0, 1, 2, 3);
    let fa = || Expr::load(xf, tid());
    let fb = || Expr::load(xf, tid().add(i(64)));
    let ia = || Expr::load(xi, tid());
    let ib = || Expr::load(xi, tid().add(i(64)));
    let mut body = vec![];
    let mut slot = 0i64;
    let mut out = |body: &mut Vec<Stmt>, e: Expr, t: Scalar| {
        let index = tid().mul(i(64)).add(i(slot));
        slot += 1;
        body.push(match t {
            Scalar::F32 => store(of, index, e),
            Scalar::I64 => store(oi, index, e),
        });
    };
    for op in [
        UnOp::Neg,
        UnOp::Abs,
        UnOp::Exp,
        UnOp::Sqrt,
        UnOp::Tanh,
        UnOp::Erf,
    ] {
        out(&mut body, Expr::un(op, fa()), Scalar::F32);
    }
    for op in [UnOp::Neg, UnOp::Abs] {
        out(&mut body, Expr::un(op, ia()), Scalar::I64);
    }
    out(&mut body, Expr::un(UnOp::ToF32, ia()), Scalar::F32);
    out(&mut body, Expr::un(UnOp::ToI64, fa()), Scalar::I64);
    use BinOp::*;
    for op in [Add, Sub, Mul, Div, Max, Min] {
        out(&mut body, Expr::bin(op, fa(), fb()), Scalar::F32);
    }
    for op in [Add, Sub, Mul, Div, Rem, Max, Min, And, Or] {
        out(&mut body, Expr::bin(op, ia(), ib()), Scalar::I64);
    }
    for op in [Lt, Le, Eq, Ne] {
        out(&mut body, Expr::bin(op, fa(), fb()), Scalar::I64);
        out(&mut body, Expr::bin(op, ia(), ib()), Scalar::I64);
    }
    for s in [
        Special::Thread,
        Special::BlockX,
        Special::BlockY,
        Special::BlockDim,
        Special::GridX,
        Special::GridY,
    ] {
        out(&mut body, Expr::Special(s), Scalar::I64);
    }
    // A guarded load (only the chosen arm runs), selects of both types, conditions.
    let guarded = Expr::select(tid().lt(i(10)), Expr::load(xf, tid().add(i(100))), f(0.0));
    out(&mut body, guarded, Scalar::F32);
    out(&mut body, Expr::select(ia(), ib(), i(-1)), Scalar::I64);
    body.push(assign(0, fa()));
    body.push(assign(2, ia()));
    body.push(Stmt::If {
        cond: v(2),
        then: vec![assign(1, Expr::un(UnOp::Neg, v(0)))],
        els: vec![],
    });
    body.push(Stmt::If {
        cond: Expr::bin(And, v(2).lt(i(5)), Expr::bin(Or, v(3), i(0))),
        then: vec![],
        els: vec![assign(3, v(2).div(i(-1)))],
    });
    // Nested comparisons and arithmetic as operands.
    let nested = Expr::bin(Eq, v(2).lt(v(3)), Expr::bin(Ne, v(0), v(1)));
    out(&mut body, nested.sub(i(1)).rem(i(7)), Scalar::I64);
    out(&mut body, v(0).mul(v(1)).add(f(1.0)), Scalar::F32);
    kernel(
        "all_ops",
        vec![
            param("xf", Scalar::F32, false),
            param("xi", Scalar::I64, false),
            param("of", Scalar::F32, true),
            param("oi", Scalar::I64, true),
        ],
        vec![Scalar::F32, Scalar::F32, Scalar::I64, Scalar::I64],
        body,
    )
}

/// Shared arrays of both types, barriers, shuffles of both types (a warp reduction).
fn shared_shuffle() -> GpuKernel {
    // Vars: 0 F32, 1 I64, 2 F32 (shuffled), 3 I64 (shuffled).
    let mut body = vec![
        assign(0, Expr::load(0, tid())),
        assign(1, tid().mul(i(3))),
        Stmt::StoreShared {
            array: 0,
            index: tid(),
            value: v(0),
        },
        Stmt::StoreShared {
            array: 1,
            index: tid(),
            value: v(1),
        },
        Stmt::SyncThreads,
        assign(0, Expr::load_shared(0, i(63).sub(tid()))),
        assign(1, Expr::load_shared(1, i(63).sub(tid()))),
    ];
    let mut m = WARP / 2;
    while m > 0 {
        body.push(Stmt::ShflXor {
            dst: Var(2),
            src: Var(0),
            lane_mask: m,
        });
        body.push(assign(0, v(0).add(v(2))));
        body.push(Stmt::ShflXor {
            dst: Var(3),
            src: Var(1),
            lane_mask: m,
        });
        body.push(assign(1, v(1).add(v(3))));
        m /= 2;
    }
    body.push(Stmt::SyncThreads);
    body.push(store(1, tid(), v(0)));
    body.push(store(2, tid(), v(1)));
    let mut k = kernel(
        "shared_shuffle",
        vec![
            param("x", Scalar::F32, false),
            param("sum", Scalar::F32, true),
            param("isum", Scalar::I64, true),
        ],
        vec![Scalar::F32, Scalar::I64, Scalar::F32, Scalar::I64],
        body,
    );
    k.shared = vec![
        Shared {
            elem: Scalar::F32,
            len: 64,
        },
        Shared {
            elem: Scalar::I64,
            len: 64,
        },
        Shared {
            elem: Scalar::F32,
            len: 0,
        },
    ];
    k
}

/// Loops three deep (the inner bounds depending on the outer variables), inside `If`/else
/// branches, with block-strided loops and a loop after a loop.
fn nested_loops() -> GpuKernel {
    // Vars: 0, 1, 2 I64 (loop variables), 3 F32 (accumulator).
    let inner = Stmt::For {
        var: Var(2),
        start: v(1),
        end: v(1).add(i(4)),
        step: i(1),
        body: vec![assign(
            3,
            v(3).add(Expr::load(0, v(0).mul(i(16)).add(v(2)).rem(i(256)))),
        )],
    };
    let middle = Stmt::For {
        var: Var(1),
        start: i(0),
        end: v(0).add(i(3)),
        step: i(2),
        body: vec![inner],
    };
    let outer = Stmt::For {
        var: Var(0),
        start: tid(),
        end: i(256),
        step: Expr::Special(Special::BlockDim),
        body: vec![
            Stmt::If {
                cond: v(0).rem(i(2)),
                then: vec![middle.clone()],
                els: vec![assign(3, v(3).sub(f(1.0)))],
            },
            store(1, v(0), v(3)),
        ],
    };
    let after = Stmt::For {
        var: Var(1),
        start: i(i64::MAX - 1),
        end: i(i64::MAX),
        step: i(i64::MAX),
        body: vec![assign(3, f(0.5))],
    };
    kernel(
        "nested_loops",
        vec![
            param("x", Scalar::F32, false),
            param("y", Scalar::F32, true),
        ],
        vec![Scalar::I64, Scalar::I64, Scalar::I64, Scalar::F32],
        vec![outer, after],
    )
}

/// Special and awkward constants of both types.
const F32_CONSTANTS: &[f32] = &[
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    -0.0,
    0.0,
    1.0,
    -1.5,
    0.1,
    1e30,
    f32::MAX,
    f32::MIN,
    f32::MIN_POSITIVE,
    f32::EPSILON,
    1e-45,  // the smallest subnormal
    -3e-39, // a negative subnormal
];

fn constants() -> GpuKernel {
    let mut body = vec![];
    for (n, &x) in F32_CONSTANTS.iter().enumerate() {
        body.push(store(0, i(n as i64), f(x)));
    }
    let nans = [0x7fc0_0001u32, 0xffc0_0000, 0x7f80_0001, 0x7fff_ffff];
    for (n, &b) in nans.iter().enumerate() {
        body.push(store(0, i(100 + n as i64), f(f32::from_bits(b))));
    }
    for (n, x) in [i64::MIN, i64::MAX, -1, 0, 1, i64::MIN + 1]
        .into_iter()
        .enumerate()
    {
        body.push(store(1, i(n as i64), i(x)));
    }
    // A subtraction of a negative constant, and its negation (no `--` token).
    body.push(store(0, i(200), f(1.0).sub(f(-2.0))));
    body.push(store(0, i(201), Expr::un(UnOp::Neg, f(-2.0))));
    body.push(store(1, i(202), Expr::un(UnOp::Neg, i(-2))));
    kernel(
        "constants",
        vec![
            param("out_f", Scalar::F32, true),
            param("out_i", Scalar::I64, true),
        ],
        vec![],
        body,
    )
}

#[test]
fn every_construct_compiles_to_ptx() {
    if !have_clang("every_construct_compiles_to_ptx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for k in [all_ops(), shared_shuffle(), nested_loops(), constants()] {
        print_and_compile(dir.path(), &k);
    }
}

#[test]
fn compile_ptx_reports_errors() {
    if !have_clang("compile_ptx_reports_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.cu"), "this is not CUDA C").unwrap();
    assert!(compile_ptx(dir.path(), "bad.cu").is_err());
}

#[test]
fn barriers_and_shuffles_reach_the_ptx() {
    if !have_clang("barriers_and_shuffles_reach_the_ptx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for ptx in print_and_compile(dir.path(), &shared_shuffle()) {
        assert!(ptx.contains("bar.sync"), "no bar.sync:\n{ptx}");
        // Three 32-bit shuffles per step: one for the f32, two for the i64's halves.
        assert!(
            ptx.matches("shfl.sync.bfly.b32").count() >= 3 * 5,
            "too few shfl.sync.bfly:\n{ptx}"
        );
        assert!(ptx.contains(".shared"), "no shared memory:\n{ptx}");
    }
}

/// The f32 product is never fused into an FMA (the simulator rounds the product first), even
/// when optimizing, and the math functions are libdevice's.
#[test]
fn products_are_not_fused() {
    if !have_clang("products_are_not_fused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = kernel(
        "mul_add",
        vec![
            param("x", Scalar::F32, false),
            param("y", Scalar::F32, true),
        ],
        vec![Scalar::F32],
        vec![
            assign(
                0,
                Expr::load(0, tid())
                    .mul(Expr::load(0, tid().add(i(64))))
                    .add(Expr::load(0, tid().add(i(128)))),
            ),
            store(1, tid(), v(0).sub(v(0).mul(f(3.0)))),
            store(1, tid().add(i(64)), Expr::un(UnOp::Exp, v(0))),
        ],
    );
    for ptx in print_and_compile(dir.path(), &k) {
        assert!(!ptx.contains("fma."), "a fused multiply-add:\n{ptx}");
        assert!(ptx.contains("mul.rn.f32"), "no mul.rn.f32:\n{ptx}");
        assert!(ptx.contains("__nv_expf"), "no libdevice expf:\n{ptx}");
    }
}

/// Every finite f32 constant the printer writes is that value bit for bit, as the compiler
/// reads it: each printed literal is checked by a `static_assert` on its bits, compiled by
/// clang (awkward values and a few thousand pseudo-random bit patterns).
#[test]
fn float_literals_are_exact() {
    if !have_clang("float_literals_are_exact") {
        return;
    }
    let mut values: Vec<f32> = F32_CONSTANTS
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    values.extend([
        f32::from_bits(1),
        f32::from_bits(0x007f_ffff),
        f32::from_bits(0x0040_0000),
        16777217.0,
        0.3,
        2.0f32.powi(-20),
        1e16,
        123456.79,
    ]);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    while values.len() < 3000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = f32::from_bits((state >> 32) as u32);
        if x.is_finite() {
            values.push(x);
        }
    }
    let body = values
        .iter()
        .enumerate()
        .map(|(n, &x)| store(0, i(n as i64), f(x)))
        .collect();
    let k = kernel(
        "literals",
        vec![param("out", Scalar::F32, true)],
        vec![],
        body,
    );
    let src = cuda::print(&k).unwrap();
    let mut checks = format!("#include \"{PRELUDE_NAME}\"\n");
    let mut n = 0;
    for line in src.lines() {
        // `    out[5LL] = LITERAL;`
        let Some(rest) = line.trim().strip_prefix("out[") else {
            continue;
        };
        let (index, literal) = rest.split_once("] = ").unwrap();
        let index: usize = index.trim_end_matches("LL").parse().unwrap();
        let literal = literal.strip_suffix(';').unwrap();
        let bits = values[index].to_bits();
        checks.push_str(&format!(
            "static_assert(__builtin_bit_cast(unsigned int, {literal}) == 0x{bits:08x}u, \
             \"{literal}\");\n"
        ));
        n += 1;
    }
    assert_eq!(n, values.len());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(PRELUDE_NAME), cuda::prelude()).unwrap();
    std::fs::write(dir.path().join("literals.cu"), &checks).unwrap();
    if let Err(e) = compile_ptx(dir.path(), "literals.cu") {
        panic!("{e}");
    }
}

/// What NVRTC declares without any include, reduced to what the prelude's NVRTC branch uses, with
/// CUDA's signatures; the thread and block indices are clang's own `threadIdx` etc.
const NVRTC_STUB: &str = r#"// Stands in for NVRTC's built-in declarations (tests/ptx.rs).
#define __global__ __attribute__((global))
#define __device__ __attribute__((device))
#define __shared__ __attribute__((shared))
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#include <__clang_cuda_builtin_vars.h>
__device__ float expf(float);
__device__ float sqrtf(float);
__device__ float tanhf(float);
__device__ float erff(float);
__device__ float fabsf(float);
__device__ float fmaxf(float, float);
__device__ float fminf(float, float);
__device__ float __fmul_rn(float, float);
__device__ float __int_as_float(int);
__device__ float __shfl_xor_sync(unsigned int, float, int, int = 32);
__device__ long long __shfl_xor_sync(unsigned int, long long, int, int = 32);
"#;

/// The prelude's NVRTC branch (`__CUDACC_RTC__`), which no machine here can run NVRTC on, at
/// least compiles against declarations with CUDA's signatures: every helper it defines calls
/// what CUDA has, with the right types.
#[test]
fn the_nvrtc_branch_compiles_against_cuda_declarations() {
    if !have_clang("the_nvrtc_branch_compiles_against_cuda_declarations") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join(PRELUDE_NAME), cuda::prelude()).unwrap();
    std::fs::write(dir.join("nvrtc_stub.h"), NVRTC_STUB).unwrap();
    let flags = ["-D__CUDACC_RTC__", "-include", "nvrtc_stub.h", "-O3"];
    for k in [all_ops(), shared_shuffle(), nested_loops(), constants()] {
        let file = format!("{}.cu", k.name);
        let src = cuda::print(&k).unwrap();
        std::fs::write(dir.join(&file), &src).unwrap();
        let ptx = compile_ptx_with(dir, &file, &flags)
            .unwrap_or_else(|e| panic!("{file} (NVRTC branch) does not compile:\n{e}\n{src}"));
        assert!(ptx.contains(&format!(".entry {}(", k.name)), "{ptx}");
        // The branch calls CUDA's functions, not libdevice's or clang's builtins.
        assert!(!ptx.contains("__nv_"), "{ptx}");
    }
}

/// A folder of printed kernels with the prelude compiles as it is (the prelude's include guard
/// holds when one file includes it twice).
#[test]
fn prelude_alone_compiles() {
    if !have_clang("prelude_alone_compiles") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(PRELUDE_NAME), cuda::prelude()).unwrap();
    let twice = format!("#include \"{PRELUDE_NAME}\"\n#include \"{PRELUDE_NAME}\"\n");
    std::fs::write(dir.path().join("twice.cu"), twice).unwrap();
    compile_ptx(dir.path(), "twice.cu").unwrap();
}

// Refusals: no compiler needed.

fn refused(k: &GpuKernel, what: &str) {
    match cuda::print(k) {
        Ok(src) => panic!("printed a kernel with {what}:\n{src}"),
        Err(e) => assert_eq!(e.kernel, k.name, "{e}"),
    }
}

#[test]
fn malformed_kernels_are_refused() {
    let ok = kernel(
        "ok",
        vec![
            param("x", Scalar::F32, false),
            param("y", Scalar::F32, true),
        ],
        vec![Scalar::F32],
        vec![store(1, tid(), Expr::load(0, tid()))],
    );
    cuda::print(&ok).unwrap();

    let mut k = ok.clone();
    k.body = vec![store(0, tid(), f(1.0))];
    refused(&k, "a store to a read-only parameter");

    let mut k = ok.clone();
    k.body = vec![store(1, tid(), i(1))];
    refused(&k, "a store of the wrong type");

    let mut k = ok.clone();
    k.body = vec![assign(7, f(1.0))];
    refused(&k, "an undeclared variable");

    let mut k = ok.clone();
    k.block = 48;
    refused(&k, "a block that is not a multiple of the warp");

    for name in [
        "float", "int", "class", "linux", "unix", "v0", "s12", "ao_exp", "__x", "_Y", "main",
        "expf", "2x", "a-b",
    ] {
        let mut k = ok.clone();
        k.params[0].name = name.into();
        refused(&k, &format!("a parameter named `{name}`"));
        let mut k = ok.clone();
        k.name = name.into();
        refused(&k, &format!("a kernel named `{name}`"));
    }
    // Names that look like the printer's but are not.
    for name in ["v", "s", "vx", "v0a", "ao", "_x", "x_", "sx1"] {
        let mut k = ok.clone();
        k.params[0].name = name.into();
        cuda::print(&k).unwrap_or_else(|e| panic!("`{name}` refused: {e}"));
    }

    let mut k = ok.clone();
    k.params[1].name = "x".into();
    refused(&k, "two parameters of one name");

    let mut k = ok.clone();
    k.shared = vec![Shared {
        elem: Scalar::I64,
        len: 6 * 1024 + 1,
    }];
    refused(&k, "more than 48 KiB of static shared memory");
    k.shared[0].len = 6 * 1024;
    cuda::print(&k).unwrap();
    k.shared[0].len = usize::MAX;
    refused(&k, "an overflowing shared size");
}

#[test]
fn printing_is_deterministic() {
    for k in [all_ops(), shared_shuffle(), nested_loops(), constants()] {
        assert_eq!(cuda::print(&k).unwrap(), cuda::print(&k.clone()).unwrap());
    }
}
