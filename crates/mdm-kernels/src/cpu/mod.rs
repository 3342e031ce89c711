//! The kernels on `f32` host memory, independent of any backend: slices in, vectors out.

pub mod attention;
pub mod cross_entropy;
pub mod fdot;
pub mod norm;
pub mod packed;
pub mod qdot;
pub mod rope;
pub mod vector;
