//! Training across machines on MPI (Cargo feature `mpi`): each process is one rank of an MPI job
//! started the way clusters start them (`mpirun -np N ...`, Slurm's `srun`), owns its devices
//! (several devices of a rank average with burn-collective inside the rank, [`crate::parallel`]),
//! and the ranks average gradients and reported losses with MPI all-reduce on the host, in f32,
//! before clipping and AdamW. The MPI library is the system's (Open MPI, MPICH), reached through
//! the `mpi` crate (rsmpi).
//!
//! **What MPI does not give, and this module adds:** a blocking collective waits forever for a
//! rank that died or hangs, and does not say which. So every operation here is non-blocking and
//! polled against `parallel.timeout_s`: before each all-reduce, every rank tells every other rank
//! that it arrived (a two-number message: the operation's sequence number and the step), so a wait
//! that times out names the ranks that never came ([`TrainError::RankTimeout`]); a wait that times
//! out inside the all-reduce itself (a rank died after arriving) asks every rank whether it is alive
//! (every waiting rank answers from its polling loop) and names the silent ones; a rank whose run
//! fails with an error tells the others ([`MpiMean::announce_failure`]), which stop at once with
//! [`TrainError::RankFailed`] naming it and its reason. Under Open MPI, `mpirun` itself ends every
//! rank when one is killed unless it runs with `--enable-recovery`; with it, the survivors give
//! the typed error. The nonblocking calls are thin `unsafe` calls to the MPI functions the crate
//! exports: rsmpi's safe requests abort the process when dropped before completion, and a request
//! abandoned after a timeout must outlive the error (its buffers are leaked, never freed while MPI
//! may still write them; the run is over by then).
//!
//! **Same bits:** the all-reduce sums in MPI's order, which Open MPI and MPICH choose from the
//! message size and the number of ranks alone, so a run repeats bit for bit; every rank gets the
//! same sum, so the replicas stay equal (checked by the trainer at every start).
//!
//! **What a GPU rank pays:** the gradients are copied to the host and back once per optimizer step
//! (one concatenated f32 buffer, `4 x parameters` bytes each way, plus a second host buffer of
//! the same size for the sum): a 1 B-parameter model moves 4 GB per step over PCIe, about 0.3 s at
//! 25 GB/s, and needs 8 GB of host memory for the reduction.

use std::os::raw::{c_int, c_void};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::ffi;
use mpi::point_to_point::Source;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use crate::optim::GradAccumulator;
use crate::parallel::CollectiveMean;
use crate::step::GradientReduce;
use crate::TrainError;

/// Tag of the arrival messages.
const ARRIVE: c_int = 0x6d64;
/// Tag of a failing rank's last word.
const FAIL: c_int = 0x6d65;
/// Tags of the liveness question a rank asks after a timeout, and of its answer.
const PING: c_int = 0x6d66;
const PONG: c_int = 0x6d67;
/// Longest wait for the answers to a liveness question.
const PING_WAIT: Duration = Duration::from_secs(5);
/// Largest count of one all-reduce call (MPI counts are C ints): bigger buffers go in pieces.
const CHUNK: usize = 1 << 28;

/// Every MPI call of this process goes through this lock: MPI is started with
/// `MPI_THREAD_SERIALIZED` (calls from any thread, one at a time), and a failing run may announce
/// its failure from the supervisor thread while a peer thread still polls.
static CALLS: Mutex<()> = Mutex::new(());

fn locked<T>(call: impl FnOnce() -> T) -> T {
    let _guard = CALLS.lock().unwrap_or_else(PoisonError::into_inner);
    call()
}

/// This process's MPI session: started by [`Mpi::init`], finished (`MPI_Finalize`) when dropped.
/// A program that trains with `parallel.mpi` holds one for the whole run.
pub struct Mpi {
    _universe: Universe,
    rank: u32,
    ranks: u32,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, ranks: {} }}", self.rank, self.ranks)
    }
}

