//! Data parallel: each peer (a thread with its own device and its own replica of the model)
//! computes the gradients of its share of every global batch, and [`CollectiveMean`] replaces them
//! by their mean over all peers before clipping and AdamW, so every replica makes the update one
//! device would make on the whole batch and the replicas stay equal. Across machines, each process
//! is one rank of an MPI job ([`crate::mpi`]): the peers of a rank average with burn-collective,
//! then the ranks with MPI.
//!
//! The all-reduce is burn's own (`burn-collective`, version-matched to our burn), not ours: its
//! local server pairs the peers' calls by order, so every peer must call it for the same
//! parameters in the same order, which the trainer's fixed visit order guarantees.
//!
//! What burn-collective 0.21 does not do, and this module adds around it (without a network
//! all-reduce of its own): a waiting call never times out and a peer that dies leaves the others
//! waiting (or, worse, a later call of the survivors would be reduced over fewer peers). So the
//! peers run under [`run_peers`], which supervises them from the calling thread: a peer that
//! returns an error or panics stops the run at once with [`TrainError::PeerFailed`] naming it
//! (the others are woken by resetting the local collective and told to abort). A wait for other
//! ranks is bounded by the MPI layer's own timeout. Peers that stay blocked in burn-collective are
//! left behind (they hold no files); a program ends them by exiting.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};

use crate::optim::GradAccumulator;
use crate::step::GradientReduce;
use crate::TrainError;

/// Where one peer stands in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPlace {
    /// Index among this process's peers (burn-collective's peer id), `0..local_peers`.
    pub local: usize,
    /// Peers (devices) of this process.
    pub local_peers: usize,
    /// This process's MPI rank (0 without MPI).
    pub rank: u32,
    /// Ranks in the run (1 without MPI).
    pub ranks: u32,
}

impl PeerPlace {
    /// The only peer of a one-device run.
    pub const SINGLE: Self = Self {
        local: 0,
        local_peers: 1,
        rank: 0,
        ranks: 1,
    };

    /// Index of this peer in the whole run: rank-major.
    pub fn global(&self) -> usize {
        self.rank as usize * self.local_peers + self.local
    }

    /// Peers in the whole run.
    pub fn world(&self) -> usize {
        self.local_peers * self.ranks.max(1) as usize
    }

    /// The peer that writes the run's files (checkpoints, metrics, validation, final model) and
    /// reports progress: global peer 0.
    pub fn is_leader(&self) -> bool {
        self.global() == 0
    }
}

/// The run's abort flag, shared by the supervisor and the peers.
#[derive(Debug)]
pub struct Watch {
    abort: AtomicBool,
}

impl Watch {
    fn new() -> Self {
        Self {
            abort: AtomicBool::new(false),
        }
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }
}

/// One peer of a data-parallel run: registered with burn-collective on creation, unregistered
/// when dropped after a normal end (not after an abort: its id may belong to a later run by then).
#[derive(Debug)]
pub struct CollectiveMean<B: Backend> {
    peer: PeerId,
    local: usize,
    device: B::Device,
    watch: Arc<Watch>,
}

impl<B: Backend> CollectiveMean<B> {
    /// Registers peer `peer` (`0..peers`) of a run on this machine alone, on `device`. Every
    /// peer of the run must register (each from its own thread) before any of them reduces; this
    /// blocks until they have.
    pub fn register(peer: usize, peers: usize, device: &B::Device) -> Result<Self, TrainError> {
        let place = PeerPlace {
            local: peer,
            local_peers: peers,
            ..PeerPlace::SINGLE
        };
        Self::join(place, device, Arc::new(Watch::new()))
    }

    /// Registers the peer at `place` among its process's peers, sharing `watch`'s abort flag.
    pub fn join(
        place: PeerPlace,
        device: &B::Device,
        watch: Arc<Watch>,
    ) -> Result<Self, TrainError> {
        if place.local >= place.local_peers {
            return Err(TrainError::Config(format!(
                "peer {} of a process with {} peers (peers count from 0)",
                place.local, place.local_peers
            )));
        }
        let id = PeerId::from(u32::try_from(place.local).map_err(|_| too_many(place.local))?);
        let config = CollectiveConfig::default().with_num_devices(place.local_peers);
        let mut me = Self {
            peer: id,
            local: place.local,
            device: device.clone(),
            watch,
        };
        me.waiting(|peer| register::<B>(peer, device.clone(), config))?;
        Ok(me)
    }

    /// Runs one collective call; an aborted run answers with an error before and after it.
    fn waiting<T>(
        &mut self,
        call: impl FnOnce(PeerId) -> Result<T, burn_collective::CollectiveError>,
    ) -> Result<T, TrainError> {
        if self.watch.aborted() {
            return Err(aborted(self.peer));
        }
        let result = call(self.peer);
        if self.watch.aborted() {
            return Err(aborted(self.peer));
        }
        result.map_err(|e| collective(self.peer, e))
    }

