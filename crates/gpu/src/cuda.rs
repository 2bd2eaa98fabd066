//! The CUDA C printer: one [`GpuKernel`] as one self-contained `.cu` file, which NVRTC (or nvcc,
//! or clang with or without the CUDA headers) compiles with only [`prelude`] beside it.
//!
//! The printed program means exactly what the simulator (`sim.rs`) runs: the same statements in
//! the same order, every variable starting at zero, each expression evaluated as the IR defines
//! it. Where plain C would differ from the IR, the printer calls a prelude helper instead:
//! * `I64` arithmetic wraps (`ao_lladd`, `ao_llmul`, ...): C's signed overflow is undefined;
//!   `i64::MIN / -1` is `i64::MIN` and `i64::MIN % -1` is 0 (Rust's wrapping operations). A
//!   `For` loop's increment saturates (`ao_llsatadd`), as the simulator's does.
//! * `ToI64` saturates and maps NaN to 0 (`ao_f2ll`, Rust's `as`): C's out-of-range
//!   conversion is undefined.
//! * An `F32` product is `ao_fmul` (`__fmul_rn`), which no compiler fuses into an FMA, so sums
//!   of products round as the simulator's do (CUDA compilers contract `a * b + c` by default).
//!   `+`, `-`, `/`, `sqrt`, comparisons, `fmaxf`/`fminf`, negation and `fabsf` are IEEE-exact in
//!   both (with the compilers' default flags: no fast-math, no flush-to-zero); `exp`, `tanh` and
//!   `erf` are CUDA's (within a few ulp of the simulator's libm).
//! * Constants are printed exactly (f32 bit for bit, NaN payloads included).
//!
//! Never: print something the simulator would run differently (a different order, an operation
//! C leaves undefined for a value the IR defines, a rounding the IR does not have), print a name
//! that could collide with a C keyword, a macro or the printer's own names (it returns
//! [`Malformed`] instead), or depend on anything but [`prelude`] and the compiler's built-ins.

use crate::kir::{BinOp, Expr, GpuKernel, Malformed, Scalar, Special, Stmt, UnOp};

/// The file every printed kernel includes: the CUDA built-ins it uses, defined for NVRTC (which
/// has them) and for clang without CUDA headers (-nocudainc -nocudalib), so a folder of printed
/// kernels compiles with only itself on the include path.
pub const PRELUDE_NAME: &str = "attnopt_prelude.cuh";

/// The text of [`PRELUDE_NAME`].
pub fn prelude() -> &'static str {
    PRELUDE
}

/// Most bytes of static `__shared__` memory one block may declare (CUDA's limit without opting
/// in to more through dynamic shared memory).
pub const MAX_STATIC_SHARED_BYTES: usize = 48 * 1024;

const PRELUDE: &str = r#"// attnopt_prelude.cuh: the built-ins attnopt's printed CUDA kernels call
// (attnopt-gpu, crates/gpu/src/cuda.rs).
//
// Read by NVRTC and nvcc (CUDA declares everything), by clang with the CUDA headers (likewise),
// and by clang with -nocudainc -nocudalib (nothing is declared: this file defines CUDA's keywords
// as clang's attributes, and maps the math functions to libdevice's __nv_* functions, as clang's
// own CUDA headers do; the PTX then calls them as externs, which is enough for a compile check).
// Every helper is an inline function, not a macro, so no kernel's names can collide with it.
//
// The semantics are attnopt's kernel IR's, not C's: integer arithmetic wraps (C's signed
// overflow is undefined), a float-to-integer conversion saturates with NaN giving 0, and ao_fmul
// is a product no compiler fuses into an FMA. Compile without fast-math or flush-to-zero flags.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__NVCC__) || defined(__CLANG_CUDA_RUNTIME_WRAPPER_H__)

static __device__ __forceinline__ unsigned int ao_tid(void) { return threadIdx.x; }
static __device__ __forceinline__ unsigned int ao_bid_x(void) { return blockIdx.x; }
static __device__ __forceinline__ unsigned int ao_bid_y(void) { return blockIdx.y; }
static __device__ __forceinline__ unsigned int ao_bdim(void) { return blockDim.x; }
static __device__ __forceinline__ unsigned int ao_grid_x(void) { return gridDim.x; }
static __device__ __forceinline__ unsigned int ao_grid_y(void) { return gridDim.y; }

static __device__ __forceinline__ float ao_exp(float x) { return expf(x); }
static __device__ __forceinline__ float ao_sqrt(float x) { return sqrtf(x); }
static __device__ __forceinline__ float ao_tanh(float x) { return tanhf(x); }
static __device__ __forceinline__ float ao_erf(float x) { return erff(x); }
static __device__ __forceinline__ float ao_fabs(float x) { return fabsf(x); }
static __device__ __forceinline__ float ao_fmaxf(float a, float b) { return fmaxf(a, b); }
static __device__ __forceinline__ float ao_fminf(float a, float b) { return fminf(a, b); }
static __device__ __forceinline__ float ao_fmul(float a, float b) { return __fmul_rn(a, b); }
static __device__ __forceinline__ float ao_f32_bits(unsigned int b) {
    return __int_as_float((int)b);
}

