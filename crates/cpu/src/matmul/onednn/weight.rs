//! Prepared weights ([`OneDnnWeight`]): a weight (f32, or bf16 bits taken straight from a
//! checkpoint) reordered once into the layout and type the matmul primitive prefers, asked of a
//! probe primitive. Never: reorder per call, or outlive the library (it holds the shared state).

use std::any::Any;
use std::ffi::{c_int, c_void};
use std::sync::Arc;

use super::cache::Extras;
use super::desc::op2;
use super::{lock, Handle, OneDnnMatMul, Shared, PROBE_M};
use crate::matmul::ffi::{self, check, dnnl_memory_desc_t};
use crate::matmul::{Layout, MatMulError, PreparedWeight};

/// A weight reordered into oneDNN's preferred layout. Field order: the memory object is
/// destroyed before the last reference to the library may go.
pub(super) struct OneDnnWeight {
    pub(super) mem: Option<Handle>,
    pub(super) md: Box<dnnl_memory_desc_t>,
    pub(super) key: Vec<i64>,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) bytes: usize,
    pub(super) shared: Arc<Shared>,
}

// SAFETY: the memory object is only used under `shared.state`'s lock (execution) and destroyed
// in Drop; the descriptor is plain data.
unsafe impl Sync for OneDnnWeight {}

impl Drop for OneDnnWeight {
    fn drop(&mut self) {
        let _guard = lock(&self.shared.state);
        self.mem.take();
    }
}

impl PreparedWeight for OneDnnWeight {
    fn k(&self) -> usize {
        self.k
    }
    fn n(&self) -> usize {
        self.n
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl OneDnnMatMul {
    /// Reorders a weight (`b`: its layout; `src`: its first element, of `src_type`, with every
    /// element of the layout inside the caller's checked slice) into the layout and type the
    /// matmul prefers.
    pub(super) fn prepare_from(
        &self,
        b: Layout,
        src_type: c_int,
        src: *const c_void,
    ) -> Result<Box<dyn PreparedWeight>, MatMulError> {
        let (k, n) = (b.rows, b.cols);

        if k == 0 || n == 0 {
            return Ok(Box::new(OneDnnWeight {
                mem: None,
                md: Box::new(dnnl_memory_desc_t::zeroed()),
                key: vec![k as i64, n as i64],
                k,
                n,
                bytes: 0,
                shared: self.shared.clone(),
            }));
        }
        let sh = &*self.shared;
        let api = &sh.api;
        let st = lock(&sh.state);
        sh.set_threads(self.threads);
        // The layout the matmul prefers for this weight.
        let dt = self.weight_type();
        let probe_a = sh.md_tag(&[PROBE_M, k as i64], dt, ffi::DNNL_AB)?;
        let any = sh.md_tag(&[k as i64, n as i64], dt, ffi::DNNL_FORMAT_TAG_ANY)?;
        let probe_c = sh.md_tag(&[PROBE_M, n as i64], ffi::DNNL_F32, ffi::DNNL_AB)?;
        let pd = sh.matmul_pd(&st.engine, &probe_a, &any, &probe_c, &Extras::default())?;
        // SAFETY: the pd answers a pointer to its weights descriptor, copied before pd goes.
        let wmd = unsafe {
            let p = (api.primitive_desc_query_md)(pd.ptr, ffi::DNNL_QUERY_WEIGHTS_MD, 0);
            if p.is_null() {
                return Err(MatMulError::Internal(
                    "dnnl_primitive_desc_query_md(weights) returned NULL".into(),
                ));
            }
            *p
        };
        drop(pd);
        // SAFETY: initialised descriptor.
        let bytes = unsafe { (api.memory_desc_get_size)(&wmd) };
        let src_md = sh.md_strided_typed(&op2(b), src_type)?;
        let mut rpd = std::ptr::null_mut();
        // SAFETY: initialised descriptors, one engine for both sides, no attributes.
        check("dnnl_reorder_primitive_desc_create", unsafe {
            (api.reorder_primitive_desc_create)(
                &mut rpd,
                &src_md,
                st.engine.ptr,
                &wmd,
                st.engine.ptr,
                std::ptr::null_mut(),
            )
        })?;
        let rpd = Handle {
            ptr: rpd,
            destroy: api.primitive_desc_destroy,
        };
        let reorder = sh.primitive(&rpd)?;
        // The source handle is the caller's slice (bounds checked by the caller; only read).
        let src = sh.memory(&st.engine, &src_md, src.cast_mut())?;
        // DNNL_MEMORY_ALLOCATE: the library allocates (and aligns) the reordered weight.
        let dst = sh.memory(&st.engine, &wmd, usize::MAX as *mut c_void)?;
        let args = [
            ffi::dnnl_exec_arg_t {
                arg: ffi::DNNL_ARG_FROM,
                memory: src.ptr,
            },
            ffi::dnnl_exec_arg_t {
                arg: ffi::DNNL_ARG_TO,
                memory: dst.ptr,
            },
        ];
        sh.execute(&st.stream, &reorder, &args)?;
        drop(st);
        Ok(Box::new(OneDnnWeight {
            mem: Some(dst),
            key: wmd.layout_key(),
            md: Box::new(wmd),
            k,
            n,
            bytes,
            shared: self.shared.clone(),
        }))
    }
}
