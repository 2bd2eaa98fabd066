//! The CPU simulator: runs a [`GpuKernel`] over its whole grid on the CPU with the semantics of
//! [`crate::kir`], so the tests run the very program the CUDA printer writes, and checks what a
//! GPU would silently get wrong.
//!
//! How it runs: block by block (x fastest, then y), and within a block all threads in lockstep,
//! statement by statement, under an active mask (SIMT): a statement's expressions are evaluated
//! for all active threads (one expression node at a time, for speed), then its assignment or
//! stores are made in thread order; `If` runs `then` for the threads whose condition holds and
//! then `els` for the others; a `For` loop keeps running its body while any thread is still in
//! it, each thread leaving when its own variable reaches its own bound. Variables start at zero,
//! and so does shared memory at the start of each block.
//!
//! What it checks, as errors ([`SimError`]) naming the kernel, block, thread and what happened:
//! * every load and store against its parameter's bound, every shared access against its
//!   array's length, every binding against its buffer (and its element alignment), the shared
//!   arrays against a block's [`MAX_SHARED_BYTES`];
//! * integer division (and remainder) by zero, a loop step that is not positive;
//! * `SyncThreads` reached by only part of the block; `ShflXor` executed by only part of a warp;
//! * shared-memory races: between two barriers, an element written by one thread and read or
//!   written by another (or read by one thread, then written by another). Lockstep order would
//!   hide these; the tracking does not depend on that order;
//! * global-memory conflicts within one launch: an element written by one thread and read or
//!   written by another (there is no grid-wide barrier), or read by one thread and then written
//!   by another. Each 4-byte word remembers its writer and its reader(s) for the whole launch,
//!   so two parameters bound to the same memory (an in-place kernel) are seen as one, and a
//!   thread reading and rewriting its own elements is fine.
//!
//! `Select` evaluates only the arm it picks (as the CUDA `?:` does), so
//! `Select(i < n, Load(x, i), 0)` is a safe guarded load.
//!
//! Never: trust a kernel (every variable, parameter, array and index is checked; a malformed
//! kernel is an error, never a panic), or let the order in which it runs threads decide whether
//! a kernel is accepted. On an error the device memory holds whatever the stores before it wrote.
//! A kernel whose loop never ends (its body keeps moving the variable back) runs forever, as on a
//! GPU.

use crate::kir::{BinOp, Expr, GpuKernel, Scalar, Special, Stmt, UnOp, Var, WARP};

/// The most static shared memory a block may declare (CUDA's limit for `__shared__` arrays).
pub const MAX_SHARED_BYTES: usize = 48 * 1024;

/// Index of a buffer in a [`DeviceMemory`].
pub type BufferId = usize;

/// Simulated device memory: byte buffers holding little-endian `f32` / `i64` elements.
#[derive(Debug, Default, Clone)]
pub struct DeviceMemory {
    bufs: Vec<Vec<u8>>,
}

/// Where a kernel parameter points: `len` elements (of the parameter's type) starting at
/// `byte_offset` in `buffer`. Two bindings may overlap (an in-place kernel binds its input and
/// output to the same range). `byte_offset` must be a multiple of the element size (4 for `F32`,
/// 8 for `I64`), as on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub buffer: BufferId,
    pub byte_offset: usize,
    pub len: usize,
}

/// What went wrong, where. Errors not tied to a thread (a malformed kernel, a bad binding, a
/// [`DeviceMemory`] access) have `bx`, `by` and `thread` 0; [`DeviceMemory`]'s own errors have
/// the kernel name `memory`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kernel}: block ({bx}, {by}) thread {thread}: {what}")]
pub struct SimError {
    pub kernel: String,
    pub bx: u32,
    pub by: u32,
    pub thread: u32,
    pub what: String,
}

fn memory_error(what: String) -> SimError {
    SimError {
        kernel: "memory".into(),
        bx: 0,
        by: 0,
        thread: 0,
        what,
    }
}

impl DeviceMemory {
    /// No buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new zero-filled buffer of `bytes` bytes.
    pub fn alloc(&mut self, bytes: usize) -> BufferId {
        self.bufs.push(vec![0; bytes]);
        self.bufs.len() - 1
    }

    /// The size of buffer `b` in bytes (0 for a buffer that does not exist).
    pub fn len_bytes(&self, b: BufferId) -> usize {
        self.bufs.get(b).map_or(0, Vec::len)
    }

    /// The byte range of `len` elements of `size` bytes at `byte_offset` in `b`, if inside it.
    fn range(
        &self,
        b: BufferId,
        byte_offset: usize,
        len: usize,
        size: usize,
        doing: &str,
    ) -> Result<std::ops::Range<usize>, SimError> {
        let Some(buf) = self.bufs.get(b) else {
            return Err(memory_error(format!(
                "{doing} buffer {b}, which does not exist ({} buffers)",
                self.bufs.len()
            )));
        };
        match len
            .checked_mul(size)
            .and_then(|n| byte_offset.checked_add(n))
        {
            Some(end) if end <= buf.len() => Ok(byte_offset..end),
            _ => Err(memory_error(format!(
                "{doing} {len} elements of {size} bytes at byte {byte_offset} of buffer {b}, \
                 which has {} bytes",
                buf.len()
            ))),
        }
    }

