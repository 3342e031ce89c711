//! Data parallel on one machine: each peer (a thread with its own device and its own replica of
//! the model) computes the gradients of its slice of every global batch, and [`CollectiveMean`]
//! replaces them by their mean over the peers before clipping and AdamW, so every replica makes
//! the update one device would make on the whole batch and the replicas stay equal.
//!
//! The all-reduce is burn's own (`burn-collective`, version-matched to our burn), not ours: its
//! local server pairs the peers' calls by order, so every peer must call it for the same
//! parameters in the same order, which the trainer's fixed visit order guarantees.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{
    all_reduce, finish_collective, register, CollectiveConfig, PeerId, ReduceOperation,
};

use crate::optim::GradAccumulator;
use crate::step::GradientReduce;
use crate::TrainError;

/// One peer of a data-parallel run on one machine: registered with burn-collective on creation,
/// unregistered when dropped.
#[derive(Debug)]
pub struct CollectiveMean<B: Backend> {
    peer: PeerId,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> CollectiveMean<B> {
    /// Registers peer `peer` (`0..peers`) on `device`. Every peer of the run must register (each
    /// from its own thread) before any of them reduces.
    pub fn register(peer: usize, peers: usize, device: &B::Device) -> Result<Self, TrainError> {
        let id = PeerId::from(u32::try_from(peer).map_err(|_| too_many(peer))?);
        if peer >= peers {
            return Err(TrainError::Config(format!(
                "peer {peer} of a run with {peers} peers (peers count from 0)"
            )));
        }
        let config = CollectiveConfig::default().with_num_devices(peers);
        register::<B>(id, device.clone(), config).map_err(|e| collective(id, e))?;
        Ok(Self {
            peer: id,
            _backend: std::marker::PhantomData,
        })
    }
}

impl<B: Backend> GradientReduce<B> for CollectiveMean<B> {
    fn reduce(&mut self, grads: &mut GradAccumulator<B>) -> Result<(), TrainError> {
        let peer = self.peer;
        grads.try_map(|grad| {
            let primitive = grad.into_primitive().tensor();
            let mean = all_reduce::<B>(peer, primitive, ReduceOperation::Mean)
                .map_err(|e| collective(peer, e))?;
            Ok(Tensor::from_primitive(TensorPrimitive::Float(mean)))
        })
    }
}

impl<B: Backend> Drop for CollectiveMean<B> {
    fn drop(&mut self) {
        // nothing to report from a drop: a failed unregistration only matters to a later run in
        // this process, whose registration then fails with a typed error
        let _ = finish_collective::<B>(self.peer);
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