static __device__ __forceinline__ float ao_shfl_xor(float x, int m) {
    return __shfl_xor_sync(0xffffffffu, x, m);
}
static __device__ __forceinline__ long long ao_shfl_xor(long long x, int m) {
    return __shfl_xor_sync(0xffffffffu, x, m);
}

#else // clang without the CUDA headers

#define __global__ __attribute__((global))
#define __device__ __attribute__((device))
#define __shared__ __attribute__((shared))
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#define __forceinline__ __inline__ __attribute__((always_inline))

extern "C" __device__ float __nv_expf(float);
extern "C" __device__ float __nv_sqrtf(float);
extern "C" __device__ float __nv_tanhf(float);
extern "C" __device__ float __nv_erff(float);
extern "C" __device__ float __nv_fabsf(float);
extern "C" __device__ float __nv_fmaxf(float, float);
extern "C" __device__ float __nv_fminf(float, float);

static __device__ __forceinline__ unsigned int ao_tid(void) {
    return (unsigned int)__nvvm_read_ptx_sreg_tid_x();
}
static __device__ __forceinline__ unsigned int ao_bid_x(void) {
    return (unsigned int)__nvvm_read_ptx_sreg_ctaid_x();
}
static __device__ __forceinline__ unsigned int ao_bid_y(void) {
    return (unsigned int)__nvvm_read_ptx_sreg_ctaid_y();
}
static __device__ __forceinline__ unsigned int ao_bdim(void) {
    return (unsigned int)__nvvm_read_ptx_sreg_ntid_x();
}
static __device__ __forceinline__ unsigned int ao_grid_x(void) {
    return (unsigned int)__nvvm_read_ptx_sreg_nctaid_x();
}
static __device__ __forceinline__ unsigned int ao_grid_y(void) {
    return (unsigned int)__nvvm_read_ptx_sreg_nctaid_y();
}

static __device__ __forceinline__ float ao_exp(float x) { return __nv_expf(x); }
static __device__ __forceinline__ float ao_sqrt(float x) { return __nv_sqrtf(x); }
static __device__ __forceinline__ float ao_tanh(float x) { return __nv_tanhf(x); }
static __device__ __forceinline__ float ao_erf(float x) { return __nv_erff(x); }
static __device__ __forceinline__ float ao_fabs(float x) { return __nv_fabsf(x); }
static __device__ __forceinline__ float ao_fmaxf(float a, float b) { return __nv_fmaxf(a, b); }
static __device__ __forceinline__ float ao_fminf(float a, float b) { return __nv_fminf(a, b); }
// mul.rn.f32: an explicit rounding mode, which ptxas never fuses with an addition.
static __device__ __forceinline__ float ao_fmul(float a, float b) { return __nvvm_mul_rn_f(a, b); }
static __device__ __forceinline__ float ao_f32_bits(unsigned int b) {
    return __builtin_bit_cast(float, b);
}

// clang's __nvvm_shfl_sync_* builtins need a PTX version that it only assumes when it finds a
// CUDA installation, so the shuffle is the PTX instruction itself (inline assembly is convergent).
static __device__ __forceinline__ unsigned int ao_shfl_xor_u32(unsigned int x, int m) {
    unsigned int r;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=r"(r) : "r"(x), "r"(m));
    return r;
}
static __device__ __forceinline__ float ao_shfl_xor(float x, int m) {
    return __builtin_bit_cast(float, ao_shfl_xor_u32(__builtin_bit_cast(unsigned int, x), m));
}
static __device__ __forceinline__ long long ao_shfl_xor(long long x, int m) {
    unsigned long long u = (unsigned long long)x;
    unsigned long long lo = ao_shfl_xor_u32((unsigned int)u, m);
    unsigned long long hi = ao_shfl_xor_u32((unsigned int)(u >> 32), m);
    return (long long)((hi << 32) | lo);
}

#endif

static __device__ __forceinline__ float ao_inf(void) { return ao_f32_bits(0x7f800000u); }
static __device__ __forceinline__ float ao_nan(void) { return ao_f32_bits(0x7fc00000u); }