    /// Replaces every peer's `tensor` by the first peer's, bit for bit: a sum in which the other
    /// peers add zeros.
    pub fn from_first(&mut self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>, TrainError> {
        let mine = if self.local == 0 {
            tensor
        } else {
            tensor.zeros_like()
        };
        let first = self.waiting(|peer| {
            all_reduce::<B>(peer, mine.into_primitive().tensor(), ReduceOperation::Sum)
        })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(first)))
    }

    /// The device this peer computes on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Whether this is its process's first peer (the one that talks to the other ranks).
    pub fn is_first(&self) -> bool {
        self.local == 0
    }
}

impl<B: Backend> GradientReduce<B> for CollectiveMean<B> {
    fn reduce(&mut self, grads: &mut GradAccumulator<B>) -> Result<(), TrainError> {
        grads.try_map(|grad| {
            let mean = self.waiting(|peer| {
                all_reduce::<B>(peer, grad.into_primitive().tensor(), ReduceOperation::Mean)
            })?;
            Ok(Tensor::from_primitive(TensorPrimitive::Float(mean)))
        })
    }

    fn mean_of(&mut self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let data = TensorData::new(
            values.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
            [values.len()],
        );
        let tensor = Tensor::<B, 1>::from_data(data, &self.device);
        let mean = self.waiting(|peer| {
            all_reduce::<B>(
                peer,
                tensor.into_primitive().tensor(),
                ReduceOperation::Mean,
            )
        })?;
        let mean = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(mean));
        Ok(mean
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap_or_default())
    }
}

impl<B: Backend> Drop for CollectiveMean<B> {
    fn drop(&mut self) {
        if self.watch.aborted() {
            return;
        }
        // nothing to report from a drop: a failed unregistration only matters to a later run in
        // this process, whose registration then fails with a typed error
        let _ = finish_collective::<B>(self.peer);
    }
}

/// The run that holds this process's collective: burn-collective keeps one local server per
/// backend and process, so two data-parallel runs at once would mix their calls; the second waits.
static RUN: Mutex<()> = Mutex::new(());

/// How a peer reports progress: through the supervisor, which hands each event to the caller's
/// observer on the calling thread.
pub struct Reporter<E> {
    sender: Sender<E>,
}

impl<E> Reporter<E> {
    /// Sends `event` to the supervisor (dropped if the run is over).
    pub fn report(&self, event: E) {
        let _ = self.sender.send(event);
    }
}

/// What a peer's body gets: its place, the watch to register with, the way to report.
pub struct Peer<E> {
    /// Where this peer stands.
    pub place: PeerPlace,
    /// Shared with the supervisor; pass it to [`CollectiveMean::join`].
    pub watch: Arc<Watch>,
    /// Progress to the supervisor.
    pub reporter: Reporter<E>,
}

/// Runs `body` once per device on its own thread, supervised from this one: each event a peer
/// reports goes to `on_event` (on this thread), the first local peer's result is returned once
/// every peer has ended, and the first failure (error or panic) of any peer ends the run at once
/// with a typed error.
pub fn run_peers<B, D, E, T, F>(
    devices: &[D],
    rank: PeerPlace,
    body: F,
    mut on_event: impl FnMut(E),
) -> Result<T, TrainError>
where
    B: Backend,
    D: Clone + Send + 'static,
    E: Send + 'static,
    T: Send + 'static,
    F: Fn(Peer<E>, D) -> Result<T, TrainError> + Send + Sync + 'static,
{
    if devices.is_empty() {
        return Err(TrainError::Config("a run needs at least one device".into()));
    }
    let _run = RUN.lock().unwrap_or_else(PoisonError::into_inner);
    let local_peers = devices.len();
    let watch = Arc::new(Watch::new());
    let body = Arc::new(body);
    let (events, event_receiver) = mpsc::channel::<E>();
    let (done, done_receiver) = mpsc::channel::<(usize, Result<T, TrainError>)>();
    for (local, device) in devices.iter().enumerate() {
        let place = PeerPlace {
            local,
            local_peers,
            ..rank
        };
        let peer = Peer {
            place,
            watch: watch.clone(),
            reporter: Reporter {
                sender: events.clone(),
            },
        };
        let (body, done, device) = (body.clone(), done.clone(), device.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("mdm-peer-{local}"))
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| body(peer, device)))
                    .unwrap_or_else(|panic| Err(panicked(place, panic.as_ref())));
                let _ = done.send((local, result));
            });
        if let Err(e) = spawned {
            abort::<B>(&watch);
            return Err(TrainError::PeerFailed {
                peer: local,
                rank: rank.rank,
                reason: format!("could not start its thread: {e}"),
            });
        }
    }
    drop((events, done));
    let supervisor = Supervisor {
        events: event_receiver,
        done: done_receiver,
        watch: &watch,
        rank: rank.rank,
        local_peers,
    };
    supervisor.run::<B>(&mut on_event)
}

struct Supervisor<'a, E, T> {
    events: mpsc::Receiver<E>,
    done: mpsc::Receiver<(usize, Result<T, TrainError>)>,
    watch: &'a Watch,
    rank: u32,
    local_peers: usize,
}

