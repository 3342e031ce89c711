//! Data parallel: each peer (a thread with its own device and its own replica of the model)
//! computes the gradients of its share of every global batch, and [`CollectiveMean`] replaces them
//! by their mean over all peers before clipping and AdamW, so every replica makes the update one
//! device would make on the whole batch and the replicas stay equal. Peers on several machines
//! (nodes) would meet through burn-collective's global coordinator; the trainer refuses that for
//! now ([`MULTI_NODE_GAP`]).
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
//! (the others are woken by resetting the local collective and told to abort), and when every
//! peer of this node has waited inside one collective operation for longer than the timeout
//! (another node died or cannot be reached), the run stops with
//! [`TrainError::CollectiveTimeout`]. Peers that stay blocked in burn-collective are left behind
//! (they hold no files); a program ends them by exiting.

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

use crate::config::ParallelConfig;
use crate::optim::GradAccumulator;
use crate::step::GradientReduce;
use crate::TrainError;

/// Where one peer stands in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPlace {
    /// Index among this node's peers (burn-collective's peer id), `0..local`.
    pub local: usize,
    /// Peers on this node.
    pub local_peers: usize,
    /// This node's rank.
    pub node: u32,
    /// Nodes in the run.
    pub nodes: u32,
}

impl PeerPlace {
    /// The only peer of a one-device run.
    pub const SINGLE: Self = Self {
        local: 0,
        local_peers: 1,
        node: 0,
        nodes: 1,
    };

    /// Index of this peer in the whole run: node-major.
    pub fn global(&self) -> usize {
        self.node as usize * self.local_peers + self.local
    }

    /// Peers in the whole run.
    pub fn world(&self) -> usize {
        self.local_peers * self.nodes as usize
    }

    /// The peer that writes the run's files (checkpoints, metrics, validation, final model) and
    /// reports progress: global peer 0.
    pub fn is_leader(&self) -> bool {
        self.global() == 0
    }
}