    /// `len` `f32`s starting at `byte_offset` in `b`; an error if the range is outside it.
    pub fn read_f32(
        &self,
        b: BufferId,
        byte_offset: usize,
        len: usize,
    ) -> Result<Vec<f32>, SimError> {
        let r = self.range(b, byte_offset, len, 4, "reading")?;
        Ok(self.bufs[b][r]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Writes `data` starting at `byte_offset` in `b`; an error if the range is outside it.
    pub fn write_f32(
        &mut self,
        b: BufferId,
        byte_offset: usize,
        data: &[f32],
    ) -> Result<(), SimError> {
        let r = self.range(b, byte_offset, data.len(), 4, "writing")?;
        for (c, x) in self.bufs[b][r].chunks_exact_mut(4).zip(data) {
            c.copy_from_slice(&x.to_le_bytes());
        }
        Ok(())
    }

    /// `len` `i64`s starting at `byte_offset` in `b`; an error if the range is outside it.
    pub fn read_i64(
        &self,
        b: BufferId,
        byte_offset: usize,
        len: usize,
    ) -> Result<Vec<i64>, SimError> {
        let r = self.range(b, byte_offset, len, 8, "reading")?;
        Ok(self.bufs[b][r]
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    /// Writes `data` starting at `byte_offset` in `b`; an error if the range is outside it.
    pub fn write_i64(
        &mut self,
        b: BufferId,
        byte_offset: usize,
        data: &[i64],
    ) -> Result<(), SimError> {
        let r = self.range(b, byte_offset, data.len(), 8, "writing")?;
        for (c, x) in self.bufs[b][r].chunks_exact_mut(8).zip(data) {
            c.copy_from_slice(&x.to_le_bytes());
        }
        Ok(())
    }
}

/// Runs `k` over its whole grid with `args[i]` bound to parameter `i`.
///
/// Calls `k.check()` first (a malformed kernel becomes a [`SimError`] with `bx = by = thread =
/// 0`). Errors: a wrong number of arguments, a binding outside its buffer (or not aligned to its
/// element size), an out-of-bounds load or store (naming the parameter, the index and the bound),
/// integer division by zero, a loop step that is not positive, a divergent barrier, a divergent
/// or partial-warp shuffle, shared arrays over [`MAX_SHARED_BYTES`], a shared-memory data race,
/// a global-memory conflict between threads (see the module documentation). On an error, `mem`
/// keeps the stores made before it.
pub fn launch(k: &GpuKernel, args: &[Binding], mem: &mut DeviceMemory) -> Result<(), SimError> {
    let setup = |what: String| SimError {
        kernel: k.name.clone(),
        bx: 0,
        by: 0,
        thread: 0,
        what,
    };
    k.check()
        .map_err(|m| setup(format!("malformed kernel: {}", m.what)))?;
    let shared_bytes = k.shared.iter().try_fold(0usize, |n, a| {
        n.checked_add(a.len.checked_mul(elem_size(a.elem))?)
    });
    match shared_bytes {
        Some(n) if n <= MAX_SHARED_BYTES => {}
        _ => {
            return Err(setup(format!(
                "shared arrays of {} bytes in all (a block has at most {MAX_SHARED_BYTES})",
                shared_bytes.map_or("too many".to_string(), |n| n.to_string())
            )))
        }
    }
    if args.len() != k.params.len() {
        return Err(setup(format!(
            "{} arguments for {} parameters",
            args.len(),
            k.params.len()
        )));
    }

    // Bindings, checked against their buffers.
    let mut params = Vec::with_capacity(args.len());
    for (p, b) in k.params.iter().zip(args) {
        let size = elem_size(p.elem);
        if b.byte_offset % size != 0 {
            return Err(setup(format!(
                "`{}` is bound at byte {} of buffer {}, not a multiple of its element size {size}",
                p.name, b.byte_offset, b.buffer
            )));
        }
        mem.range(b.buffer, b.byte_offset, b.len, size, "binding")
            .map_err(|e| setup(format!("`{}`: {}", p.name, e.what)))?;
        params.push(ParamInfo {
            buffer: b.buffer,
            byte_offset: b.byte_offset,
            len: b.len,
            elem: p.elem,
            trackers: Vec::new(),
        });
    }

    // Trackers over the written parameters' bindings, overlapping ones merged (a load elsewhere
    // cannot see a write of this launch); each parameter knows the trackers its binding meets.
    let mut spans: Vec<(BufferId, usize, usize)> = k
        .params
        .iter()
        .zip(&params)
        .filter(|(p, info)| p.writes && info.len > 0)
        .map(|(_, info)| (info.buffer, info.first_word(), info.end_word()))
        .collect();
    spans.sort_unstable();
    let mut trackers: Vec<Tracker> = Vec::new();
    for (buffer, lo, hi) in spans {
        match trackers.last_mut() {
            Some(t) if t.buffer == buffer && lo < t.hi_word => t.hi_word = t.hi_word.max(hi),
            _ => trackers.push(Tracker {
                buffer,
                lo_word: lo,
                hi_word: hi,
                words: Vec::new(),
            }),
        }
    }
    for t in &mut trackers {
        t.words = vec![Owners::default(); t.hi_word - t.lo_word];
    }
    for info in &mut params {
        info.trackers = (0..trackers.len())
            .filter(|&i| {
                let t = &trackers[i];
                t.buffer == info.buffer
                    && info.first_word() < t.hi_word
                    && t.lo_word < info.end_word()
            })
            .collect();
    }

    let nt = k.block as usize;
    let mut sim = Sim {
        k,
        params,
        bufs: &mut mem.bufs,
        trackers,
        bx: 0,
        by: 0,
        block_linear: 0,
        nt,
        vars: Vec::with_capacity(nt * k.vars.len()),
        shared: k.shared.iter().map(|_| Vec::new()).collect(),
        epoch: 0,
        vals: Vec::new(),
        threads: Vec::new(),
    };
    let all: Vec<u32> = (0..k.block).collect();
    for by in 0..k.grid[1] {
        for bx in 0..k.grid[0] {
            sim.start_block(bx, by);
            sim.exec(&k.body, &all).map_err(|e| *e)?;
        }
    }
    Ok(())
}

fn elem_size(s: Scalar) -> usize {
    match s {
        Scalar::F32 => 4,
        Scalar::I64 => 8,
    }
}

/// A value of one of the two scalar types.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val {
    F(f32),
    I(i64),
}

impl Val {
    fn zero(s: Scalar) -> Val {
        match s {
            Scalar::F32 => Val::F(0.0),
            Scalar::I64 => Val::I(0),
        }
    }
}

/// A parameter's binding, checked.
struct ParamInfo {
    buffer: BufferId,
    byte_offset: usize,
    len: usize,
    elem: Scalar,
    /// The trackers its binding overlaps (one for a written parameter).
    trackers: Vec<usize>,
}

impl ParamInfo {
    /// The 4-byte words its binding covers.
    fn first_word(&self) -> usize {
        self.byte_offset / 4
    }
    fn end_word(&self) -> usize {
        (self.byte_offset + self.len * elem_size(self.elem)) / 4
    }
}

/// The owners of absolute word `word` of a parameter's buffer, if a tracker covers it.
fn owners<'t>(trackers: &'t mut [Tracker], which: &[usize], word: usize) -> Option<&'t mut Owners> {
    let i = *which
        .iter()
        .find(|&&i| trackers[i].lo_word <= word && word < trackers[i].hi_word)?;
    let t = &mut trackers[i];
    t.words.get_mut(word - t.lo_word)
}

/// Who touched a 4-byte word of global memory in this launch: 0 for nobody, else a global
/// thread id plus one ([`SEVERAL`] for readers: more than one thread).
#[derive(Debug, Clone, Copy, Default)]
struct Owners {
    writer: u64,
    reader: u64,
}

const SEVERAL: u64 = u64::MAX;

/// The owners of the words `lo_word..hi_word` of a buffer (the span of one or more overlapping
/// bindings of written parameters).
struct Tracker {
    buffer: BufferId,
    lo_word: usize,
    hi_word: usize,
    words: Vec<Owners>,
}

/// One shared-memory element and who touched it in which barrier epoch.
#[derive(Debug, Clone, Copy)]
struct Cell {
    val: Val,
    w_epoch: u64,
    writer: u32,
    r_epoch: u64,
    /// A thread, or [`SEVERAL_THREADS`].
    reader: u32,
}

const SEVERAL_THREADS: u32 = u32::MAX;

type R<T> = Result<T, Box<SimError>>;

/// The first of `active` (the thread an error not tied to one thread names).
fn first(active: &[u32]) -> u32 {
    active.first().copied().unwrap_or(0)
}

/// The state of one launch.
struct Sim<'a> {
    k: &'a GpuKernel,
    params: Vec<ParamInfo>,
    bufs: &'a mut [Vec<u8>],
    trackers: Vec<Tracker>,
    bx: u32,
    by: u32,
    /// `by * grid[0] + bx`.
    block_linear: u64,
    /// Threads per block.
    nt: usize,
    /// Thread `t`'s variable `v` is `vars[v * nt + t]`.
    vars: Vec<Val>,
    shared: Vec<Vec<Cell>>,
    /// The current barrier epoch (unique over the launch: every block starts a new one).
    epoch: u64,
    /// Spare vectors for the values of sub-expressions and for thread subsets, so that running
    /// a statement allocates nothing once warm.
    vals: Vec<Vec<Val>>,
    threads: Vec<Vec<u32>>,
}