impl<E, T> Supervisor<'_, E, T> {
    fn run<B: Backend>(&self, on_event: &mut impl FnMut(E)) -> Result<T, TrainError> {
        let mut first = None;
        let mut ended = 0;
        while ended < self.local_peers {
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(e) => on_event(e),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            while let Ok((peer, result)) = self.done.try_recv() {
                ended += 1;
                match result {
                    Ok(value) if peer == 0 => first = Some(value),
                    Ok(_) => {}
                    Err(error) => return Err(self.fail::<B>(peer, error)),
                }
            }
        }
        while let Ok(e) = self.events.try_recv() {
            on_event(e);
        }
        first.ok_or_else(|| TrainError::PeerFailed {
            peer: 0,
            rank: self.rank,
            reason: "ended without a result".into(),
        })
    }

    /// Stops the run for `peer`'s `error`; the peers woken by the abort end with errors of their
    /// own, which are not the cause.
    fn fail<B: Backend>(&self, peer: usize, error: TrainError) -> TrainError {
        abort::<B>(self.watch);
        drain(&self.done, Duration::from_secs(2));
        match error {
            error @ (TrainError::PeerFailed { .. }
            | TrainError::RankTimeout { .. }
            | TrainError::RankFailed { .. }
            | TrainError::Mpi(_)) => error,
            error => TrainError::PeerFailed {
                peer,
                rank: self.rank,
                reason: error.to_string(),
            },
        }
    }
}

/// Waits up to `grace` for the remaining peers' results (and drops them).
fn drain<T>(receiver: &mpsc::Receiver<T>, grace: Duration) {
    let until = Instant::now() + grace;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if receiver.recv_timeout(left).is_err() {
            break;
        }
    }
}

/// Tells every peer to stop and wakes the ones waiting in this process's collective.
fn abort<B: Backend>(watch: &Watch) {
    watch.abort.store(true, Ordering::SeqCst);
    reset_collective::<B>();
}

fn panicked(place: PeerPlace, panic: &(dyn std::any::Any + Send)) -> TrainError {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into());
    TrainError::PeerFailed {
        peer: place.local,
        rank: place.rank,
        reason: format!("panicked: {message}"),
    }
}

fn aborted(peer: PeerId) -> TrainError {
    TrainError::Collective {
        peer: peer.0,
        reason: "the run was stopped (another peer failed or timed out)".into(),
    }
}

fn collective(peer: PeerId, error: burn_collective::CollectiveError) -> TrainError {
    TrainError::Collective {
        peer: peer.0,
        reason: format!("{error:?}"),
    }
}

fn too_many(peer: usize) -> TrainError {
    TrainError::Config(format!("peer {peer}: at most {} peers", u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// `peer` joined on the CPU, in one process.
    fn join(peer: &Peer<()>) -> Result<CollectiveMean<Flex>, TrainError> {
        CollectiveMean::join(peer.place, &Default::default(), peer.watch.clone())
    }

    fn reduce_forever(peer: Peer<()>, fail_after: Option<usize>) -> Result<usize, TrainError> {
        let mut c = join(&peer)?;
        for step in 0.. {
            if fail_after == Some(step) {
                return Err(TrainError::Config("this peer broke".into()));
            }
            c.at_step(step);
            let mean = c.mean_of(&[peer.place.local as f64])?;
            assert_eq!(mean, vec![0.5]);
        }
        Ok(0)
    }

    fn assert_peer_failed<T: std::fmt::Debug>(
        result: Result<T, TrainError>,
        peer: usize,
        says: &str,
    ) {
        match result {
            Err(TrainError::PeerFailed {
                peer: failed,
                reason,
                ..
            }) => {
                assert_eq!(failed, peer);
                assert!(reason.contains(says), "{reason}");
            }
            other => panic!("expected peer {peer}'s failure, got {other:?}"),
        }
    }

    #[test]
    fn a_failing_peer_stops_the_run_at_once_naming_it() {
        let started = Instant::now();
        let result = run_peers::<Flex, _, (), _, _>(
            &[0usize, 1],
            PeerPlace::SINGLE,
            |peer, _| {
                let fail = (peer.place.local == 1).then_some(3);
                reduce_forever(peer, fail)
            },
            |_| {},
        );
        assert_peer_failed(result, 1, "this peer broke");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_panicking_peer_is_a_typed_error_and_the_next_run_works() {
        let result = run_peers::<Flex, _, (), _, _>(
            &[0usize, 1],
            PeerPlace::SINGLE,
            |peer, _| {
                if peer.place.local == 0 {
                    panic!("peer zero fell over");
                }
                reduce_forever(peer, None)
            },
            |_| {},
        );
        assert_peer_failed(result, 0, "fell over");
        // the collective is usable again by a run after it
        let ok = run_peers::<Flex, _, (), _, _>(
            &[0usize, 1],
            PeerPlace::SINGLE,
            |peer, _| {
                let mut c = join(&peer)?;
                let mean = c.mean_of(&[peer.place.local as f64 * 2.0])?;
                Ok(mean[0])
            },
            |_| {},
        );
        assert_eq!(ok.unwrap(), 1.0);
    }
}
