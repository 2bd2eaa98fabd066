//! attnopt's GPU backend: `lower`'s kernels turned into a small GPU kernel IR ([`kir`]), printed
//! as CUDA C ([`cuda`]) and executed by a CPU simulator ([`sim`]) that checks what a GPU would
//! not (out-of-bounds accesses, races between barriers, divergent barriers and shuffles).
//!
//! * [`kir`] — the kernel IR and its checks; [`kbuild`] — building kernels;
//! * [`gen`] — one generator per kernel kind, from `lower`'s kernels to a [`program::Program`];
//! * [`program`] — kernels, launches, library products and the memory they address;
//! * [`exec`] — a program on any [`exec::Device`] (host side shared by simulator and runtime);
//! * [`cuda`] — CUDA C; [`sim`] — the simulator; [`simrun`] — the simulator as a device, and a
//!   whole model on it.
//!
//! * [`runtime`] — a GPU through the driver and NVRTC loaded at run time (not yet run on one).
//!
//! Depends on `attnopt-lower` and `attnopt-ir` only; never on the CPU backend.

pub mod cuda;
pub mod error;
pub mod exec;
pub mod gen;
pub mod kbuild;
pub mod kir;
pub mod program;
pub mod runtime;
pub mod sim;
pub mod simrun;

pub use error::GpuError;
pub use program::Program;