// Two's complement, wrapping: through unsigned arithmetic, where C's signed overflow is undefined.
static __device__ __forceinline__ long long ao_lladd(long long a, long long b) {
    return (long long)((unsigned long long)a + (unsigned long long)b);
}
static __device__ __forceinline__ long long ao_llsub(long long a, long long b) {
    return (long long)((unsigned long long)a - (unsigned long long)b);
}
static __device__ __forceinline__ long long ao_llmul(long long a, long long b) {
    return (long long)((unsigned long long)a * (unsigned long long)b);
}
// Saturating: a For loop's step (the simulator's: a variable that would pass the maximum has
// passed any bound).
static __device__ __forceinline__ long long ao_llsatadd(long long a, long long b) {
    return b > 0 ? (a > 9223372036854775807LL - b ? 9223372036854775807LL : a + b)
        : (a < (-9223372036854775807LL - 1) - b ? (-9223372036854775807LL - 1) : a + b);
}
static __device__ __forceinline__ long long ao_llneg(long long a) {
    return (long long)(0ull - (unsigned long long)a);
}
// Truncating; x / -1 is -x and x % -1 is 0 (wrapping), which C leaves undefined for the minimum.
static __device__ __forceinline__ long long ao_lldiv(long long a, long long b) {
    return b == -1 ? ao_llneg(a) : a / b;
}
static __device__ __forceinline__ long long ao_llrem(long long a, long long b) {
    return b == -1 ? 0 : a % b;
}
static __device__ __forceinline__ long long ao_llabs(long long a) {
    return a < 0 ? ao_llneg(a) : a;
}
static __device__ __forceinline__ long long ao_llmax(long long a, long long b) {
    return a < b ? b : a;
}
static __device__ __forceinline__ long long ao_llmin(long long a, long long b) {
    return b < a ? b : a;
}
// Truncation toward zero, saturating, NaN giving 0 (Rust's `as`).
static __device__ __forceinline__ long long ao_f2ll(float x) {
    return x != x ? 0
        : x >= 9223372036854775808.0f ? 9223372036854775807LL
        : x < -9223372036854775808.0f ? (-9223372036854775807LL - 1)
        : (long long)x;
}
"#;

/// One kernel as a self-contained `.cu` source: a comment header (the kernel's `doc` lines, its
/// grid/block/shared sizes), `#include "attnopt_prelude.cuh"`, then
/// `extern "C" __global__ void __launch_bounds__(block) NAME(params...) { ... }`.
///
/// Calls [`GpuKernel::check`] first; also refuses names the printed C could not use (C++
/// keywords, reserved or predefined names, the printer's own `v<N>`, `s<N>` and `ao_*`, a
/// parameter named twice) and more static shared memory than [`MAX_STATIC_SHARED_BYTES`].
/// The output depends on the kernel only (it is deterministic).
pub fn print(k: &GpuKernel) -> Result<String, Malformed> {
    k.check()?;
    check_names(k)?;
    let shared_bytes = shared_bytes(k)?;
    let mut p = Printer {
        k,
        out: String::new(),
        loops: 0,
    };
    p.header(shared_bytes);
    p.body()?;
    Ok(p.out)
}

const INDENT: &str = "    ";

fn malformed(k: &GpuKernel, what: String) -> Malformed {
    Malformed {
        kernel: k.name.clone(),
        what,
    }
}

fn c_type(t: Scalar) -> &'static str {
    match t {
        Scalar::F32 => "float",
        Scalar::I64 => "long long",
    }
}

fn c_zero(t: Scalar) -> &'static str {
    match t {
        Scalar::F32 => "0.0f",
        Scalar::I64 => "0",
    }
}

fn elem_bytes(t: Scalar) -> usize {
    match t {
        Scalar::F32 => 4,
        Scalar::I64 => 8,
    }
}

/// Total bytes of the kernel's `__shared__` arrays, at most [`MAX_STATIC_SHARED_BYTES`].
fn shared_bytes(k: &GpuKernel) -> Result<usize, Malformed> {
    let mut total = 0usize;
    for a in &k.shared {
        total = a
            .len
            .checked_mul(elem_bytes(a.elem))
            .and_then(|b| total.checked_add(b))
            .filter(|&b| b <= MAX_STATIC_SHARED_BYTES)
            .ok_or_else(|| {
                malformed(
                    k,
                    format!("more than {MAX_STATIC_SHARED_BYTES} bytes of static shared memory"),
                )
            })?;
    }
    Ok(total)
}

/// C++ keywords and alternative tokens, and names the compilers predefine as macros (`linux`
/// and `unix` in clang's GNU modes) or treat specially.
#[rustfmt::skip]
const RESERVED: &[&str] = &[
    "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break",
    "case", "catch", "char", "char8_t", "char16_t", "char32_t", "class", "compl", "concept",
    "const", "consteval", "constexpr", "constinit", "const_cast", "continue", "co_await",
    "co_return", "co_yield", "decltype", "default", "delete", "do", "double", "dynamic_cast",
    "else", "enum", "explicit", "export", "extern", "false", "float", "for", "friend", "goto", "if",
    "inline", "int", "long", "mutable", "namespace", "new", "noexcept", "not", "not_eq", "nullptr",
    "operator", "or", "or_eq", "private", "protected", "public", "register", "reinterpret_cast",
    "requires", "restrict", "return", "short", "signed", "sizeof", "static", "static_assert",
    "static_cast", "struct", "switch", "template", "this", "thread_local", "throw", "true", "try",
    "typedef", "typeid", "typename", "union", "unsigned", "using", "virtual", "void", "volatile",
    "wchar_t", "while", "xor", "xor_eq", "linux", "unix", "NULL", "main",
];

