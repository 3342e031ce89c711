//! The workspace's integration tests, one binary (`cargo test --release --test suite`): each file
//! a module, selected by name (`cargo test --release --test suite -- parity_llada::`). One binary
//! because every test binary instantiates burn's generic code and links the whole stack again, and
//! on wgpu every process compiles its own kernels: as one binary the wgpu suites build in 2 min 08 s
//! instead of about 6 and run in 104 s instead of 262 (docs/reliability.md).
//!
//! - `parity`, `parity_sampler`, `parity_llada`, `parity_dream`, `parity_gguf` (llama.cpp's converter's
//!   GGUF files against their folders), `parity_eval`, `parity_train`: the reference
//!   fixtures (SMDM, LLaDA / Fast-dLLM, the estimators, SMDM's optimizer steps) on the backend the
//!   features select; `backend`: the library's paths on that backend. `.ci/run` runs these on wgpu
//!   too (`-- parity backend::`).
//! - `determinism`: the same seed gives the same bits under load (CPU); `kill`: long runs survive
//!   SIGKILL (the example binaries); `programs`: a user's mistake is a message, not a backtrace;
//!   `families`: a tied LLaDA folder loaded, written back and fine-tuned (CPU).

mod common;

mod backend;
mod determinism;
mod families;
mod hub;
mod kill;
mod moe_families;
mod own_family;
mod parity;
mod parity_dream;
mod parity_eval;
mod parity_gguf;
mod parity_llada;
mod parity_sampler;
mod parity_train;
mod programs;