impl Sim<'_> {
    fn start_block(&mut self, bx: u32, by: u32) {
        self.bx = bx;
        self.by = by;
        self.block_linear = u64::from(by) * u64::from(self.k.grid[0]) + u64::from(bx);
        self.vars.clear();
        for &s in &self.k.vars {
            self.vars.extend(std::iter::repeat_n(Val::zero(s), self.nt));
        }
        self.epoch += 1;
        for (cells, a) in self.shared.iter_mut().zip(&self.k.shared) {
            cells.clear();
            cells.resize(
                a.len,
                Cell {
                    val: Val::zero(a.elem),
                    w_epoch: 0,
                    writer: 0,
                    r_epoch: 0,
                    reader: 0,
                },
            );
        }
    }

    fn fail(&self, thread: u32, what: String) -> Box<SimError> {
        Box::new(SimError {
            kernel: self.k.name.clone(),
            bx: self.bx,
            by: self.by,
            thread,
            what,
        })
    }

    /// An impossible state for a kernel that passed `check()`.
    fn internal(&self, thread: u32, what: &str) -> Box<SimError> {
        self.fail(
            thread,
            format!("internal error: {what} (in a checked kernel)"),
        )
    }

    /// This block's thread `t` as one id over the grid, plus one (0 means nobody).
    fn global_id(&self, t: u32) -> u64 {
        self.block_linear * u64::from(self.k.block) + u64::from(t) + 1
    }

    fn describe(&self, owner: u64) -> String {
        if owner == SEVERAL {
            return "several threads".into();
        }
        let id = owner - 1;
        let block = u64::from(self.k.block);
        let (blk, t) = (id / block, id % block);
        let gx = u64::from(self.k.grid[0]);
        format!("block ({}, {}) thread {t}", blk % gx, blk / gx)
    }

    /// Where variable `v` of thread 0 is (thread `t`'s is `t` further).
    fn var_base(&self, v: Var, t: u32) -> R<usize> {
        let v = v.0 as usize;
        if v >= self.k.vars.len() {
            return Err(self.internal(t, &format!("variable v{v} is not declared")));
        }
        Ok(v * self.nt)
    }

    fn take_vals(&mut self) -> Vec<Val> {
        let mut v = self.vals.pop().unwrap_or_default();
        v.clear();
        v
    }

    fn take_threads(&mut self) -> Vec<u32> {
        let mut v = self.threads.pop().unwrap_or_default();
        v.clear();
        v
    }

    fn int(&self, x: Val, t: u32) -> R<i64> {
        match x {
            Val::I(i) => Ok(i),
            Val::F(_) => Err(self.internal(t, "an f32 index, condition or loop bound")),
        }
    }

    /// Splits `active` by `cond`, evaluated for each of them: (true, false).
    fn split(&mut self, cond: &Expr, active: &[u32]) -> R<(Vec<u32>, Vec<u32>)> {
        let mut c = self.take_vals();
        self.eval(cond, active, &mut c)?;
        let (mut yes, mut no) = (self.take_threads(), self.take_threads());
        for (&x, &t) in c.iter().zip(active) {
            if self.int(x, t)? != 0 {
                yes.push(t);
            } else {
                no.push(t);
            }
        }
        self.vals.push(c);
        Ok((yes, no))
    }

    // Statements.

    /// Runs `body` for the threads `active` (ascending, distinct) of the current block.
    fn exec(&mut self, body: &[Stmt], active: &[u32]) -> R<()> {
        for s in body {
            match s {
                Stmt::Assign { var, value } => {
                    let base = self.var_base(*var, first(active))?;
                    let mut x = self.take_vals();
                    self.eval(value, active, &mut x)?;
                    for (&x, &t) in x.iter().zip(active) {
                        self.vars[base + t as usize] = x;
                    }
                    self.vals.push(x);
                }
                Stmt::Store {
                    param,
                    index,
                    value,
                } => {
                    let (mut i, mut x) = (self.take_vals(), self.take_vals());
                    self.eval(index, active, &mut i)?;
                    self.eval(value, active, &mut x)?;
                    for ((&i, &x), &t) in i.iter().zip(&x).zip(active) {
                        let i = self.int(i, t)?;
                        self.store(*param, i, x, t)?;
                    }
                    self.vals.push(i);
                    self.vals.push(x);
                }
                Stmt::StoreShared {
                    array,
                    index,
                    value,
                } => {
                    let (mut i, mut x) = (self.take_vals(), self.take_vals());
                    self.eval(index, active, &mut i)?;
                    self.eval(value, active, &mut x)?;
                    for ((&i, &x), &t) in i.iter().zip(&x).zip(active) {
                        let i = self.int(i, t)?;
                        self.store_shared(*array, i, x, t)?;
                    }
                    self.vals.push(i);
                    self.vals.push(x);
                }
                Stmt::If { cond, then, els } => {
                    let (yes, no) = self.split(cond, active)?;
                    if !yes.is_empty() {
                        self.exec(then, &yes)?;
                    }
                    if !no.is_empty() {
                        self.exec(els, &no)?;
                    }
                    self.threads.push(yes);
                    self.threads.push(no);
                }
                Stmt::For {
                    var,
                    start,
                    end,
                    step,
                    body,
                } => self.exec_for(*var, start, end, step, body, active)?,
                Stmt::SyncThreads => {
                    if active.len() != self.nt {
                        return Err(self.fail(
                            first(active),
                            format!(
                                "a barrier reached by only {} of {} threads (divergent \
                                 __syncthreads)",
                                active.len(),
                                self.nt
                            ),
                        ));
                    }
                    self.epoch += 1;
                }
                Stmt::ShflXor {
                    dst,
                    src,
                    lane_mask,
                } => self.exec_shfl(*dst, *src, *lane_mask, active)?,
            }
        }
        Ok(())
    }

    fn exec_for(
        &mut self,
        var: Var,
        start: &Expr,
        end: &Expr,
        step: &Expr,
        body: &[Stmt],
        active: &[u32],
    ) -> R<()> {
        let base = self.var_base(var, first(active))?;
        let (mut s, mut e, mut st) = (self.take_vals(), self.take_vals(), self.take_vals());
        self.eval(start, active, &mut s)?;
        self.eval(end, active, &mut e)?;
        self.eval(step, active, &mut st)?;
        // Each thread's (end, step), and its variable set to its start.
        let mut bounds = Vec::with_capacity(active.len());
        for (((&s, &e), &st), &t) in s.iter().zip(&e).zip(&st).zip(active) {
            let (s, e, st) = (self.int(s, t)?, self.int(e, t)?, self.int(st, t)?);
            if st <= 0 {
                return Err(self.fail(
                    t,
                    format!("a loop step of {st} (it must be positive) for v{}", var.0),
                ));
            }
            self.vars[base + t as usize] = Val::I(s);
            bounds.push((e, st));
        }
        self.vals.extend([s, e, st]);
        // The threads still in the loop, with their bounds; a thread leaves for good once its
        // variable reaches its bound.
        let mut in_loop = self.take_threads();
        in_loop.extend_from_slice(active);
        let mut now = self.take_threads();
        let mut now_bounds = Vec::with_capacity(active.len());
        loop {
            now.clear();
            now_bounds.clear();
            for (&t, &(e, st)) in in_loop.iter().zip(&bounds) {
                if self.int(self.vars[base + t as usize], t)? < e {
                    now.push(t);
                    now_bounds.push((e, st));
                }
            }
            if now.is_empty() {
                break;
            }
            self.exec(body, &now)?;
            for (&t, &(_, st)) in now.iter().zip(&now_bounds) {
                let slot = base + t as usize;
                // Saturating: a variable that would pass i64::MAX has passed any bound.
                let v = self.int(self.vars[slot], t)?.saturating_add(st);
                self.vars[slot] = Val::I(v);
            }
            std::mem::swap(&mut in_loop, &mut now);
            std::mem::swap(&mut bounds, &mut now_bounds);
        }
        self.threads.push(in_loop);
        self.threads.push(now);
        Ok(())
    }

    fn exec_shfl(&mut self, dst: Var, src: Var, lane_mask: u32, active: &[u32]) -> R<()> {
        let (dst, src) = (
            self.var_base(dst, first(active))?,
            self.var_base(src, first(active))?,
        );
        let mut i = 0;
        while i < active.len() {
            let warp = active[i] / WARP;
            let n = active[i..]
                .iter()
                .take_while(|&&t| t / WARP == warp)
                .count();
            if n != WARP as usize {
                return Err(self.fail(
                    active[i],
                    format!(
                        "a shuffle with only {n} of {WARP} lanes active (warp {warp}; \
                         __shfl_xor_sync needs the whole warp)"
                    ),
                ));
            }
            let first = (warp * WARP) as usize;
            let mut vals = [Val::I(0); WARP as usize];
            vals.copy_from_slice(&self.vars[src + first..src + first + WARP as usize]);
            for lane in 0..WARP as usize {
                self.vars[dst + first + lane] = vals[(lane ^ lane_mask as usize) % WARP as usize];
            }
            i += n;
        }
        Ok(())
    }

    // Expressions.

    /// `out[j]` = the value of `e` for thread `active[j]`, evaluated a node at a time for all
    /// of them (errors: the first thread, in thread order, of the first node that fails).
    fn eval(&mut self, e: &Expr, active: &[u32], out: &mut Vec<Val>) -> R<()> {
        out.clear();
        match e {
            Expr::F32(x) => out.resize(active.len(), Val::F(*x)),
            Expr::I64(i) => out.resize(active.len(), Val::I(*i)),
            Expr::Var(v) => {
                let base = self.var_base(*v, first(active))?;
                out.extend(active.iter().map(|&t| self.vars[base + t as usize]));
            }
            Expr::Special(s) => {
                let same = |x: u32| Val::I(i64::from(x));
                match s {
                    Special::Thread => out.extend(active.iter().map(|&t| same(t))),
                    Special::BlockX => out.resize(active.len(), same(self.bx)),
                    Special::BlockY => out.resize(active.len(), same(self.by)),
                    Special::BlockDim => out.resize(active.len(), same(self.k.block)),
                    Special::GridX => out.resize(active.len(), same(self.k.grid[0])),
                    Special::GridY => out.resize(active.len(), same(self.k.grid[1])),
                }
            }
            Expr::Load { param, index } => {
                self.eval(index, active, out)?;
                for (x, &t) in out.iter_mut().zip(active) {
                    let i = self.int(*x, t)?;
                    *x = self.load(*param, i, t)?;
                }
            }
            Expr::LoadShared { array, index } => {
                self.eval(index, active, out)?;
                for (x, &t) in out.iter_mut().zip(active) {
                    let i = self.int(*x, t)?;
                    *x = self.load_shared(*array, i, t)?;
                }
            }
            Expr::Unary(op, a) => {
                self.eval(a, active, out)?;
                for (x, &t) in out.iter_mut().zip(active) {
                    *x = unary(*op, *x).map_err(|w| self.internal(t, &w))?;
                }
            }
            Expr::Binary(op, a, b) => {
                self.eval(a, active, out)?;
                let mut y = self.take_vals();
                self.eval(b, active, &mut y)?;
                if let Err(j) = binary_all(*op, out, &y) {
                    let (t, x, y) = (active[j], out[j], y[j]);
                    return Err(match (x, y) {
                        (Val::I(x), Val::I(0)) => self.fail(
                            t,
                            format!(
                                "integer division by zero ({x} {} 0)",
                                if *op == BinOp::Rem { "%" } else { "/" }
                            ),
                        ),
                        _ => self.internal(t, &format!("{op:?} of {x:?} and {y:?}")),
                    });
                }
                self.vals.push(y);
            }
            // Each thread evaluates only the arm it picks: a guarded load is safe.
            Expr::Select { cond, then, els } => {
                let (yes, no) = self.split(cond, active)?;
                let (mut a, mut b) = (self.take_vals(), self.take_vals());
                if !yes.is_empty() {
                    self.eval(then, &yes, &mut a)?;
                }
                if !no.is_empty() {
                    self.eval(els, &no, &mut b)?;
                }
                // Merge back into thread order.
                let (mut ia, mut ib) = (a.iter(), b.iter());
                let mut yes_left = yes.iter().peekable();
                for &t in active {
                    let x = if yes_left.next_if_eq(&&t).is_some() {
                        ia.next()
                    } else {
                        ib.next()
                    };
                    match x {
                        Some(&x) => out.push(x),
                        None => return Err(self.internal(t, "a select lost a value")),
                    }
                }
                self.vals.push(a);
                self.vals.push(b);
                self.threads.push(yes);
                self.threads.push(no);
            }
        }
        Ok(())
    }

    // Global memory.

    /// The byte address of element `index` of parameter `p`, checked against its bound: its
    /// buffer, address, type and whether a tracker may cover it.
    #[inline]
    fn address(&self, p: usize, index: i64, t: u32) -> R<(usize, usize, Scalar, bool)> {
        let Some(info) = self.params.get(p) else {
            return Err(self.internal(t, &format!("no parameter {p}")));
        };
        match usize::try_from(index) {
            Ok(i) if i < info.len => Ok((
                info.buffer,
                info.byte_offset + i * elem_size(info.elem),
                info.elem,
                !info.trackers.is_empty(),
            )),
            _ => Err(self.fail(
                t,
                format!(
                    "`{}`[{index}] is out of bounds (length {})",
                    self.k.params[p].name, info.len
                ),
            )),
        }
    }

    #[inline]
    fn load(&mut self, p: usize, index: i64, t: u32) -> R<Val> {
        let (buf, addr, elem, tracked) = self.address(p, index, t)?;
        if tracked {
            let me = self.global_id(t);
            let mut clash = None;
            for w in addr / 4..(addr + elem_size(elem)) / 4 {
                let which = &self.params[p].trackers;
                if let Some(o) = owners(&mut self.trackers, which, w) {
                    if o.writer != 0 && o.writer != me {
                        clash = Some(o.writer);
                        break;
                    }
                    o.reader = match o.reader {
                        0 => me,
                        r if r == me => me,
                        _ => SEVERAL,
                    };
                }
            }
            if let Some(w) = clash {
                return Err(self.fail(
                    t,
                    format!(
                        "`{}`[{index}] (buffer {buf}, byte {addr}) read by {} after {} wrote it \
                         in one launch (no grid-wide barrier)",
                        self.k.params[p].name,
                        self.describe(me),
                        self.describe(w)
                    ),
                ));
            }
        }
        let bytes = self.bufs.get(buf).and_then(|b| b.get(addr..));
        Ok(match (elem, bytes) {
            (Scalar::F32, Some(&[a, b, c, d, ..])) => Val::F(f32::from_le_bytes([a, b, c, d])),
            (Scalar::I64, Some(&[a, b, c, d, e, f, g, h, ..])) => {
                Val::I(i64::from_le_bytes([a, b, c, d, e, f, g, h]))
            }
            _ => return Err(self.internal(t, "a load outside a checked binding")),
        })
    }

    fn store(&mut self, p: usize, index: i64, x: Val, t: u32) -> R<()> {
        let (buf, addr, elem, tracked) = self.address(p, index, t)?;
        if tracked {
            let me = self.global_id(t);
            let mut clash = None;
            for w in addr / 4..(addr + elem_size(elem)) / 4 {
                let which = &self.params[p].trackers;
                if let Some(o) = owners(&mut self.trackers, which, w) {
                    if o.writer != 0 && o.writer != me {
                        clash = Some((o.writer, "written"));
                        break;
                    }
                    if o.reader != 0 && o.reader != me {
                        clash = Some((o.reader, "read"));
                        break;
                    }
                    o.writer = me;
                }
            }
            if let Some((other, did)) = clash {
                let also = if did == "written" { "" } else { " written" };
                return Err(self.fail(
                    t,
                    format!(
                        "`{}`[{index}] (buffer {buf}, byte {addr}) {did} by {} and{also} by {} \
                         in one launch (no grid-wide barrier)",
                        self.k.params[p].name,
                        self.describe(other),
                        self.describe(me)
                    ),
                ));
            }
        }
        let size = elem_size(elem);
        let Some(dst) = self
            .bufs
            .get_mut(buf)
            .and_then(|b| b.get_mut(addr..addr + size))
        else {
            return Err(self.internal(t, "a store outside a checked binding"));
        };
        match x {
            Val::F(f) if size == 4 => dst.copy_from_slice(&f.to_le_bytes()),
            Val::I(i) if size == 8 => dst.copy_from_slice(&i.to_le_bytes()),
            _ => return Err(self.internal(t, "a store of the wrong type")),
        }
        Ok(())
    }

    // Shared memory.

    fn shared_index(&self, a: usize, index: i64, t: u32) -> R<usize> {
        let Some(cells) = self.shared.get(a) else {
            return Err(self.internal(t, &format!("no shared array {a}")));
        };
        match usize::try_from(index) {
            Ok(i) if i < cells.len() => Ok(i),
            _ => Err(self.fail(
                t,
                format!(
                    "shared array {a} index {index} is out of bounds (length {})",
                    cells.len()
                ),
            )),
        }
    }

    fn load_shared(&mut self, a: usize, index: i64, t: u32) -> R<Val> {
        let i = self.shared_index(a, index, t)?;
        let epoch = self.epoch;
        let c = &mut self.shared[a][i];
        if c.w_epoch == epoch && c.writer != t {
            let w = c.writer;
            return Err(self.fail(
                t,
                format!(
                    "shared array {a}[{i}]: read by thread {t} after thread {w} wrote it with no \
                     barrier between (a race)"
                ),
            ));
        }
        if c.r_epoch != epoch {
            c.r_epoch = epoch;
            c.reader = t;
        } else if c.reader != t {
            c.reader = SEVERAL_THREADS;
        }
        Ok(c.val)
    }

    fn store_shared(&mut self, a: usize, index: i64, x: Val, t: u32) -> R<()> {
        let i = self.shared_index(a, index, t)?;
        let epoch = self.epoch;
        let c = &mut self.shared[a][i];
        let clash = if c.w_epoch == epoch && c.writer != t {
            Some(format!("thread {} wrote", c.writer))
        } else if c.r_epoch == epoch && c.reader != t {
            Some(match c.reader {
                SEVERAL_THREADS => "other threads read".to_string(),
                r => format!("thread {r} read"),
            })
        } else {
            None
        };
        if let Some(other) = clash {
            return Err(self.fail(
                t,
                format!(
                    "shared array {a}[{i}]: written by thread {t} after {other} it with no \
                     barrier between (a race)"
                ),
            ));
        }
        if std::mem::discriminant(&c.val) != std::mem::discriminant(&x) {
            return Err(self.internal(t, "a shared store of the wrong type"));
        }
        c.val = x;
        c.w_epoch = epoch;
        c.writer = t;
        Ok(())
    }
}