impl Mpi {
    /// Starts MPI in this process (once per process: MPI cannot be started again after it ends).
    pub fn init() -> Result<Self, TrainError> {
        if mpi::environment::is_initialized() {
            return Err(TrainError::Mpi(
                "already started in this process (hold one Mpi for the whole program)".into(),
            ));
        }
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| TrainError::Mpi("MPI_Init_thread failed".into()))?;
        if threading < Threading::Serialized {
            return Err(TrainError::Mpi(format!(
                "the MPI library gives {threading:?} threading; training needs Serialized \
                 (calls from any thread, one at a time)"
            )));
        }
        let (rank, ranks) = place()?;
        Ok(Self {
            _universe: universe,
            rank,
            ranks,
        })
    }

    /// This process's rank, `0..ranks`.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Ranks in the job.
    pub fn ranks(&self) -> u32 {
        self.ranks
    }

    /// Ends every rank of the job (`MPI_Abort`): what a program does after reporting an error,
    /// so that no rank is left waiting.
    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}

/// `(rank, ranks)` of this process in the started MPI job.
pub fn place() -> Result<(u32, u32), TrainError> {
    if !mpi::environment::is_initialized() {
        return Err(TrainError::Mpi(
            "not started: parallel.mpi needs mdm_train::mpi::Mpi::init() first (the training \
             programs do it for --mpi)"
                .into(),
        ));
    }
    let world = SimpleCommunicator::world();
    let (rank, ranks) = locked(|| (world.rank(), world.size()));
    Ok((rank as u32, ranks as u32))
}

/// One nonblocking MPI operation and the buffers it reads and writes, owned until it completes.
struct Pending<T: Copy + 'static> {
    request: ffi::MPI_Request,
    send: Option<Box<[T]>>,
    recv: Option<Box<[T]>>,
    done: bool,
}

impl<T: Copy + Equivalence + 'static> Pending<T> {
    /// Sends `data`; a `synchronous` send completes only once the receiver has matched it.
    fn send(
        data: Box<[T]>,
        to: c_int,
        tag: c_int,
        comm: &SimpleCommunicator,
        synchronous: bool,
    ) -> Self {
        let mut request = request_null();
        let call = if synchronous {
            ffi::MPI_Issend
        } else {
            ffi::MPI_Isend
        };
        // SAFETY: the buffer is owned by the returned value and neither moved (boxed) nor freed
        // before MPI_Test reports completion (Drop leaks it otherwise); the count is its length.
        locked(|| unsafe {
            call(
                data.as_ptr() as *const c_void,
                data.len() as c_int,
                T::equivalent_datatype().as_raw(),
                to,
                tag,
                comm.as_raw(),
                &mut request,
            )
        });
        Self {
            request,
            send: Some(data),
            recv: None,
            done: false,
        }
    }

    fn receive(len: usize, from: c_int, tag: c_int, comm: &SimpleCommunicator) -> Self
    where
        T: Default,
    {
        let mut data = vec![T::default(); len].into_boxed_slice();
        let mut request = request_null();
        // SAFETY: as for `send`: the box is owned until completion, the count is its length.
        locked(|| unsafe {
            ffi::MPI_Irecv(
                data.as_mut_ptr() as *mut c_void,
                data.len() as c_int,
                T::equivalent_datatype().as_raw(),
                from,
                tag,
                comm.as_raw(),
                &mut request,
            )
        });
        Self {
            request,
            send: None,
            recv: Some(data),
            done: false,
        }
    }

    /// The sum over all ranks of `data` (at most [`CHUNK`] values).
    fn sum(data: Box<[T]>, comm: &SimpleCommunicator) -> Self
    where
        T: Default,
    {
        let mut out = vec![T::default(); data.len()].into_boxed_slice();
        let mut request = request_null();
        // SAFETY: both boxes are owned until completion; the count is their common length.
        locked(|| unsafe {
            ffi::MPI_Iallreduce(
                data.as_ptr() as *const c_void,
                out.as_mut_ptr() as *mut c_void,
                data.len() as c_int,
                T::equivalent_datatype().as_raw(),
                SystemOperation::sum().as_raw(),
                comm.as_raw(),
                &mut request,
            )
        });
        Self {
            request,
            send: Some(data),
            recv: Some(out),
            done: false,
        }
    }

    /// Whether the operation has completed (then its buffers may be taken).
    fn test(&mut self) -> bool {
        if !self.done {
            let mut flag: c_int = 0;
            // SAFETY: the request came from one of the constructors and is tested until done.
            locked(|| unsafe {
                ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE)
            });
            self.done = flag != 0;
        }
        self.done
    }

    /// The received buffer of a completed operation.
    fn take(mut self) -> Box<[T]> {
        debug_assert!(self.done);
        self.recv.take().unwrap_or_default()
    }
}