/// What the prelude uses under NVRTC (CUDA's functions and built-in variables): a kernel or
/// parameter of that name would clash with or shadow them.
#[rustfmt::skip]
const CUDA_NAMES: &[&str] = &[
    "expf", "sqrtf", "tanhf", "erff", "fabsf", "fmaxf", "fminf",
    "threadIdx", "blockIdx", "blockDim", "gridDim", "warpSize",
];

/// Whether `name` is one the printed C can use for a kernel or parameter.
fn usable_name(name: &str) -> Result<(), String> {
    let numbered = |prefix: char| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let reserved_prefix = name.starts_with("__")
        || (name.starts_with('_') && name[1..].starts_with(|c: char| c.is_ascii_uppercase()))
        || name.starts_with("ao_");
    if RESERVED.contains(&name) || CUDA_NAMES.contains(&name) {
        Err(format!("`{name}` is a C++ keyword or a predefined name"))
    } else if reserved_prefix || numbered('v') || numbered('s') {
        Err(format!(
            "`{name}` is reserved (`__*`, `_[A-Z]*`) or one of the printer's names (`v<N>`, \
             `s<N>`, `ao_*`)"
        ))
    } else {
        Ok(())
    }
}

fn check_names(k: &GpuKernel) -> Result<(), Malformed> {
    usable_name(&k.name).map_err(|w| malformed(k, format!("kernel name: {w}")))?;
    for (i, p) in k.params.iter().enumerate() {
        usable_name(&p.name).map_err(|w| malformed(k, format!("parameter {i}: {w}")))?;
        if k.params[..i].iter().any(|q| q.name == p.name) {
            return Err(malformed(k, format!("two parameters named `{}`", p.name)));
        }
    }
    Ok(())
}

/// An `f32` constant as a C expression of exactly that value (bit for bit).
///
/// A finite value is a decimal literal where Rust's shortest round-trip decimal is the value
/// exactly (`1.0f`, `0.125f`: nothing for any compiler to round), else a hex float literal
/// (`0x1.99999ap-4f`); negative values are parenthesized (`(-1.5f)`, `(-0.0f)`). Infinities are
/// `ao_inf()` / `(-ao_inf())`, the canonical NaN `ao_nan()`, any other NaN its bits.
fn f32_literal(x: f32) -> String {
    let bits = x.to_bits();
    if x.is_nan() {
        return if bits == 0x7fc0_0000 {
            "ao_nan()".to_string()
        } else {
            format!("ao_f32_bits(0x{bits:08x}u)")
        };
    }
    let magnitude = if x.is_infinite() {
        "ao_inf()".to_string()
    } else {
        let m = x.abs();
        let decimal = format!("{m:?}");
        let exact = decimal.parse::<f64>().is_ok_and(|d| d == f64::from(m));
        if exact && decimal.contains(['.', 'e']) {
            format!("{decimal}f")
        } else {
            hex_float(m)
        }
    };
    if x.is_sign_negative() {
        format!("(-{magnitude})")
    } else {
        magnitude
    }
}

/// A finite, non-negative `f32` as a C hex float literal: `0x1.<hex>p<exp>f`, normalized
/// (subnormals too), no trailing zero digits, `0x0p+0f` for zero.
fn hex_float(m: f32) -> String {
    let bits = m.to_bits() & 0x7fff_ffff;
    let (biased, mut frac) = ((bits >> 23) as i32, bits & 0x7f_ffff);
    if biased == 0 && frac == 0 {
        return "0x0p+0f".to_string();
    }
    let mut exp = biased - 127;
    if biased == 0 {
        // Subnormal: frac × 2^-149; shift the leading one up to bit 23 (the implicit one).
        exp = -126;
        while frac & 0x80_0000 == 0 {
            frac <<= 1;
            exp -= 1;
        }
        frac &= 0x7f_ffff;
    }
    // 23 fraction bits, shifted left once: 6 hex digits.
    let digits = format!("{:06x}", frac << 1);
    let digits = digits.trim_end_matches('0');
    let sign = if exp < 0 { '-' } else { '+' };
    let e = exp.unsigned_abs();
    if digits.is_empty() {
        format!("0x1p{sign}{e}f")
    } else {
        format!("0x1.{digits}p{sign}{e}f")
    }
}