fn unary(op: UnOp, a: Val) -> Result<Val, String> {
    Ok(match (op, a) {
        (UnOp::Neg, Val::F(x)) => Val::F(-x),
        (UnOp::Exp, Val::F(x)) => Val::F(x.exp()),
        (UnOp::Sqrt, Val::F(x)) => Val::F(x.sqrt()),
        (UnOp::Tanh, Val::F(x)) => Val::F(x.tanh()),
        (UnOp::Erf, Val::F(x)) => Val::F(libm::erff(x)),
        (UnOp::Abs, Val::F(x)) => Val::F(x.abs()),
        (UnOp::ToI64, Val::F(x)) => Val::I(x as i64),
        (UnOp::Neg, Val::I(i)) => Val::I(i.wrapping_neg()),
        (UnOp::Abs, Val::I(i)) => Val::I(i.wrapping_abs()),
        (UnOp::ToF32, Val::I(i)) => Val::F(i as f32),
        (op, a) => return Err(format!("{op:?} of {a:?}")),
    })
}

/// `xs[j] = xs[j] op ys[j]` for all `j`, or the first `j` where that fails (a division by
/// zero, or operands of the wrong types), leaving `xs[j]` as it was.
fn binary_all(op: BinOp, xs: &mut [Val], ys: &[Val]) -> Result<(), usize> {
    // One loop per operator, so that the operator is not dispatched per element.
    fn each(xs: &mut [Val], ys: &[Val], f: impl Fn(Val, Val) -> Option<Val>) -> Result<(), usize> {
        for (j, (x, &y)) in xs.iter_mut().zip(ys).enumerate() {
            *x = f(*x, y).ok_or(j)?;
        }
        Ok(())
    }
    match op {
        BinOp::Add => each(xs, ys, |a, b| binary(BinOp::Add, a, b)),
        BinOp::Sub => each(xs, ys, |a, b| binary(BinOp::Sub, a, b)),
        BinOp::Mul => each(xs, ys, |a, b| binary(BinOp::Mul, a, b)),
        BinOp::Div => each(xs, ys, |a, b| binary(BinOp::Div, a, b)),
        BinOp::Rem => each(xs, ys, |a, b| binary(BinOp::Rem, a, b)),
        BinOp::Max => each(xs, ys, |a, b| binary(BinOp::Max, a, b)),
        BinOp::Min => each(xs, ys, |a, b| binary(BinOp::Min, a, b)),
        BinOp::Lt => each(xs, ys, |a, b| binary(BinOp::Lt, a, b)),
        BinOp::Le => each(xs, ys, |a, b| binary(BinOp::Le, a, b)),
        BinOp::Eq => each(xs, ys, |a, b| binary(BinOp::Eq, a, b)),
        BinOp::Ne => each(xs, ys, |a, b| binary(BinOp::Ne, a, b)),
        BinOp::And => each(xs, ys, |a, b| binary(BinOp::And, a, b)),
        BinOp::Or => each(xs, ys, |a, b| binary(BinOp::Or, a, b)),
    }
}