impl<T: Copy + 'static> Drop for Pending<T> {
    fn drop(&mut self) {
        if !self.done {
            // MPI may still read or write them: never freed
            std::mem::forget(self.send.take());
            std::mem::forget(self.recv.take());
        }
    }
}

fn request_null() -> ffi::MPI_Request {
    // SAFETY: reads an immutable handle constant the MPI library exports.
    unsafe { ffi::RSMPI_REQUEST_NULL }
}

/// Short spins, then 200 µs sleeps: a wait for a slower rank (validation, checkpoints) costs no
/// core, a wait for a ready one almost no latency.
struct Backoff(u32);

impl Backoff {
    fn pause(&mut self) {
        self.0 += 1;
        if self.0 < 200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The mean over the ranks of an MPI job, as a [`GradientReduce`] of a rank with one device (or
/// the first peer of a rank with several, see [`RankMean`]).
pub struct MpiMean {
    comm: SimpleCommunicator,
    rank: u32,
    ranks: u32,
    timeout: Duration,
    step: usize,
    sequence: u64,
    /// Answers to other ranks' liveness questions, kept until sent.
    answers: Vec<Pending<u64>>,
}

impl std::fmt::Debug for MpiMean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MpiMean {{ rank: {}, ranks: {} }}",
            self.rank, self.ranks
        )
    }
}

