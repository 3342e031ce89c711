//! The data-parallel flags `pretrain` and `finetune` share (included by `#[path]`).

use clap::Args;
use mdm::train::ParallelConfig;

/// Where the run's peers are (docs/training.md, "Several devices and machines").
#[derive(Args, Debug, Clone)]
pub struct ParallelArgs {
    /// This machine's devices, one peer each: `cpu:2` (two CPU peers), `cuda:0,cuda:1`,
    /// `wgpu:0,wgpu:1`; default: the backend's default device.
    #[arg(long, default_value = "")]
    pub devices: String,
    /// Machines in the run (each runs this command with its own --node-rank). Runs on more than
    /// one are refused for now: burn-collective 0.21 completes only the first global all-reduce
    /// (docs/training.md, "Several machines").
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// This machine's rank, 0..nodes (rank 0 writes checkpoints, metrics and the model).
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    /// The coordinator every node registers with, ws://HOST:PORT (burn-collective's orchestrator).
    #[arg(long)]
    pub coordinator: Option<String>,
    /// This machine's address as the other nodes reach it, ws://HOST:PORT (PORT = --data-port).
    #[arg(long)]
    pub node_address: Option<String>,
    /// Port this machine serves tensors on to the other nodes.
    #[arg(long)]
    pub data_port: Option<u16>,
    /// Seconds a collective operation may wait for the other nodes before the run stops.
    #[arg(long, default_value_t = 600)]
    pub collective_timeout: u64,
}

impl ParallelArgs {
    /// The trainer's settings.
    pub fn config(&self) -> ParallelConfig {
        ParallelConfig {
            devices: self.devices.clone(),
            nodes: self.nodes,
            node_rank: self.node_rank,
            coordinator: self.coordinator.clone(),
            node_address: self.node_address.clone(),
            data_port: self.data_port,
            timeout_s: self.collective_timeout,
        }
    }
}
