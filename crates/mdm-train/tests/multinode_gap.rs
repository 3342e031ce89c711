//! Watches the gap that keeps training on several machines switched off
//! (`mdm_train::parallel::MULTI_NODE_GAP`): two nodes of burn-collective's global collective, in
//! one process (two backend types have two local servers, each its own node), register with the
//! coordinator and all-reduce three times. In burn-collective 0.21 only the first global
//! operation returns. When this test fails because all three return, the fix has landed: lift the
//! trainer's refusal of `parallel.nodes > 1` and test two nodes end to end.
//!
//! Also here, because it leaves a backend's local server blocked for good (each test binary is a
//! process of its own): the bound on a wait for other nodes. A node whose coordinator never
//! answers stops with `TrainError::CollectiveTimeout` after `parallel.timeout_s`.

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{
    all_reduce, register, AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation,
};
use mdm_train::parallel::{run_peers, CollectiveMean};
use mdm_train::{ParallelConfig, TrainError};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One node: registers, then all-reduces `[1, 2]` three times, reporting each completion.
fn node<B: Backend>(coordinator: u16, data_port: u16, done: mpsc::Sender<(u16, usize)>) {
    std::thread::spawn(move || {
        let config = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(2)
            .with_global_address(format!("ws://127.0.0.1:{coordinator}").parse().unwrap())
            .with_node_address(format!("ws://127.0.0.1:{data_port}").parse().unwrap())
            .with_data_service_port(data_port)
            .with_global_all_reduce_strategy(AllReduceStrategy::Centralized);
        let device = B::Device::default();
        if register::<B>(PeerId(0), device.clone(), config).is_err() {
            return;
        }
        for op in 0..3 {
            let x = Tensor::<B, 1>::from_floats([1.0, 2.0], &device);
            let r = all_reduce::<B>(
                PeerId(0),
                x.into_primitive().tensor(),
                ReduceOperation::Mean,
            );
            let Ok(mean) = r else { return };
            let mean = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(mean));
            assert_eq!(mean.into_data().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
            if done.send((data_port, op)).is_err() {
                return;
            }
        }
    });
}

#[test]
fn burn_collective_completes_only_the_first_global_operation() {
    let coordinator = free_port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(burn_collective::start_global_orchestrator(coordinator));
    });
    let (done, completions) = mpsc::channel();
    node::<Flex>(coordinator, free_port(), done.clone());
    node::<Autodiff<Flex>>(coordinator, free_port(), done);
    let mut ops = Vec::new();
    while let Ok((_, op)) = completions.recv_timeout(Duration::from_secs(10)) {
        ops.push(op);
    }
    ops.sort();
    eprintln!("global all-reduces completed (node x op): {ops:?}");
    assert_eq!(
        ops,
        vec![0, 0],
        "burn-collective's global collective now completes {ops:?}: if every node did all \
         three operations the gap is fixed (lift MULTI_NODE_GAP); anything else is new behaviour"
    );
}

#[test]
fn a_node_whose_coordinator_never_answers_stops_with_a_timeout() {
    // a third backend type: its own local server, blocked by this test only
    type Lonely = Autodiff<Autodiff<Flex>>;
    let silent = free_port(); // nothing listens there
    let parallel = ParallelConfig {
        nodes: 2,
        node_rank: 1,
        coordinator: Some(format!("ws://127.0.0.1:{silent}")),
        node_address: Some(format!("ws://127.0.0.1:{}", free_port())),
        data_port: Some(free_port()),
        timeout_s: 1,
        ..ParallelConfig::default()
    };
    let config = parallel.clone();
    let started = std::time::Instant::now();
    let result = run_peers::<Lonely, _, (), _, _>(
        &[0usize],
        &parallel,
        move |peer, _| {
            CollectiveMean::<Lonely>::join(peer.place, &config, &Default::default(), peer.watch)
                .map(|_| ())
        },
        |_| {},
    );
    match result {
        Err(TrainError::CollectiveTimeout {
            node, nodes, what, ..
        }) => assert_eq!((node, nodes, what), (1, 2, "registration")),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    eprintln!("a node alone gave up after {waited:?} (timeout 1 s)");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}
