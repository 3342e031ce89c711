//! The data-parallel flags `pretrain` and `finetune` share (included by `#[path]`), and the MPI
//! session of a run across machines.

use clap::Args;
use mdm::train::ParallelConfig;

/// Where the run's peers are (docs/training.md, "Several devices and machines").
#[derive(Args, Debug, Clone)]
pub struct ParallelArgs {
    /// This process's devices, one peer each: `cpu:2` (two CPU peers), `cuda:0,cuda:1`,
    /// `wgpu:0,wgpu:1`; default: the backend's default device.
    #[arg(long, default_value = "")]
    pub devices: String,
    /// Run as one rank of the MPI job this process was started in (`mpirun -np N ...`, Slurm's
    /// `srun`): the ranks average their gradients with MPI; rank 0 writes the files.
    #[cfg(feature = "mpi")]
    #[arg(long)]
    pub mpi: bool,
    /// Seconds a rank waits inside one MPI operation for the others before the run stops with an
    /// error naming the ranks that did not arrive (must exceed rank 0's longest validation or
    /// checkpoint).
    #[cfg(feature = "mpi")]
    #[arg(long, default_value_t = 600)]
    pub mpi_timeout: u64,
}

impl ParallelArgs {
    /// The trainer's settings.
    pub fn config(&self) -> ParallelConfig {
        let config = ParallelConfig {
            devices: self.devices.clone(),
            ..ParallelConfig::default()
        };
        #[cfg(feature = "mpi")]
        let config = ParallelConfig {
            mpi: self.mpi,
            timeout_s: self.mpi_timeout,
            ..config
        };
        config
    }

    /// Starts MPI when asked: held for the whole program (MPI ends when it is dropped).
    pub fn session(&self) -> anyhow::Result<Session> {
        #[cfg(feature = "mpi")]
        if self.mpi {
            let mpi = mdm::train::mpi::Mpi::init()?;
            return Ok(Session {
                rank: mpi.rank(),
                mpi: Some(mpi),
            });
        }
        Ok(Session {
            rank: 0,
            #[cfg(feature = "mpi")]
            mpi: None,
        })
    }
}

/// This process's place in the run: rank 0 without MPI.
pub struct Session {
    /// This process's rank.
    pub rank: u32,
    #[cfg(feature = "mpi")]
    mpi: Option<mdm::train::mpi::Mpi>,
}

impl Session {
    /// Whether this process writes the run's files and reports.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// `result` as the program's; under MPI an error is printed and every rank of the job ended
    /// (`MPI_Abort`), so that no rank waits for this one.
    pub fn finish(self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        #[cfg(feature = "mpi")]
        if let (Err(error), Some(mpi)) = (&result, &self.mpi) {
            // one write: the ranks' lines reach mpirun's terminal whole
            let line = format!("Error (rank {}): {error:#}\n", self.rank);
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
            mpi.abort(1);
        }
        result
    }
}
