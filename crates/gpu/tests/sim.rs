//! The CPU simulator: correct kernels give the right numbers, and every error it promises to
//! report is reported (with a message saying what and where).

use attnopt_gpu::kir::{BinOp, Expr, GpuKernel, Param, Scalar, Shared, Special, Stmt, UnOp, Var};
use attnopt_gpu::sim::{launch, Binding, DeviceMemory, SimError, MAX_SHARED_BYTES};

// Building kernels.

fn param(name: &str, elem: Scalar, writes: bool) -> Param {
    Param {
        name: name.into(),
        elem,
        writes,
    }
}

fn kernel(
    params: Vec<Param>,
    vars: Vec<Scalar>,
    shared: Vec<Shared>,
    grid: [u32; 2],
    block: u32,
    body: Vec<Stmt>,
) -> GpuKernel {
    GpuKernel {
        name: "k".into(),
        doc: vec![],
        params,
        vars,
        shared,
        grid,
        block,
        body,
    }
}

fn f(x: f32) -> Expr {
    Expr::F32(x)
}
fn i(x: i64) -> Expr {
    Expr::I64(x)
}
fn v(n: u32) -> Expr {
    Expr::Var(Var(n))
}
fn sp(s: Special) -> Expr {
    Expr::Special(s)
}
fn tid() -> Expr {
    sp(Special::Thread)
}
/// `blockIdx.x * blockDim.x + threadIdx.x`.
fn gid() -> Expr {
    sp(Special::BlockX).mul(sp(Special::BlockDim)).add(tid())
}
fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::bin(op, a, b)
}
fn assign(n: u32, value: Expr) -> Stmt {
    Stmt::Assign { var: Var(n), value }
}
fn store(param: usize, index: Expr, value: Expr) -> Stmt {
    Stmt::Store {
        param,
        index,
        value,
    }
}
fn store_shared(array: usize, index: Expr, value: Expr) -> Stmt {
    Stmt::StoreShared {
        array,
        index,
        value,
    }
}
fn if_(cond: Expr, then: Vec<Stmt>) -> Stmt {
    Stmt::If {
        cond,
        then,
        els: vec![],
    }
}
fn for_(n: u32, start: Expr, end: Expr, step: Expr, body: Vec<Stmt>) -> Stmt {
    Stmt::For {
        var: Var(n),
        start,
        end,
        step,
        body,
    }
}
fn shfl(dst: u32, src: u32, lane_mask: u32) -> Stmt {
    Stmt::ShflXor {
        dst: Var(dst),
        src: Var(src),
        lane_mask,
    }
}
fn shared(elem: Scalar, len: usize) -> Shared {
    Shared { elem, len }
}
fn bind(buffer: usize, byte_offset: usize, len: usize) -> Binding {
    Binding {
        buffer,
        byte_offset,
        len,
    }
}

/// A new buffer holding `data`, bound whole.
fn f32_buffer(mem: &mut DeviceMemory, data: &[f32]) -> Binding {
    let b = mem.alloc(data.len() * 4);
    mem.write_f32(b, 0, data).unwrap();
    bind(b, 0, data.len())
}

fn read(mem: &DeviceMemory, b: Binding) -> Vec<f32> {
    mem.read_f32(b.buffer, b.byte_offset, b.len).unwrap()
}