/// An `i64` constant as a C expression of type `long long`.
fn i64_literal(x: i64) -> String {
    if x == i64::MIN {
        "(-9223372036854775807LL - 1)".to_string()
    } else if x < 0 {
        format!("(-{}LL)", x.unsigned_abs())
    } else {
        format!("{x}LL")
    }
}

/// A doc line made safe for a `//` comment: no line breaks or control characters, and no
/// trailing backslash (which would splice the next line into the comment).
fn comment_text(line: &str) -> String {
    let s: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let s = s.trim_end();
    if s.ends_with('\\') {
        format!("{s} //")
    } else {
        s.to_string()
    }
}

struct Printer<'k> {
    k: &'k GpuKernel,
    out: String,
    /// `For` loops printed so far (numbering their `ao_end<N>`, `ao_step<N>`).
    loops: usize,
}

impl Printer<'_> {
    fn bad(&self, what: String) -> Malformed {
        malformed(self.k, what)
    }

    fn line(&mut self, depth: usize, text: &str) {
        for _ in 0..depth {
            self.out.push_str(INDENT);
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn header(&mut self, shared_bytes: usize) {
        let k = self.k;
        self.line(0, &format!("// attnopt GPU kernel `{}`.", k.name));
        for d in &k.doc {
            let text = comment_text(d);
            if text.is_empty() {
                self.line(0, "//");
            } else {
                self.line(0, &format!("// {text}"));
            }
        }
        self.line(
            0,
            &format!(
                "// Launch: grid {} x {} blocks of {} threads; {shared_bytes} bytes of static shared \
                 memory per block.",
                k.grid[0], k.grid[1], k.block
            ),
        );
        self.line(
            0,
            "// Printed by attnopt-gpu; compile without fast-math or flush-to-zero flags.",
        );
        self.line(0, &format!("#include \"{PRELUDE_NAME}\""));
        self.line(0, "");
    }

    fn body(&mut self) -> Result<(), Malformed> {
        let k = self.k;
        let params: Vec<String> = k
            .params
            .iter()
            .map(|p| {
                let cv = if p.writes { "" } else { "const " };
                format!("{cv}{}* {}", c_type(p.elem), p.name)
            })
            .collect();
        self.line(
            0,
            &format!(
                "extern \"C\" __global__ void __launch_bounds__({}) {}({}) {{",
                k.block,
                k.name,
                params.join(", ")
            ),
        );
        for (i, t) in k.vars.iter().enumerate() {
            self.line(1, &format!("{} v{i} = {};", c_type(*t), c_zero(*t)));
        }
        for (i, a) in k.shared.iter().enumerate() {
            // A zero-length array is not standard C++; none of its elements is ever accessed
            // (the simulator rejects any access), so one element stands in.
            self.line(
                1,
                &format!("__shared__ {} s{i}[{}];", c_type(a.elem), a.len.max(1)),
            );
        }
        let declared = !k.vars.is_empty() || !k.shared.is_empty();
        if declared && !k.body.is_empty() {
            self.line(0, "");
        }
        self.block(&k.body, 1)?;
        self.line(0, "}");
        Ok(())
    }

    /// Statements at indentation `depth`.
    fn block(&mut self, body: &[Stmt], depth: usize) -> Result<(), Malformed> {
        for s in body {
            self.stmt(s, depth)?;
        }
        Ok(())
    }

    fn param_name(&self, param: usize) -> Result<&str, Malformed> {
        let p = self.k.params.get(param);
        p.map(|p| p.name.as_str())
            .ok_or_else(|| self.bad(format!("no parameter {param}")))
    }

    fn stmt(&mut self, s: &Stmt, depth: usize) -> Result<(), Malformed> {
        match s {
            Stmt::Assign { var, value } => {
                let v = self.expr(value)?.0;
                self.line(depth, &format!("v{} = {v};", var.0));
            }
            Stmt::Store {
                param,
                index,
                value,
            } => {
                let (i, v) = (self.expr(index)?.0, self.expr(value)?.0);
                let p = self.param_name(*param)?.to_string();
                self.line(depth, &format!("{p}[{i}] = {v};"));
            }
            Stmt::StoreShared {
                array,
                index,
                value,
            } => {
                let (i, v) = (self.expr(index)?.0, self.expr(value)?.0);
                self.line(depth, &format!("s{array}[{i}] = {v};"));
            }
            Stmt::If { cond, then, els } => {
                let c = self.cond(cond)?;
                self.line(depth, &format!("if {c} {{"));
                self.block(then, depth + 1)?;
                if !els.is_empty() {
                    self.line(depth, "} else {");
                    self.block(els, depth + 1)?;
                }
                self.line(depth, "}");
            }
            Stmt::For {
                var,
                start,
                end,
                step,
                body,
            } => {
                // `end` and `step` evaluated once, into variables numbered in print order (unique
                // in the kernel), then `start` assigned: no IR expression has side effects, so the
                // order among the three is not observable.
                let (b, e, st) = (self.expr(start)?.0, self.expr(end)?.0, self.expr(step)?.0);
                let n = self.loops;
                self.loops += 1;
                let (ev, sv, v) = (format!("ao_end{n}"), format!("ao_step{n}"), var.0);
                self.line(depth, &format!("long long {ev} = {e};"));
                self.line(depth, &format!("long long {sv} = {st};"));
                self.line(
                    depth,
                    &format!("for (v{v} = {b}; v{v} < {ev}; v{v} = ao_llsatadd(v{v}, {sv})) {{"),
                );
                self.block(body, depth + 1)?;
                self.line(depth, "}");
            }
            Stmt::SyncThreads => self.line(depth, "__syncthreads();"),
            Stmt::ShflXor {
                dst,
                src,
                lane_mask,
            } => {
                self.line(
                    depth,
                    &format!("v{} = ao_shfl_xor(v{}, {lane_mask});", dst.0, src.0),
                );
            }
        }
        Ok(())
    }

    /// The C condition "`e` is not zero", parenthesized: a comparison as itself (`(v0 < 100LL)`),
    /// `And`/`Or` of its operands' conditions (`((v1 != 0) && (v2 < v3))`: C's `&&` and `||`
    /// skip the right operand where the left decides, which for side-effect-free expressions the
    /// simulator cannot tell from evaluating both), any other `I64` as `(x != 0)`.
    fn cond(&self, e: &Expr) -> Result<String, Malformed> {
        let Expr::Binary(op, a, b) = e else {
            return Ok(format!("({} != 0)", self.int(e)?));
        };
        let o = match op {
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "&&",
            BinOp::Or => "||",
            _ => return Ok(format!("({} != 0)", self.int(e)?)),
        };
        if matches!(op, BinOp::And | BinOp::Or) {
            return Ok(format!("({} {o} {})", self.cond(a)?, self.cond(b)?));
        }
        let ((a, ta), (b, tb)) = (self.expr(a)?, self.expr(b)?);
        if ta != tb {
            return Err(self.bad(format!("{op:?} of {ta:?} and {tb:?}")));
        }
        Ok(format!("({a} {o} {b})"))
    }

    /// `e`, which must be an `I64`, as a C primary expression.
    fn int(&self, e: &Expr) -> Result<String, Malformed> {
        match self.expr(e)? {
            (s, Scalar::I64) => Ok(s),
            (_, t) => Err(self.bad(format!("a condition of type {t:?}"))),
        }
    }

    /// `e` as a C primary expression (a name, a literal, a call, an index or a parenthesized
    /// expression: safe as any operator's operand), with its type.
    fn expr(&self, e: &Expr) -> Result<(String, Scalar), Malformed> {
        let k = self.k;
        Ok(match e {
            Expr::F32(x) => (f32_literal(*x), Scalar::F32),
            Expr::I64(x) => (i64_literal(*x), Scalar::I64),
            Expr::Var(v) => {
                let t = k
                    .vars
                    .get(v.0 as usize)
                    .copied()
                    .ok_or_else(|| self.bad(format!("variable v{} is not declared", v.0)))?;
                (format!("v{}", v.0), t)
            }
            Expr::Special(s) => {
                let f = match s {
                    Special::Thread => "ao_tid",
                    Special::BlockX => "ao_bid_x",
                    Special::BlockY => "ao_bid_y",
                    Special::BlockDim => "ao_bdim",
                    Special::GridX => "ao_grid_x",
                    Special::GridY => "ao_grid_y",
                };
                (format!("((long long){f}())"), Scalar::I64)
            }
            Expr::Load { param, index } => {
                let i = self.expr(index)?.0;
                let p = k
                    .params
                    .get(*param)
                    .ok_or_else(|| self.bad(format!("no parameter {param}")))?;
                (format!("{}[{i}]", p.name), p.elem)
            }
            Expr::LoadShared { array, index } => {
                let i = self.expr(index)?.0;
                let a = k
                    .shared
                    .get(*array)
                    .ok_or_else(|| self.bad(format!("no shared array {array}")))?;
                (format!("s{array}[{i}]"), a.elem)
            }
            Expr::Unary(op, a) => {
                let (a, t) = self.expr(a)?;
                use Scalar::{F32, I64};
                match (op, t) {
                    (UnOp::Neg, F32) => (format!("(-{a})"), F32),
                    (UnOp::Neg, I64) => (format!("ao_llneg({a})"), I64),
                    (UnOp::Abs, F32) => (format!("ao_fabs({a})"), F32),
                    (UnOp::Abs, I64) => (format!("ao_llabs({a})"), I64),
                    (UnOp::Exp, F32) => (format!("ao_exp({a})"), F32),
                    (UnOp::Sqrt, F32) => (format!("ao_sqrt({a})"), F32),
                    (UnOp::Tanh, F32) => (format!("ao_tanh({a})"), F32),
                    (UnOp::Erf, F32) => (format!("ao_erf({a})"), F32),
                    (UnOp::ToF32, I64) => (format!("((float){a})"), F32),
                    (UnOp::ToI64, F32) => (format!("ao_f2ll({a})"), I64),
                    _ => return Err(self.bad(format!("{op:?} of {t:?}"))),
                }
            }
            Expr::Binary(op, _, _) if op.is_comparison() => {
                (format!("((long long){})", self.cond(e)?), Scalar::I64)
            }
            Expr::Binary(op, a, b) => {
                let ((a, ta), (b, tb)) = (self.expr(a)?, self.expr(b)?);
                if ta != tb {
                    return Err(self.bad(format!("{op:?} of {ta:?} and {tb:?}")));
                }
                let infix = |o: &str| format!("({a} {o} {b})");
                let call = |f: &str| format!("{f}({a}, {b})");
                use Scalar::{F32, I64};
                match (op, ta) {
                    (BinOp::Add, F32) => (infix("+"), F32),
                    (BinOp::Sub, F32) => (infix("-"), F32),
                    (BinOp::Mul, F32) => (call("ao_fmul"), F32),
                    (BinOp::Div, F32) => (infix("/"), F32),
                    (BinOp::Max, F32) => (call("ao_fmaxf"), F32),
                    (BinOp::Min, F32) => (call("ao_fminf"), F32),
                    (BinOp::Add, I64) => (call("ao_lladd"), I64),
                    (BinOp::Sub, I64) => (call("ao_llsub"), I64),
                    (BinOp::Mul, I64) => (call("ao_llmul"), I64),
                    (BinOp::Div, I64) => (call("ao_lldiv"), I64),
                    (BinOp::Rem, I64) => (call("ao_llrem"), I64),
                    (BinOp::Max, I64) => (call("ao_llmax"), I64),
                    (BinOp::Min, I64) => (call("ao_llmin"), I64),
                    (BinOp::Rem, F32) => return Err(self.bad(format!("{op:?} of F32"))),
                    (BinOp::Lt | BinOp::Le | BinOp::Eq | BinOp::Ne | BinOp::And | BinOp::Or, _) => {
                        return Err(self.bad(format!("internal: comparison {op:?}")))
                    }
                }
            }
            Expr::Select { cond, then, els } => {
                let c = self.cond(cond)?;
                let ((a, ta), (b, tb)) = (self.expr(then)?, self.expr(els)?);
                if ta != tb {
                    return Err(self.bad(format!("select of {ta:?} and {tb:?}")));
                }
                (format!("({c} ? {a} : {b})"), ta)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kir::{Param, Shared, Var};

    #[test]
    fn a_small_kernel_prints_as_expected() {
        let tid = || Expr::Special(Special::Thread);
        let k = GpuKernel {
            name: "scale_rows".into(),
            doc: vec![
                "layer 0: y = 1.5 * x".into(),
                String::new(),
                "split\nline \\".into(),
            ],
            params: vec![
                Param {
                    name: "x".into(),
                    elem: Scalar::F32,
                    writes: false,
                },
                Param {
                    name: "y".into(),
                    elem: Scalar::F32,
                    writes: true,
                },
                Param {
                    name: "idx".into(),
                    elem: Scalar::I64,
                    writes: false,
                },
            ],
            vars: vec![Scalar::I64, Scalar::F32],
            shared: vec![Shared {
                elem: Scalar::F32,
                len: 32,
            }],
            grid: [4, 1],
            block: 32,
            body: vec![
                Stmt::Assign {
                    var: Var(0),
                    value: Expr::Special(Special::BlockX)
                        .mul(Expr::Special(Special::BlockDim))
                        .add(tid()),
                },
                Stmt::If {
                    cond: Expr::var(Var(0)).lt(Expr::I64(100)),
                    then: vec![Stmt::Assign {
                        var: Var(1),
                        value: Expr::load(0, Expr::var(Var(0))).mul(Expr::F32(1.5)),
                    }],
                    els: vec![Stmt::Assign {
                        var: Var(1),
                        value: Expr::F32(-0.0),
                    }],
                },
                Stmt::StoreShared {
                    array: 0,
                    index: tid(),
                    value: Expr::var(Var(1)),
                },
                Stmt::SyncThreads,
                Stmt::For {
                    var: Var(0),
                    start: Expr::I64(0),
                    end: Expr::load(2, Expr::I64(0)),
                    step: Expr::I64(2),
                    body: vec![Stmt::ShflXor {
                        dst: Var(1),
                        src: Var(1),
                        lane_mask: 1,
                    }],
                },
                Stmt::Store {
                    param: 1,
                    index: tid(),
                    value: Expr::select(
                        Expr::bin(BinOp::Ne, Expr::var(Var(0)), Expr::I64(0)),
                        Expr::bin(
                            BinOp::Max,
                            Expr::load_shared(0, Expr::I64(31).sub(tid())),
                            Expr::un(UnOp::ToF32, Expr::var(Var(0))),
                        ),
                        Expr::F32(f32::NAN),
                    ),
                },
            ],
        };
        let expected = r#"// attnopt GPU kernel `scale_rows`.
// layer 0: y = 1.5 * x
//
// split line \ //
// Launch: grid 4 x 1 blocks of 32 threads; 128 bytes of static shared memory per block.
// Printed by attnopt-gpu; compile without fast-math or flush-to-zero flags.
#include "attnopt_prelude.cuh"

extern "C" __global__ void __launch_bounds__(32) scale_rows(const float* x, float* y, const long long* idx) {
    long long v0 = 0;
    float v1 = 0.0f;
    __shared__ float s0[32];

    v0 = ao_lladd(ao_llmul(((long long)ao_bid_x()), ((long long)ao_bdim())), ((long long)ao_tid()));
    if (v0 < 100LL) {
        v1 = ao_fmul(x[v0], 1.5f);
    } else {
        v1 = (-0.0f);
    }
    s0[((long long)ao_tid())] = v1;
    __syncthreads();
    long long ao_end0 = idx[0LL];
    long long ao_step0 = 2LL;
    for (v0 = 0LL; v0 < ao_end0; v0 = ao_llsatadd(v0, ao_step0)) {
        v1 = ao_shfl_xor(v1, 1);
    }
    y[((long long)ao_tid())] = ((v0 != 0LL) ? ao_fmaxf(s0[ao_llsub(31LL, ((long long)ao_tid()))], ((float)v0)) : ao_nan());
}
"#;
        let printed = print(&k).unwrap();
        assert_eq!(printed, expected, "printed:\n{printed}");
    }

    #[test]
    fn f32_literals() {
        let cases: &[(f32, &str)] = &[
            (0.0, "0.0f"),
            (-0.0, "(-0.0f)"),
            (1.0, "1.0f"),
            (-1.5, "(-1.5f)"),
            (0.125, "0.125f"),
            (1024.0, "1024.0f"),
            (0.1, "0x1.99999ap-4f"),
            (3.0e-5, "0x1.f75104p-16f"),
            (f32::MAX, "0x1.fffffep+127f"),
            (f32::MIN_POSITIVE, "0x1p-126f"),
            (f32::from_bits(1), "0x1p-149f"),
            (f32::from_bits(0x007f_ffff), "0x1.fffffcp-127f"),
            (f32::from_bits(0x0000_0003), "0x1.8p-148f"),
            (16777216.0, "16777216.0f"),
            (1e16, "0x1.1c3794p+53f"),
            (f32::INFINITY, "ao_inf()"),
            (f32::NEG_INFINITY, "(-ao_inf())"),
            (f32::NAN, "ao_nan()"),
            (f32::from_bits(0xffc0_0000), "ao_f32_bits(0xffc00000u)"),
        ];
        for &(x, s) in cases {
            assert_eq!(f32_literal(x), s, "{x:?} ({:#010x})", x.to_bits());
        }
    }

    #[test]
    fn i64_literals() {
        assert_eq!(i64_literal(0), "0LL");
        assert_eq!(i64_literal(42), "42LL");
        assert_eq!(i64_literal(-42), "(-42LL)");
        assert_eq!(i64_literal(i64::MAX), "9223372036854775807LL");
        assert_eq!(i64_literal(i64::MIN + 1), "(-9223372036854775807LL)");
        assert_eq!(i64_literal(i64::MIN), "(-9223372036854775807LL - 1)");
    }

    #[test]
    fn the_prelude_defines_every_helper_the_printer_calls() {
        for f in [
            "ao_tid(",
            "ao_bid_x(",
            "ao_bid_y(",
            "ao_bdim(",
            "ao_grid_x(",
            "ao_grid_y(",
            "ao_exp(",
            "ao_sqrt(",
            "ao_tanh(",
            "ao_erf(",
            "ao_fabs(",
            "ao_fmaxf(",
            "ao_fminf(",
            "ao_fmul(",
            "ao_f32_bits(",
            "ao_inf(",
            "ao_nan(",
            "ao_shfl_xor(",
            "ao_lladd(",
            "ao_llsub(",
            "ao_llmul(",
            "ao_llneg(",
            "ao_lldiv(",
            "ao_llrem(",
            "ao_llabs(",
            "ao_llmax(",
            "ao_llmin(",
            "ao_f2ll(",
            "ao_llsatadd(",
        ] {
            assert!(
                prelude().matches(&format!(" {f}")).count() >= 1,
                "{f} is not defined"
            );
        }
    }
}