/// A wait inside a collective operation: since when, for which step, which operation.
type Wait = (Instant, usize, &'static str);

/// What the supervisor sees of each local peer: whether, since when and for which step it waits
/// inside a collective operation, and the run's abort flag.
#[derive(Debug)]
pub struct Watch {
    waiting: Mutex<Vec<Option<Wait>>>,
    abort: AtomicBool,
}

impl Watch {
    fn new(peers: usize) -> Self {
        Self {
            waiting: Mutex::new(vec![None; peers]),
            abort: AtomicBool::new(false),
        }
    }

    fn set(&self, peer: usize, state: Option<Wait>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = waiting.get_mut(peer) {
            *slot = state;
        }
    }

    /// When every peer waits: the earliest start, the step and the operation.
    fn all_waiting(&self) -> Option<Wait> {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut earliest: Option<Wait> = None;
        for w in waiting.iter() {
            let w = (*w)?;
            if earliest.is_none_or(|e| w.0 < e.0) {
                earliest = Some(w);
            }
        }
        earliest
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
    step: usize,
}

impl<B: Backend> CollectiveMean<B> {
    /// Registers peer `peer` (`0..peers`) of a run on this machine alone, on `device`. Every
    /// peer of the run must register (each from its own thread) before any of them reduces; this
    /// blocks until they have.
    pub fn register(peer: usize, peers: usize, device: &B::Device) -> Result<Self, TrainError> {
        let place = PeerPlace {
            local: peer,
            local_peers: peers,
            node: 0,
            nodes: 1,
        };
        Self::join(
            place,
            &ParallelConfig::default(),
            device,
            Arc::new(Watch::new(peers)),
        )
    }

    /// Registers the peer at `place` with the node settings of `parallel`, reporting its waits to
    /// `watch`.
    pub fn join(
        place: PeerPlace,
        parallel: &ParallelConfig,
        device: &B::Device,
        watch: Arc<Watch>,
    ) -> Result<Self, TrainError> {
        if place.local >= place.local_peers {
            return Err(TrainError::Config(format!(
                "peer {} of a node with {} peers (peers count from 0)",
                place.local, place.local_peers
            )));
        }
        let id = PeerId::from(u32::try_from(place.local).map_err(|_| too_many(place.local))?);
        let config = collective_config(place.local_peers, parallel)?;
        let mut me = Self {
            peer: id,
            local: place.local,
            device: device.clone(),
            watch,
            step: 0,
        };
        me.waiting("registration", |peer| {
            register::<B>(peer, device.clone(), config)
        })?;
        Ok(me)
    }

    /// Runs one collective call, reported to the watch while it waits; an aborted run answers
    /// with an error before calling.
    fn waiting<T>(
        &mut self,
        what: &'static str,
        call: impl FnOnce(PeerId) -> Result<T, burn_collective::CollectiveError>,
    ) -> Result<T, TrainError> {
        if self.watch.aborted() {
            return Err(aborted(self.peer));
        }
        self.watch
            .set(self.local, Some((Instant::now(), self.step, what)));
        let result = call(self.peer);
        self.watch.set(self.local, None);
        if self.watch.aborted() {
            return Err(aborted(self.peer));
        }
        result.map_err(|e| collective(self.peer, e))
    }
}

impl<B: Backend> GradientReduce<B> for CollectiveMean<B> {
    fn reduce(&mut self, grads: &mut GradAccumulator<B>) -> Result<(), TrainError> {
        grads.try_map(|grad| {
            let mean = self.waiting("all-reduce", |peer| {
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
        let mean = self.waiting("all-reduce", |peer| {
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

    fn at_step(&mut self, step: usize) {
        self.step = step;
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

/// burn-collective's configuration for a node with `local_peers` devices.
fn collective_config(
    local_peers: usize,
    parallel: &ParallelConfig,
) -> Result<CollectiveConfig, TrainError> {
    let config = CollectiveConfig::default().with_num_devices(local_peers);
    if parallel.nodes <= 1 {
        return Ok(config);
    }
    let (Some(coordinator), Some(node_address), Some(port)) = (
        &parallel.coordinator,
        &parallel.node_address,
        parallel.data_port,
    ) else {
        return Err(TrainError::Config(
            "a run on several nodes needs parallel.coordinator, node_address and data_port".into(),
        ));
    };
    let address = |key: &str, a: &str| {
        a.parse()
            .map_err(|e| TrainError::Config(format!("parallel.{key} `{a}`: {e}")))
    };
    Ok(config
        .with_num_nodes(parallel.nodes)
        .with_global_address(address("coordinator", coordinator)?)
        .with_node_address(address("node_address", node_address)?)
        .with_data_service_port(port))
}

/// Why runs on several machines stop before they start: burn-collective 0.21's node-to-node
/// synchronisation (`SyncService::sync`, `src/global/node/sync.rs`) clears a copy of its list of
/// synced nodes instead of the list, so the second global operation after a registration waits
/// forever (seen here: two nodes on loopback register and average once, then the first gradient
/// all-reduce of step 0 never returns, with every global strategy; `tests/multinode_gap.rs`
/// watches for a fixed release). Working around it would mean re-registering every node for every
/// operation, which its coordinator numbers nodes by arrival for, and races; writing our own
/// network all-reduce is what this crate does not do.
pub const MULTI_NODE_GAP: &str = "training on several nodes waits for a fix in burn-collective: \
    in 0.21 the second global all-reduce after a registration never returns (SyncService::sync \
    in burn-collective's src/global/node/sync.rs clears a copy of its synced-node list); use \
    several devices of one machine (--devices), see docs/training.md";

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
/// every peer has ended, and the first failure (error or panic) of any peer, or a collective wait
/// longer than `parallel.timeout_s` on every peer of this node, ends the run at once with a typed
/// error.
pub fn run_peers<B, D, E, T, F>(
    devices: &[D],
    parallel: &ParallelConfig,
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
    let watch = Arc::new(Watch::new(local_peers));
    let body = Arc::new(body);
    let (events, event_receiver) = mpsc::channel::<E>();
    let (done, done_receiver) = mpsc::channel::<(usize, Result<T, TrainError>)>();
    for (local, device) in devices.iter().enumerate() {
        let place = PeerPlace {
            local,
            local_peers,
            node: parallel.node_rank,
            nodes: parallel.nodes.max(1),
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
                node: parallel.node_rank,
                reason: format!("could not start its thread: {e}"),
            });
        }
    }
    drop((events, done));
    let supervisor = Supervisor {
        events: event_receiver,
        done: done_receiver,
        watch: &watch,
        parallel,
        local_peers,
    };
    supervisor.run::<B>(&mut on_event)
}

struct Supervisor<'a, E, T> {
    events: mpsc::Receiver<E>,
    done: mpsc::Receiver<(usize, Result<T, TrainError>)>,
    watch: &'a Watch,
    parallel: &'a ParallelConfig,
    local_peers: usize,
}

impl<E, T> Supervisor<'_, E, T> {
    fn run<B: Backend>(&self, on_event: &mut impl FnMut(E)) -> Result<T, TrainError> {
        let timeout = Duration::from_secs(self.parallel.timeout_s);
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
            if let Some(error) = self.timed_out::<B>(timeout) {
                return Err(error);
            }
        }
        while let Ok(e) = self.events.try_recv() {
            on_event(e);
        }
        first.ok_or_else(|| TrainError::PeerFailed {
            peer: 0,
            node: self.parallel.node_rank,
            reason: "ended without a result".into(),
        })
    }

    /// Stops the run for `peer`'s `error`; the peers woken by the abort end with errors of their
    /// own, which are not the cause.
    fn fail<B: Backend>(&self, peer: usize, error: TrainError) -> TrainError {
        abort::<B>(self.watch);
        drain(&self.done, Duration::from_secs(2));
        match error {
            error @ (TrainError::PeerFailed { .. } | TrainError::CollectiveTimeout { .. }) => error,
            error => TrainError::PeerFailed {
                peer,
                node: self.parallel.node_rank,
                reason: error.to_string(),
            },
        }
    }

    /// Every local peer has waited inside a collective operation for longer than `timeout`: the
    /// other nodes are gone (a node's own peers cannot all wait for nothing).
    fn timed_out<B: Backend>(&self, timeout: Duration) -> Option<TrainError> {
        if self.parallel.nodes <= 1 {
            return None;
        }
        let (since, step, what) = self.watch.all_waiting()?;
        if since.elapsed() <= timeout {
            return None;
        }
        abort::<B>(self.watch);
        Some(TrainError::CollectiveTimeout {
            node: self.parallel.node_rank,
            nodes: self.parallel.nodes,
            step,
            what,
            waited_s: since.elapsed().as_secs(),
        })
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
        node: place.node,
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

    /// `peer` joined on the CPU, on one node.
    fn join(peer: &Peer<()>) -> Result<CollectiveMean<Flex>, TrainError> {
        CollectiveMean::join(
            peer.place,
            &ParallelConfig::default(),
            &Default::default(),
            peer.watch.clone(),
        )
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
            &ParallelConfig::default(),
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
            &ParallelConfig::default(),
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
            &ParallelConfig::default(),
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