fn fails(k: &GpuKernel, args: &[Binding], mem: &mut DeviceMemory) -> SimError {
    match launch(k, args, mem) {
        Ok(()) => panic!("the kernel ran without an error"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_contains(e: &SimError, what: &str) {
    assert!(e.what.contains(what), "{e} does not say {what:?}");
}

// Correct kernels.

/// `c[i] = a[i] + b[i]` for `i < n`, over a grid with more threads than elements; the three
/// parameters live in one buffer at different offsets.
fn vec_add(guarded: bool) -> GpuKernel {
    let n = 1000;
    let st = store(2, v(0), Expr::load(0, v(0)).add(Expr::load(1, v(0))));
    kernel(
        vec![
            param("a", Scalar::F32, false),
            param("b", Scalar::F32, false),
            param("c", Scalar::F32, true),
        ],
        vec![Scalar::I64],
        vec![],
        [8, 1],
        128,
        vec![
            assign(0, gid()),
            if guarded {
                if_(v(0).lt(i(n)), vec![st])
            } else {
                st
            },
        ],
    )
}

#[test]
fn vector_add_over_a_grid_with_a_bounds_guard() {
    let n = 1000;
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(3 * n * 4 + 16);
    let a: Vec<f32> = (0..n).map(|x| x as f32 * 0.5).collect();
    let b: Vec<f32> = (0..n).map(|x| 3.0 - x as f32).collect();
    mem.write_f32(buf, 0, &a).unwrap();
    mem.write_f32(buf, n * 4, &b).unwrap();
    let args = [
        bind(buf, 0, n),
        bind(buf, n * 4, n),
        bind(buf, 2 * n * 4, n),
    ];
    launch(&vec_add(true), &args, &mut mem).unwrap();
    let c = read(&mem, args[2]);
    for x in 0..n {
        assert_eq!(c[x], a[x] + b[x], "c[{x}]");
    }
    // The bytes past `c` are untouched.
    assert_eq!(mem.read_f32(buf, 3 * n * 4, 4).unwrap(), vec![0.0; 4]);
}

/// Each block sums its 256 elements of `x` into `out[block]`: a shuffle tree in each warp, lane
/// 0 writes the warp's sum to shared memory, a barrier, thread 0 adds the warps' sums.
#[test]
fn block_reduction_with_shuffles_shared_memory_and_a_barrier() {
    let (gx, gy, block) = (3u32, 2u32, 256u32);
    let blocks = (gx * gy) as usize;
    let (val, tmp, w, s, base) = (0, 1, 2, 3, 4);
    let block_linear = || {
        sp(Special::BlockY)
            .mul(sp(Special::GridX))
            .add(sp(Special::BlockX))
    };
    let mut body = vec![
        assign(base, block_linear().mul(sp(Special::BlockDim))),
        assign(val, Expr::load(0, v(base).add(tid()))),
    ];
    for m in [16, 8, 4, 2, 1] {
        body.push(shfl(tmp, val, m));
        body.push(assign(val, v(val).add(v(tmp))));
    }
    body.extend([
        if_(
            bin(BinOp::Eq, tid().rem(i(32)), i(0)),
            vec![store_shared(0, tid().div(i(32)), v(val))],
        ),
        Stmt::SyncThreads,
        if_(
            bin(BinOp::Eq, tid(), i(0)),
            vec![
                assign(s, f(0.0)),
                for_(
                    w,
                    i(0),
                    sp(Special::BlockDim).div(i(32)),
                    i(1),
                    vec![assign(s, v(s).add(Expr::load_shared(0, v(w))))],
                ),
                store(1, block_linear(), v(s)),
            ],
        ),
    ]);
    let k = kernel(
        vec![
            param("x", Scalar::F32, false),
            param("out", Scalar::F32, true),
        ],
        vec![
            Scalar::F32,
            Scalar::F32,
            Scalar::I64,
            Scalar::F32,
            Scalar::I64,
        ],
        vec![shared(Scalar::F32, 8)],
        [gx, gy],
        block,
        body,
    );
    let data: Vec<f32> = (0..blocks * block as usize)
        .map(|j| (j % 13) as f32 - 6.0 + (j / 256) as f32)
        .collect();
    let mut mem = DeviceMemory::new();
    let x = f32_buffer(&mut mem, &data);
    let out = f32_buffer(&mut mem, &vec![f32::NAN; blocks]);
    launch(&k, &[x, out], &mut mem).unwrap();
    let want: Vec<f32> = data.chunks(256).map(|c| c.iter().sum()).collect();
    assert_eq!(read(&mem, out), want);
}

#[test]
fn a_shuffle_into_its_own_source_swaps_lanes() {
    let k = kernel(
        vec![param("out", Scalar::F32, true)],
        vec![Scalar::F32],
        vec![],
        [1, 1],
        64,
        vec![
            assign(0, Expr::un(UnOp::ToF32, tid())),
            shfl(0, 0, 5),
            store(0, tid(), v(0)),
        ],
    );
    let mut mem = DeviceMemory::new();
    let out = f32_buffer(&mut mem, &[0.0; 64]);
    launch(&k, &[out], &mut mem).unwrap();
    let want: Vec<f32> = (0..64u32).map(|t| (t ^ 5) as f32).collect();
    assert_eq!(read(&mem, out), want);
}

#[test]
fn a_shuffle_by_whole_warps_only_is_fine() {
    // Warp 0 shuffles, warp 1 skips it: legal.
    let k = kernel(
        vec![param("out", Scalar::I64, true)],
        vec![Scalar::I64],
        vec![],
        [1, 1],
        64,
        vec![
            assign(0, tid()),
            if_(tid().lt(i(32)), vec![shfl(0, 0, 31)]),
            store(0, tid(), v(0)),
        ],
    );
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(64 * 8);
    launch(&k, &[bind(b, 0, 64)], &mut mem).unwrap();
    let want: Vec<i64> = (0..64).map(|t| if t < 32 { 31 - t } else { t }).collect();
    assert_eq!(mem.read_i64(b, 0, 64).unwrap(), want);
}

#[test]
fn a_select_only_loads_on_the_side_it_picks() {
    let n = 50;
    let k = kernel(
        vec![
            param("a", Scalar::F32, false),
            param("out", Scalar::F32, true),
        ],
        vec![],
        vec![],
        [1, 1],
        64,
        vec![store(
            1,
            tid(),
            Expr::select(tid().lt(i(n)), Expr::load(0, tid()), f(-1.0)),
        )],
    );
    let mut mem = DeviceMemory::new();
    let data: Vec<f32> = (0..n).map(|x| x as f32 + 0.25).collect();
    let a = f32_buffer(&mut mem, &data);
    let out = f32_buffer(&mut mem, &[0.0; 64]);
    launch(&k, &[a, out], &mut mem).unwrap();
    let want: Vec<f32> = (0..64)
        .map(|t| if t < n { t as f32 + 0.25 } else { -1.0 })
        .collect();
    assert_eq!(read(&mem, out), want);
}

/// `prefix[t] = x[0] + ... + x[t-1]` (a loop of `t` iterations) and `strided[t]` = the sum of
/// `x[t], x[t + 64], ...` below `n` (a grid-stride loop).
#[test]
fn loops_with_per_thread_bounds() {
    let n = 200;
    let (j, acc) = (0, 1);
    let k = kernel(
        vec![
            param("x", Scalar::F32, false),
            param("prefix", Scalar::F32, true),
            param("strided", Scalar::F32, true),
        ],
        vec![Scalar::I64, Scalar::F32],
        vec![],
        [1, 1],
        64,
        vec![
            assign(acc, f(0.0)),
            for_(
                j,
                i(0),
                tid(),
                i(1),
                vec![assign(acc, v(acc).add(Expr::load(0, v(j))))],
            ),
            store(1, tid(), v(acc)),
            assign(acc, f(0.0)),
            for_(
                j,
                tid(),
                i(n),
                sp(Special::BlockDim),
                vec![assign(acc, v(acc).add(Expr::load(0, v(j))))],
            ),
            store(2, tid(), v(acc)),
        ],
    );
    let data: Vec<f32> = (0..n).map(|x| (x % 7) as f32).collect();
    let mut mem = DeviceMemory::new();
    let x = f32_buffer(&mut mem, &data);
    let prefix = f32_buffer(&mut mem, &[0.0; 64]);
    let strided = f32_buffer(&mut mem, &[0.0; 64]);
    launch(&k, &[x, prefix, strided], &mut mem).unwrap();
    let want: Vec<f32> = (0..64).map(|t| data[..t].iter().sum()).collect();
    assert_eq!(read(&mem, prefix), want);
    let want: Vec<f32> = (0..64)
        .map(|t| data[t..].iter().step_by(64).sum())
        .collect();
    assert_eq!(read(&mem, strided), want);
}

/// A loop everyone runs the same number of times may hold barriers; each round writes shared
/// memory, syncs, reads a neighbour's element, syncs.
#[test]
fn barriers_in_a_uniform_loop() {
    let (r, acc) = (0, 1);
    let k = kernel(
        vec![param("out", Scalar::I64, true)],
        vec![Scalar::I64, Scalar::I64],
        vec![shared(Scalar::I64, 64)],
        [2, 1],
        64,
        vec![for_(
            r,
            i(1),
            i(4),
            i(1),
            vec![
                store_shared(0, tid(), v(r).mul(tid())),
                Stmt::SyncThreads,
                assign(
                    acc,
                    v(acc).add(Expr::load_shared(0, tid().add(i(1)).rem(i(64)))),
                ),
                Stmt::SyncThreads,
            ],
        )]
        .into_iter()
        .chain([store(0, gid(), v(acc))])
        .collect(),
    );
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(128 * 8);
    launch(&k, &[bind(b, 0, 128)], &mut mem).unwrap();
    let want: Vec<i64> = (0..128).map(|g| 6 * ((g % 64 + 1) % 64)).collect();
    assert_eq!(mem.read_i64(b, 0, 128).unwrap(), want);
}

/// `x_out[i] = 2 * x_in[i]` three times over, with `x_in` and `x_out` bound to one range: each
/// thread rereads and rewrites its own element, which is no conflict.
#[test]
fn an_in_place_kernel_through_two_aliasing_parameters() {
    let k = kernel(
        vec![
            param("x_in", Scalar::F32, false),
            param("x_out", Scalar::F32, true),
        ],
        vec![Scalar::I64],
        vec![],
        [2, 1],
        32,
        vec![for_(
            0,
            i(0),
            i(3),
            i(1),
            vec![store(1, gid(), Expr::load(0, gid()).mul(f(2.0)))],
        )],
    );
    let mut mem = DeviceMemory::new();
    let data: Vec<f32> = (0..64).map(|x| x as f32 - 10.0).collect();
    let x = f32_buffer(&mut mem, &data);
    launch(&k, &[x, x], &mut mem).unwrap();
    let want: Vec<f32> = data.iter().map(|x| x * 8.0).collect();
    assert_eq!(read(&mem, x), want);
}

/// Runs `cases` (one `I64` expression each) in one thread; their values.
fn eval_i64(cases: Vec<Expr>) -> Vec<i64> {
    let n = cases.len();
    let k = kernel(
        vec![param("out", Scalar::I64, true)],
        vec![],
        vec![],
        [1, 1],
        32,
        vec![if_(
            bin(BinOp::Eq, tid(), i(0)),
            cases
                .into_iter()
                .enumerate()
                .map(|(j, e)| store(0, i(j as i64), e))
                .collect(),
        )],
    );
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(n * 8);
    launch(&k, &[bind(b, 0, n)], &mut mem).unwrap();
    mem.read_i64(b, 0, n).unwrap()
}

#[test]
fn integer_arithmetic_wraps_and_truncates_like_c() {
    let (min, max) = (i64::MIN, i64::MAX);
    let cases = [
        (i(-7).div(i(2)), -3),
        (i(-7).rem(i(2)), -1),
        (i(7).div(i(-2)), -3),
        (i(7).rem(i(-2)), 1),
        (i(-7).div(i(-2)), 3),
        (i(-7).rem(i(-2)), -1),
        (i(min).div(i(-1)), min),
        (i(min).rem(i(-1)), 0),
        (i(max).add(i(1)), min),
        (i(min).sub(i(1)), max),
        (i(min).mul(i(-1)), min),
        (bin(BinOp::Max, i(-3), i(2)), 2),
        (bin(BinOp::Min, i(-3), i(2)), -3),
        (i(-3).lt(i(2)), 1),
        (bin(BinOp::Le, i(2), i(2)), 1),
        (bin(BinOp::Eq, i(2), i(3)), 0),
        (bin(BinOp::Ne, i(2), i(3)), 1),
        (bin(BinOp::And, i(2), i(0)), 0),
        (bin(BinOp::And, i(2), i(-1)), 1),
        (bin(BinOp::Or, i(0), i(0)), 0),
        (bin(BinOp::Or, i(0), i(5)), 1),
        (Expr::un(UnOp::Neg, i(5)), -5),
        (Expr::un(UnOp::Abs, i(-5)), 5),
        (Expr::un(UnOp::Abs, i(min)), min),
        (Expr::un(UnOp::ToI64, f(-2.7)), -2),
        (Expr::un(UnOp::ToI64, f(3.9)), 3),
        (Expr::un(UnOp::ToI64, f(f32::NAN)), 0),
        (Expr::un(UnOp::ToI64, f(1e30)), max),
    ];
    let (exprs, want): (Vec<Expr>, Vec<i64>) = cases.into_iter().unzip();
    assert_eq!(eval_i64(exprs), want);
}

#[test]
fn float_arithmetic_follows_ieee_and_fmaxf() {
    let exprs = vec![
        bin(BinOp::Max, f(f32::NAN), f(1.0)),
        bin(BinOp::Min, f(2.0), f(f32::NAN)),
        bin(BinOp::Max, f(1.0), f(f32::NAN)),
        bin(BinOp::Min, f(f32::NAN), f(2.0)),
        Expr::un(UnOp::ToF32, bin(BinOp::Ne, f(f32::NAN), f(f32::NAN))),
        Expr::un(UnOp::ToF32, bin(BinOp::Eq, f(f32::NAN), f(f32::NAN))),
        Expr::un(UnOp::ToF32, f(f32::NAN).lt(f(1.0))),
        Expr::un(UnOp::ToF32, bin(BinOp::Le, f(1.0), f(1.0))),
        Expr::un(UnOp::Erf, f(0.5)),
        Expr::un(UnOp::Exp, f(1.0)),
        Expr::un(UnOp::Sqrt, f(2.0)),
        Expr::un(UnOp::Tanh, f(0.5)),
        Expr::un(UnOp::Abs, f(-2.5)),
        Expr::un(UnOp::Neg, f(2.5)),
        f(1.0).div(f(0.0)),
        f(1.5).sub(f(0.25)).mul(f(2.0)),
        Expr::un(UnOp::ToF32, i(-3)),
    ];
    let n = exprs.len();
    let k = kernel(
        vec![param("out", Scalar::F32, true)],
        vec![],
        vec![],
        [1, 1],
        32,
        vec![if_(
            bin(BinOp::Eq, tid(), i(0)),
            exprs
                .into_iter()
                .enumerate()
                .map(|(j, e)| store(0, i(j as i64), e))
                .collect(),
        )],
    );
    let mut mem = DeviceMemory::new();
    let out = f32_buffer(&mut mem, &vec![0.0; n]);
    launch(&k, &[out], &mut mem).unwrap();
    let want = [
        1.0,
        2.0,
        1.0,
        2.0,
        1.0,
        0.0,
        0.0,
        1.0,
        libm::erff(0.5),
        1f32.exp(),
        2f32.sqrt(),
        0.5f32.tanh(),
        2.5,
        -2.5,
        f32::INFINITY,
        2.5,
        -3.0,
    ];
    assert_eq!(read(&mem, out), want);
    assert!((want[8] - 0.520_499_9).abs() < 1e-6);
}

#[test]
fn specials_give_the_launch_geometry() {
    let block_linear = sp(Special::BlockY)
        .mul(sp(Special::GridX))
        .add(sp(Special::BlockX));
    let first = bin(
        BinOp::And,
        bin(BinOp::Eq, block_linear.clone(), i(0)),
        bin(BinOp::Eq, tid(), i(0)),
    );
    let k = kernel(
        vec![
            param("ids", Scalar::I64, true),
            param("dims", Scalar::I64, true),
        ],
        vec![],
        vec![],
        [3, 2],
        64,
        vec![
            store(
                0,
                block_linear.mul(sp(Special::BlockDim)).add(tid()),
                tid()
                    .add(sp(Special::BlockX).mul(i(1000)))
                    .add(sp(Special::BlockY).mul(i(100_000))),
            ),
            if_(
                first,
                vec![
                    store(1, i(0), sp(Special::BlockDim)),
                    store(1, i(1), sp(Special::GridX)),
                    store(1, i(2), sp(Special::GridY)),
                ],
            ),
        ],
    );
    let mut mem = DeviceMemory::new();
    let ids = mem.alloc(6 * 64 * 8);
    let dims = mem.alloc(3 * 8);
    launch(&k, &[bind(ids, 0, 6 * 64), bind(dims, 0, 3)], &mut mem).unwrap();
    let want: Vec<i64> = (0..6 * 64)
        .map(|g| {
            let (blk, t) = (g / 64, g % 64);
            t + 1000 * (blk % 3) + 100_000 * (blk / 3)
        })
        .collect();
    assert_eq!(mem.read_i64(ids, 0, 6 * 64).unwrap(), want);
    assert_eq!(mem.read_i64(dims, 0, 3).unwrap(), vec![64, 3, 2]);
}

#[test]
fn if_and_else_send_each_thread_down_one_side() {
    let k = kernel(
        vec![param("out", Scalar::I64, true)],
        vec![],
        vec![],
        [1, 1],
        64,
        vec![Stmt::If {
            cond: bin(BinOp::Eq, tid().rem(i(2)), i(0)),
            then: vec![store(0, tid(), i(1))],
            els: vec![
                store(0, tid(), i(2)),
                if_(
                    tid().lt(i(10)),
                    vec![store(0, tid(), Expr::load(0, tid()).add(i(10)))],
                ),
            ],
        }],
    );
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(64 * 8);
    launch(&k, &[bind(b, 0, 64)], &mut mem).unwrap();
    let want: Vec<i64> = (0..64)
        .map(|t| match (t % 2, t < 10) {
            (0, _) => 1,
            (_, true) => 12,
            _ => 2,
        })
        .collect();
    assert_eq!(mem.read_i64(b, 0, 64).unwrap(), want);
}

/// The classic shared-memory tree: `s` halves from 32; threads below `s` add `sh[t + s]` into
/// `sh[t]`; a barrier after each step (outside the `if`).
#[test]
fn a_shared_memory_tree_reduction() {
    let (r, s) = (0, 1);
    let k = kernel(
        vec![
            param("x", Scalar::F32, false),
            param("out", Scalar::F32, true),
        ],
        vec![Scalar::I64, Scalar::I64],
        vec![shared(Scalar::F32, 64)],
        [2, 1],
        64,
        vec![
            store_shared(0, tid(), Expr::load(0, gid())),
            Stmt::SyncThreads,
            assign(s, i(32)),
            for_(
                r,
                i(0),
                i(6),
                i(1),
                vec![
                    if_(
                        tid().lt(v(s)),
                        vec![store_shared(
                            0,
                            tid(),
                            Expr::load_shared(0, tid()).add(Expr::load_shared(0, tid().add(v(s)))),
                        )],
                    ),
                    Stmt::SyncThreads,
                    assign(s, v(s).div(i(2))),
                ],
            ),
            if_(
                bin(BinOp::Eq, tid(), i(0)),
                vec![store(1, sp(Special::BlockX), Expr::load_shared(0, i(0)))],
            ),
        ],
    );
    let data: Vec<f32> = (0..128).map(|x| (x % 9) as f32 - 4.0).collect();
    let mut mem = DeviceMemory::new();
    let x = f32_buffer(&mut mem, &data);
    let out = f32_buffer(&mut mem, &[0.0; 2]);
    launch(&k, &[x, out], &mut mem).unwrap();
    let want: Vec<f32> = data.chunks(64).map(|c| c.iter().sum()).collect();
    assert_eq!(read(&mem, out), want);
    // Without the barrier in the loop, step 2 reads what step 1 wrote in another thread.
    let mut racy = k.clone();
    let Stmt::For { body, .. } = &mut racy.body[3] else {
        unreachable!()
    };
    body.remove(1);
    let e = fails(&racy, &[x, out], &mut mem);
    assert_contains(&e, "read by thread 0 after thread 16 wrote it");
}

/// Two outputs far apart in one arena, and an input bound over the whole of it: only elements
/// some other thread wrote conflict.
#[test]
fn outputs_far_apart_in_one_arena() {
    let k = |reader_index: i64| {
        kernel(
            vec![
                param("x", Scalar::F32, false),
                param("lo", Scalar::F32, true),
                param("hi", Scalar::F32, true),
            ],
            vec![Scalar::F32],
            vec![],
            [1, 1],
            32,
            vec![
                if_(
                    bin(BinOp::Eq, tid(), i(0)),
                    vec![store(1, i(0), f(1.0)), store(2, i(0), f(2.0))],
                ),
                if_(
                    bin(BinOp::Eq, tid(), i(1)),
                    vec![assign(0, Expr::load(0, i(reader_index)))],
                ),
            ],
        )
    };
    let mut mem = DeviceMemory::new();
    let arena = mem.alloc(1000 * 4);
    let args = [bind(arena, 0, 1000), bind(arena, 0, 4), bind(arena, 400, 4)];
    launch(&k(50), &args, &mut mem).unwrap();
    launch(&k(1), &args, &mut mem).unwrap();
    let e = fails(&k(100), &args, &mut mem);
    assert_contains(
        &e,
        "`x`[100] (buffer 0, byte 400) read by block (0, 0) thread 1",
    );
    let e = fails(&k(0), &args, &mut mem);
    assert_contains(
        &e,
        "`x`[0] (buffer 0, byte 0) read by block (0, 0) thread 1",
    );
}

/// A 64×64 by 64×64 matrix product, one thread per output: 262 144 inner iterations.
#[test]
fn a_matrix_product_runs_quickly_enough() {
    let n = 64i64;
    let (row, col, kk, acc) = (0, 1, 2, 3);
    let k = kernel(
        vec![
            param("a", Scalar::F32, false),
            param("b", Scalar::F32, false),
            param("c", Scalar::F32, true),
        ],
        vec![Scalar::I64, Scalar::I64, Scalar::I64, Scalar::F32],
        vec![],
        [(n * n / 128) as u32, 1],
        128,
        vec![
            assign(row, gid().div(i(n))),
            assign(col, gid().rem(i(n))),
            for_(
                kk,
                i(0),
                i(n),
                i(1),
                vec![assign(
                    acc,
                    v(acc).add(
                        Expr::load(0, v(row).mul(i(n)).add(v(kk)))
                            .mul(Expr::load(1, v(kk).mul(i(n)).add(v(col)))),
                    ),
                )],
            ),
            store(2, gid(), v(acc)),
        ],
    );
    let n = n as usize;
    let a: Vec<f32> = (0..n * n).map(|x| (x % 5) as f32 - 2.0).collect();
    let b: Vec<f32> = (0..n * n).map(|x| (x % 3) as f32).collect();
    let mut mem = DeviceMemory::new();
    let (ba, bb) = (f32_buffer(&mut mem, &a), f32_buffer(&mut mem, &b));
    let bc = f32_buffer(&mut mem, &vec![0.0; n * n]);
    launch(&k, &[ba, bb, bc], &mut mem).unwrap();
    let c = read(&mem, bc);
    for r in 0..n {
        for col in 0..n {
            let want: f32 = (0..n).map(|x| a[r * n + x] * b[x * n + col]).sum();
            assert_eq!(c[r * n + col], want);
        }
    }
}

// Errors.

#[test]
fn an_out_of_bounds_load_names_the_parameter_index_and_bound() {
    let n = 1000;
    let mut mem = DeviceMemory::new();
    let args = [0, 1, 2].map(|_| f32_buffer(&mut mem, &vec![1.0; n]));
    let e = fails(&vec_add(false), &args, &mut mem);
    assert_eq!(e.what, "`a`[1000] is out of bounds (length 1000)", "{e}");
    assert_eq!((e.kernel.as_str(), e.bx, e.by, e.thread), ("k", 7, 0, 104));
    assert_eq!(
        e.to_string(),
        "k: block (7, 0) thread 104: `a`[1000] is out of bounds (length 1000)"
    );
}

#[test]
fn a_negative_index_is_out_of_bounds() {
    let k = kernel(
        vec![param("a", Scalar::F32, true)],
        vec![Scalar::F32],
        vec![],
        [1, 1],
        32,
        vec![assign(0, Expr::load(0, tid().sub(i(1))))],
    );
    let mut mem = DeviceMemory::new();
    let a = f32_buffer(&mut mem, &[0.0; 32]);
    let e = fails(&k, &[a], &mut mem);
    assert_eq!(e.what, "`a`[-1] is out of bounds (length 32)");
    assert_eq!(e.thread, 0);
}

#[test]
fn an_out_of_bounds_store() {
    let k = kernel(
        vec![param("out", Scalar::F32, true)],
        vec![],
        vec![],
        [1, 1],
        64,
        vec![store(0, tid().add(i(1)), f(1.0))],
    );
    let mut mem = DeviceMemory::new();
    let out = f32_buffer(&mut mem, &[0.0; 64]);
    let e = fails(&k, &[out], &mut mem);
    assert_eq!(e.what, "`out`[64] is out of bounds (length 64)");
    assert_eq!(e.thread, 63);
    // The stores before it happened; nothing past the binding was touched.
    assert_eq!(read(&mem, out)[1..], [1.0; 63]);
}

#[test]
fn out_of_bounds_shared_accesses() {
    let store_k = kernel(
        vec![],
        vec![Scalar::F32],
        vec![shared(Scalar::F32, 32)],
        [1, 1],
        64,
        vec![store_shared(0, tid(), f(1.0))],
    );
    let mut mem = DeviceMemory::new();
    let e = fails(&store_k, &[], &mut mem);
    assert_eq!(
        e.what,
        "shared array 0 index 32 is out of bounds (length 32)"
    );
    assert_eq!(e.thread, 32);
    let load_k = kernel(
        vec![],
        vec![Scalar::F32],
        vec![shared(Scalar::F32, 32)],
        [1, 1],
        32,
        vec![assign(0, Expr::load_shared(0, tid().sub(i(3))))],
    );
    let e = fails(&load_k, &[], &mut mem);
    assert_eq!(
        e.what,
        "shared array 0 index -3 is out of bounds (length 32)"
    );
}

#[test]
fn a_barrier_some_threads_skip_is_divergent() {
    let k = kernel(
        vec![],
        vec![],
        vec![],
        [1, 1],
        64,
        vec![if_(tid().lt(i(16)), vec![Stmt::SyncThreads])],
    );
    let e = fails(&k, &[], &mut DeviceMemory::new());
    assert_eq!(
        e.what,
        "a barrier reached by only 16 of 64 threads (divergent __syncthreads)"
    );
}

#[test]
fn a_barrier_in_a_loop_with_per_thread_bounds_is_divergent() {
    let k = kernel(
        vec![],
        vec![Scalar::I64],
        vec![],
        [1, 1],
        64,
        vec![for_(0, i(0), tid(), i(1), vec![Stmt::SyncThreads])],
    );
    let e = fails(&k, &[], &mut DeviceMemory::new());
    assert_contains(&e, "a barrier reached by only 63 of 64 threads");
    assert_eq!(e.thread, 1);
}

#[test]
fn a_shuffle_with_part_of_a_warp_is_an_error() {
    let k = kernel(
        vec![],
        vec![Scalar::F32],
        vec![],
        [1, 1],
        64,
        vec![if_(tid().lt(i(48)), vec![shfl(0, 0, 1)])],
    );
    let e = fails(&k, &[], &mut DeviceMemory::new());
    assert_contains(&e, "a shuffle with only 16 of 32 lanes active");
    assert_eq!(e.thread, 32);
}

/// Thread 0 writes `s[0]`, then every thread reads it (a barrier between them or not).
fn publish(barrier: bool) -> GpuKernel {
    let mut body = vec![if_(
        bin(BinOp::Eq, tid(), i(0)),
        vec![store_shared(0, i(0), f(7.0))],
    )];
    if barrier {
        body.push(Stmt::SyncThreads);
    }
    body.push(store(0, tid(), Expr::load_shared(0, i(0))));
    kernel(
        vec![param("out", Scalar::F32, true)],
        vec![],
        vec![shared(Scalar::F32, 1)],
        [1, 1],
        32,
        body,
    )
}

#[test]
fn reading_another_threads_shared_write_without_a_barrier_is_a_race() {
    let mut mem = DeviceMemory::new();
    let out = f32_buffer(&mut mem, &[0.0; 32]);
    let e = fails(&publish(false), &[out], &mut mem);
    assert_eq!(
        e.what,
        "shared array 0[0]: read by thread 1 after thread 0 wrote it with no barrier between \
         (a race)"
    );
    assert_eq!(e.thread, 1);
}

#[test]
fn a_barrier_between_a_shared_write_and_reads_is_no_race() {
    let mut mem = DeviceMemory::new();
    let out = f32_buffer(&mut mem, &[0.0; 32]);
    launch(&publish(true), &[out], &mut mem).unwrap();
    assert_eq!(read(&mem, out), vec![7.0; 32]);
}

#[test]
fn two_threads_writing_one_shared_element_race() {
    let k = kernel(
        vec![],
        vec![],
        vec![shared(Scalar::I64, 1)],
        [1, 1],
        32,
        vec![store_shared(0, i(0), tid())],
    );
    let e = fails(&k, &[], &mut DeviceMemory::new());
    assert_contains(
        &e,
        "shared array 0[0]: written by thread 1 after thread 0 wrote it with no barrier",
    );
}

/// Everyone (or thread 0) reads `s[0]`, then thread 5 writes it: in lockstep the reads come
/// first, but on a GPU nothing orders them without a barrier.
#[test]
fn writing_a_shared_element_another_thread_read_is_a_race() {
    for (only_thread_0, said) in [(false, "other threads read"), (true, "thread 0 read")] {
        let read_it = assign(0, Expr::load_shared(0, i(0)));
        let k = kernel(
            vec![],
            vec![Scalar::F32],
            vec![shared(Scalar::F32, 1)],
            [1, 1],
            32,
            vec![
                if only_thread_0 {
                    if_(bin(BinOp::Eq, tid(), i(0)), vec![read_it])
                } else {
                    read_it
                },
                if_(
                    bin(BinOp::Eq, tid(), i(5)),
                    vec![store_shared(0, i(0), f(1.0))],
                ),
            ],
        );
        let e = fails(&k, &[], &mut DeviceMemory::new());
        assert_contains(
            &e,
            &format!("shared array 0[0]: written by thread 5 after {said} it with no barrier"),
        );
        // Separated by a barrier, it is fine.
        let mut ok = k.clone();
        ok.body.insert(1, Stmt::SyncThreads);
        launch(&ok, &[], &mut DeviceMemory::new()).unwrap();
    }
}

#[test]
fn two_blocks_writing_one_global_element_conflict() {
    let k = kernel(
        vec![param("out", Scalar::I64, true)],
        vec![],
        vec![],
        [2, 1],
        32,
        vec![if_(
            bin(BinOp::Eq, tid(), i(3)),
            vec![store(0, i(1), sp(Special::BlockX))],
        )],
    );
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(4 * 8);
    let e = fails(&k, &[bind(b, 8, 2)], &mut mem);
    assert_eq!(
        e.what,
        "`out`[1] (buffer 0, byte 16) written by block (0, 0) thread 3 and by block (1, 0) \
         thread 3 in one launch (no grid-wide barrier)"
    );
    assert_eq!((e.bx, e.thread), (1, 3));
}

/// Thread 0 writes `out[0]`; then every thread reads it through `x`, bound to the same memory.
#[test]
fn reading_what_another_thread_wrote_in_the_launch_conflicts() {
    let k = kernel(
        vec![
            param("out", Scalar::F32, true),
            param("x", Scalar::F32, false),
        ],
        vec![Scalar::F32],
        vec![],
        [1, 1],
        32,
        vec![
            if_(bin(BinOp::Eq, tid(), i(0)), vec![store(0, i(0), f(1.0))]),
            assign(0, Expr::load(1, i(0))),
        ],
    );
    let mut mem = DeviceMemory::new();
    let out = f32_buffer(&mut mem, &[0.0; 4]);
    let e = fails(&k, &[out, out], &mut mem);
    assert_eq!(
        e.what,
        "`x`[0] (buffer 0, byte 0) read by block (0, 0) thread 1 after block (0, 0) thread 0 \
         wrote it in one launch (no grid-wide barrier)"
    );
}

/// Block 0 reads `x[5]`; block 1 then writes `out[5]`, the same element: on a GPU, whether the
/// read sees the write depends on scheduling.
#[test]
fn writing_what_another_thread_read_in_the_launch_conflicts() {
    let k = kernel(
        vec![
            param("out", Scalar::F32, true),
            param("x", Scalar::F32, false),
        ],
        vec![Scalar::F32],
        vec![],
        [2, 1],
        32,
        vec![
            assign(0, Expr::load(1, i(5))),
            if_(
                bin(
                    BinOp::And,
                    bin(BinOp::Eq, sp(Special::BlockX), i(1)),
                    bin(BinOp::Eq, tid(), i(2)),
                ),
                vec![store(0, i(5), f(1.0))],
            ),
        ],
    );
    let mut mem = DeviceMemory::new();
    let out = f32_buffer(&mut mem, &[0.0; 8]);
    let e = fails(&k, &[out, out], &mut mem);
    assert_eq!(
        e.what,
        "`out`[5] (buffer 0, byte 20) read by several threads and written by block (1, 0) \
         thread 2 in one launch (no grid-wide barrier)"
    );
}

/// An `I64` element and the two `F32`s over its bytes are the same memory.
#[test]
fn conflicts_are_found_across_element_types() {
    let k = kernel(
        vec![
            param("wide", Scalar::I64, true),
            param("narrow", Scalar::F32, true),
        ],
        vec![],
        vec![],
        [1, 1],
        32,
        vec![
            if_(bin(BinOp::Eq, tid(), i(0)), vec![store(0, i(1), i(-1))]),
            if_(bin(BinOp::Eq, tid(), i(1)), vec![store(1, i(3), f(0.0))]),
        ],
    );
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(16);
    let e = fails(&k, &[bind(b, 0, 2), bind(b, 0, 4)], &mut mem);
    assert_contains(
        &e,
        "`narrow`[3] (buffer 0, byte 12) written by block (0, 0) thread 0",
    );
}

#[test]
fn integer_division_by_zero() {
    for (op, sign) in [(BinOp::Div, "/"), (BinOp::Rem, "%")] {
        let k = kernel(
            vec![],
            vec![Scalar::I64],
            vec![],
            [1, 1],
            32,
            vec![assign(0, bin(op, i(10), tid().sub(i(3))))],
        );
        let e = fails(&k, &[], &mut DeviceMemory::new());
        assert_eq!(e.what, format!("integer division by zero (10 {sign} 0)"));
        assert_eq!(e.thread, 3);
    }
}

#[test]
fn a_loop_step_that_is_not_positive() {
    let k = kernel(
        vec![],
        vec![Scalar::I64],
        vec![],
        [1, 1],
        32,
        vec![for_(0, i(0), i(10), tid().sub(i(2)), vec![])],
    );
    let e = fails(&k, &[], &mut DeviceMemory::new());
    assert_contains(&e, "a loop step of -2");
    assert_eq!(e.thread, 0);
}

#[test]
fn a_loop_near_the_end_of_i64_terminates() {
    let k = kernel(
        vec![param("out", Scalar::I64, true)],
        vec![Scalar::I64, Scalar::I64],
        vec![],
        [1, 1],
        32,
        vec![
            for_(
                0,
                i(i64::MAX - 5),
                i(i64::MAX),
                i(4),
                vec![assign(1, v(1).add(i(1)))],
            ),
            store(0, tid(), v(1)),
        ],
    );
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(32 * 8);
    launch(&k, &[bind(b, 0, 32)], &mut mem).unwrap();
    assert_eq!(mem.read_i64(b, 0, 32).unwrap(), vec![2; 32]);
}

#[test]
fn bad_bindings() {
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(400);
    let k = kernel(
        vec![
            param("a", Scalar::F32, false),
            param("out", Scalar::I64, true),
        ],
        vec![],
        vec![],
        [1, 1],
        32,
        vec![],
    );
    // Past the buffer's end.
    let e = fails(&k, &[bind(b, 0, 101), bind(b, 0, 1)], &mut mem);
    assert_contains(&e, "`a`");
    assert_contains(&e, "buffer 0, which has 400 bytes");
    assert_eq!((e.bx, e.by, e.thread), (0, 0, 0));
    let e = fails(&k, &[bind(b, 0, 100), bind(b, 8, 50)], &mut mem);
    assert_contains(&e, "`out`");
    // A buffer that does not exist.
    let e = fails(&k, &[bind(b, 0, 1), bind(9, 0, 1)], &mut mem);
    assert_contains(&e, "buffer 9, which does not exist");
    // An i64 at a byte offset that is not a multiple of 8.
    let e = fails(&k, &[bind(b, 0, 1), bind(b, 4, 1)], &mut mem);
    assert_contains(&e, "not a multiple of its element size 8");
    // Overflowing sizes are no panic.
    let e = fails(&k, &[bind(b, 0, usize::MAX), bind(b, 0, 1)], &mut mem);
    assert_contains(&e, "`a`");
    // Fine: the whole buffer, and an empty binding at its end.
    launch(&k, &[bind(b, 0, 100), bind(b, 400, 0)], &mut mem).unwrap();
}

#[test]
fn shared_arrays_past_a_blocks_limit() {
    let mut k = kernel(
        vec![],
        vec![],
        vec![shared(Scalar::F32, 8192), shared(Scalar::I64, 2048)],
        [1, 1],
        32,
        vec![],
    );
    assert_eq!(MAX_SHARED_BYTES, 8192 * 4 + 2048 * 8);
    launch(&k, &[], &mut DeviceMemory::new()).unwrap();
    k.shared[1].len += 1;
    let e = fails(&k, &[], &mut DeviceMemory::new());
    assert_eq!(
        e.what,
        "shared arrays of 49160 bytes in all (a block has at most 49152)"
    );
    k.shared[1].len = usize::MAX;
    let e = fails(&k, &[], &mut DeviceMemory::new());
    assert_contains(&e, "shared arrays of too many bytes");
}

#[test]
fn a_wrong_number_of_arguments() {
    let mut mem = DeviceMemory::new();
    let a = f32_buffer(&mut mem, &[0.0; 1000]);
    let e = fails(&vec_add(true), &[a], &mut mem);
    assert_eq!(e.what, "1 arguments for 3 parameters");
}

#[test]
fn a_malformed_kernel_is_an_error() {
    let mut k = vec_add(true);
    k.block = 48;
    let mut mem = DeviceMemory::new();
    let args = [0, 1, 2].map(|_| f32_buffer(&mut mem, &[0.0; 1000]));
    let e = fails(&k, &args, &mut mem);
    assert_contains(&e, "malformed kernel: 48 threads per block");
    assert_eq!((e.kernel.as_str(), e.bx, e.by, e.thread), ("k", 0, 0, 0));
    let mut k = vec_add(true);
    k.params[2].writes = false;
    let e = fails(&k, &args, &mut mem);
    assert_contains(&e, "a store to read-only `c`");
    let mut k = vec_add(true);
    k.body.push(assign(7, i(0)));
    let e = fails(&k, &args, &mut mem);
    assert_contains(&e, "malformed kernel");
}

#[test]
fn device_memory_reads_and_writes_are_checked() {
    let mut mem = DeviceMemory::new();
    let b = mem.alloc(24);
    assert_eq!(mem.len_bytes(b), 24);
    assert_eq!(mem.len_bytes(b + 1), 0);
    mem.write_f32(b, 4, &[1.5, -2.0]).unwrap();
    assert_eq!(mem.read_f32(b, 0, 3).unwrap(), vec![0.0, 1.5, -2.0]);
    mem.write_i64(b, 16, &[-42]).unwrap();
    assert_eq!(mem.read_i64(b, 16, 1).unwrap(), vec![-42]);
    let e = mem.read_f32(b, 20, 2).unwrap_err();
    assert_eq!(e.kernel, "memory");
    assert_contains(&e, "buffer 0, which has 24 bytes");
    assert!(mem.write_i64(b, 24, &[1]).is_err());
    assert!(mem.write_f32(b, usize::MAX, &[1.0]).is_err());
    assert!(mem.read_i64(b + 1, 0, 0).is_err());
    // A failed write changes nothing.
    assert_eq!(mem.read_f32(b, 0, 3).unwrap(), vec![0.0, 1.5, -2.0]);
}