impl MpiMean {
    /// The ranks of the started MPI job, each operation waiting at most `timeout` for the others.
    pub fn new(timeout: Duration) -> Result<Self, TrainError> {
        let (rank, ranks) = place()?;
        Ok(Self {
            comm: SimpleCommunicator::world(),
            rank,
            ranks,
            timeout,
            step: 0,
            sequence: 0,
            answers: Vec::new(),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Ranks in the job.
    pub fn ranks(&self) -> u32 {
        self.ranks
    }

    /// Names the optimizer step the next operations belong to (for errors and the arrival check).
    pub fn set_step(&mut self, step: usize) {
        self.step = step;
    }

    /// The mean over all ranks of `values` (the same length on every rank), on the host.
    pub fn mean<T>(&mut self, values: Vec<T>, what: &'static str) -> Result<Vec<T>, TrainError>
    where
        T: Copy + Default + Equivalence + std::ops::Div<Output = T> + From<u16> + 'static,
    {
        let sum = self.sum(values, what)?;
        let ranks = T::from(u16::try_from(self.ranks).unwrap_or(u16::MAX));
        Ok(sum.into_iter().map(|v| v / ranks).collect())
    }

    /// The sum over all ranks of `values`, every rank getting the same bits.
    fn sum<T>(&mut self, values: Vec<T>, what: &'static str) -> Result<Vec<T>, TrainError>
    where
        T: Copy + Default + Equivalence + 'static,
    {
        if self.ranks <= 1 {
            return Ok(values);
        }
        self.arrive(what)?;
        if values.len() <= CHUNK {
            // the common case: the values move into the send buffer, two buffers in all
            let mut op = Pending::sum(values.into_boxed_slice(), &self.comm);
            self.wait_for(&mut op, what, &[])?;
            return Ok(op.take().into_vec());
        }
        let mut out = Vec::with_capacity(values.len());
        for chunk in values.chunks(CHUNK) {
            let mut op = Pending::sum(chunk.to_vec().into_boxed_slice(), &self.comm);
            self.wait_for(&mut op, what, &[])?;
            out.extend_from_slice(&op.take());
        }
        Ok(out)
    }

    /// Tells every other rank that this one reached the next operation and waits until each of
    /// them has said the same (or failed, or the timeout passed).
    fn arrive(&mut self, what: &'static str) -> Result<(), TrainError> {
        self.sequence += 1;
        let mine = [self.sequence, self.step as u64];
        let others: Vec<c_int> = (0..self.ranks as c_int)
            .filter(|&r| r != self.rank as c_int)
            .collect();
        let mut sends: Vec<Pending<u64>> = others
            .iter()
            .map(|&r| Pending::send(Box::new(mine), r, ARRIVE, &self.comm, false))
            .collect();
        let mut receives: Vec<(c_int, Pending<u64>)> = others
            .iter()
            .map(|&r| (r, Pending::receive(2, r, ARRIVE, &self.comm)))
            .collect();
        let started = Instant::now();
        let mut backoff = Backoff(0);
        loop {
            self.check_failures()?;
            let missing: Vec<u32> = receives
                .iter_mut()
                .filter_map(|(r, op)| (!op.test()).then_some(*r as u32))
                .collect();
            if missing.is_empty() {
                break;
            }
            if started.elapsed() > self.timeout {
                return Err(self.timed_out(what, missing, started));
            }
            backoff.pause();
        }
        for (rank, op) in receives {
            let theirs = op.take();
            if theirs.first() != Some(&self.sequence) {
                return Err(TrainError::Mpi(format!(
                    "rank {rank} is at operation {:?} (step {:?}), rank {} at operation {} (step \
                     {}): the ranks run different programs or settings",
                    theirs.first(),
                    theirs.get(1),
                    self.rank,
                    self.sequence,
                    self.step
                )));
            }
        }
        for op in &mut sends {
            self.wait_for(op, what, &[])?;
        }
        Ok(())
    }

    /// Polls `op` until it completes, a rank announces a failure, or the timeout passes.
    fn wait_for<T: Copy + Equivalence + 'static>(
        &mut self,
        op: &mut Pending<T>,
        what: &'static str,
        missing: &[u32],
    ) -> Result<(), TrainError> {
        let started = Instant::now();
        let mut backoff = Backoff(0);
        while !op.test() {
            self.check_failures()?;
            if started.elapsed() > self.timeout {
                let missing = match missing {
                    [] => self.unresponsive()?,
                    some => some.to_vec(),
                };
                return Err(self.timed_out(what, missing, started));
            }
            backoff.pause();
        }
        Ok(())
    }

    /// The ranks that do not answer a liveness question within [`PING_WAIT`]: after an operation
    /// every rank arrived at timed out, the ones that died or hang inside it (the others answer
    /// from their own waits).
    fn unresponsive(&mut self) -> Result<Vec<u32>, TrainError> {
        let others: Vec<c_int> = (0..self.ranks as c_int)
            .filter(|&r| r != self.rank as c_int)
            .collect();
        let mut questions: Vec<Pending<u64>> = others
            .iter()
            .map(|&r| Pending::send(Box::new([self.sequence]), r, PING, &self.comm, false))
            .collect();
        let mut answers: Vec<(c_int, Pending<u64>)> = others
            .iter()
            .map(|&r| (r, Pending::receive(1, r, PONG, &self.comm)))
            .collect();
        let until = Instant::now() + PING_WAIT.min(self.timeout);
        let mut backoff = Backoff(0);
        loop {
            self.check_failures()?;
            questions.retain_mut(|op| !op.test());
            let silent: Vec<u32> = answers
                .iter_mut()
                .filter_map(|(r, op)| (!op.test()).then_some(*r as u32))
                .collect();
            if silent.is_empty() || Instant::now() > until {
                return Ok(silent);
            }
            backoff.pause();
        }
    }

    /// Answers the liveness questions other ranks asked.
    fn answer_questions(&mut self) {
        loop {
            let asked = locked(|| {
                self.comm
                    .any_process()
                    .immediate_matched_probe_with_tag(PING)
                    .map(|(message, status)| {
                        let mut question = [0u64; 1];
                        message.matched_receive_into(&mut question[..]);
                        status.source_rank()
                    })
            });
            let Some(rank) = asked else { break };
            let answer = Pending::send(Box::new([self.sequence]), rank, PONG, &self.comm, false);
            self.answers.push(answer);
        }
        self.answers.retain_mut(|op| !op.test());
    }

    fn timed_out(&self, what: &'static str, missing: Vec<u32>, started: Instant) -> TrainError {
        TrainError::RankTimeout {
            rank: self.rank,
            ranks: self.ranks,
            step: self.step,
            what,
            missing,
            waited_s: started.elapsed().as_secs(),
        }
    }

    /// A failure another rank announced, as an error naming it (and the liveness questions of
    /// the others answered).
    fn check_failures(&mut self) -> Result<(), TrainError> {
        self.answer_questions();
        let probed = locked(|| {
            self.comm
                .any_process()
                .immediate_matched_probe_with_tag(FAIL)
                .map(|(message, status)| {
                    let len = usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(0);
                    let mut bytes = vec![0u8; len];
                    message.matched_receive_into(&mut bytes[..]);
                    (status.source_rank(), bytes)
                })
        });
        match probed {
            None => Ok(()),
            Some((rank, bytes)) => Err(TrainError::RankFailed {
                rank: rank as u32,
                step: self.step,
                reason: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    /// Tells every other rank that this one stopped with `reason` (they stop with
    /// [`TrainError::RankFailed`] at their next wait); waits up to two seconds for each of them to
    /// have received it (synchronous sends), so that ending the job afterwards (`MPI_Abort`) does
    /// not overtake the message.
    pub fn announce_failure(&mut self, reason: &str) {
        let bytes: Box<[u8]> = reason.as_bytes().into();
        let mut sends: Vec<Pending<u8>> = (0..self.ranks as c_int)
            .filter(|&r| r != self.rank as c_int)
            .map(|r| Pending::send(bytes.clone(), r, FAIL, &self.comm, true))
            .collect();
        let until = Instant::now() + Duration::from_secs(2);
        let mut backoff = Backoff(0);
        while Instant::now() < until && sends.iter_mut().any(|op| !op.test()) {
            backoff.pause();
        }
    }
}

/// The gradients of a rank as one host f32 buffer, averaged over the ranks.
fn mean_gradients<B: Backend>(
    mpi: &mut MpiMean,
    grads: &mut GradAccumulator<B>,
) -> Result<(), TrainError> {
    grads.try_map_flat(|flat| {
        let device = flat.device();
        let values = flat
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| TrainError::Mpi(format!("gradients to the host: {e:?}")))?;
        let n = values.len();
        let mean = mpi.mean(values, "gradient all-reduce")?;
        Ok(Tensor::from_data(TensorData::new(mean, [n]), &device))
    })
}

impl<B: Backend> GradientReduce<B> for MpiMean {
    fn reduce(&mut self, grads: &mut GradAccumulator<B>) -> Result<(), TrainError> {
        mean_gradients(self, grads)
    }

    fn mean_of(&mut self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        self.mean(values.to_vec(), "all-reduce of the reported values")
    }

    fn at_step(&mut self, step: usize) {
        self.set_step(step);
    }
}

/// A rank with several devices: its peers average with burn-collective, its first peer averages
/// those means over the ranks with MPI, and the other peers take the first one's result bit for
/// bit. Every rank must have the same number of devices.
pub struct RankMean<B: Backend> {
    local: CollectiveMean<B>,
    mpi: Option<MpiMean>,
}

impl<B: Backend> RankMean<B> {
    /// `local` averages this rank's peers; `mpi` is given to the first peer only.
    pub fn new(local: CollectiveMean<B>, mpi: Option<MpiMean>) -> Self {
        Self { local, mpi }
    }
}

impl<B: Backend> GradientReduce<B> for RankMean<B> {
    fn reduce(&mut self, grads: &mut GradAccumulator<B>) -> Result<(), TrainError> {
        self.local.reduce(grads)?;
        if let Some(mpi) = self.mpi.as_mut() {
            mean_gradients(mpi, grads)?;
        }
        grads.try_map(|grad| self.local.from_first(grad))
    }

    fn mean_of(&mut self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let local = self.local.mean_of(values)?;
        let mean = match self.mpi.as_mut() {
            Some(mpi) => mpi.mean(local, "all-reduce of the reported values")?,
            None => local,
        };
        let device = self.local.device().clone();
        let n = mean.len();
        let tensor = Tensor::<B, 1>::from_data(
            TensorData::new(mean.into_iter().map(|v| v as f32).collect::<Vec<_>>(), [n]),
            &device,
        );
        Ok(self
            .local
            .from_first(tensor)?
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap_or_default())
    }

    fn at_step(&mut self, step: usize) {
        if let Some(mpi) = self.mpi.as_mut() {
            mpi.set_step(step);
        }
    }
}