/// `a op b`, or `None` for a division by zero or operands of the wrong types.
#[inline(always)]
fn binary(op: BinOp, a: Val, b: Val) -> Option<Val> {
    let flag = |c: bool| Val::I(i64::from(c));
    Some(match (a, b) {
        (Val::F(x), Val::F(y)) => match op {
            BinOp::Add => Val::F(x + y),
            BinOp::Sub => Val::F(x - y),
            BinOp::Mul => Val::F(x * y),
            BinOp::Div => Val::F(x / y),
            // Like fmaxf/fminf: a NaN operand loses.
            BinOp::Max => Val::F(x.max(y)),
            BinOp::Min => Val::F(x.min(y)),
            BinOp::Lt => flag(x < y),
            BinOp::Le => flag(x <= y),
            BinOp::Eq => flag(x == y),
            BinOp::Ne => flag(x != y),
            BinOp::Rem | BinOp::And | BinOp::Or => return None,
        },
        (Val::I(x), Val::I(y)) => match op {
            BinOp::Add => Val::I(x.wrapping_add(y)),
            BinOp::Sub => Val::I(x.wrapping_sub(y)),
            BinOp::Mul => Val::I(x.wrapping_mul(y)),
            BinOp::Div | BinOp::Rem if y == 0 => return None,
            BinOp::Div => Val::I(x.wrapping_div(y)),
            BinOp::Rem => Val::I(x.wrapping_rem(y)),
            BinOp::Max => Val::I(x.max(y)),
            BinOp::Min => Val::I(x.min(y)),
            BinOp::Lt => flag(x < y),
            BinOp::Le => flag(x <= y),
            BinOp::Eq => flag(x == y),
            BinOp::Ne => flag(x != y),
            BinOp::And => flag(x != 0 && y != 0),
            BinOp::Or => flag(x != 0 || y != 0),
        },
        _ => return None,
    })
}
