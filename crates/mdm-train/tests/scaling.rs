//! A tiny IsoFLOP sweep end to end: every grid point trained once, skipped when run again, and a
//! result row lost after its run finished recovered without training again.

use burn::backend::{Autodiff, Flex};
use mdm_data::corpus::{prepare_corpus, CorpusOptions};
use mdm_data::facts::FactWorld;
use mdm_data::text::DocumentSplit;
use mdm_train::scaling::{fit_sweep, read_results, run_sweep, RunEvent, ScalingGrid, SizeSpec};
use mdm_train::{Objective, TrainConfig};

type B = Autodiff<Flex>;

fn size(name: &str, n_embd: usize) -> SizeSpec {
    SizeSpec {
        name: name.into(),
        n_layer: Some(1),
        n_head: Some(2),
        n_embd: Some(n_embd),
        intermediate: Some(2 * n_embd),
        budgets: None,
    }
}

#[test]
fn a_sweep_trains_each_point_once_and_recovers_lost_rows() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("world.txt");
    std::fs::write(
        &text,
        FactWorld::generate(30, 1).training_sentences().join("\n"),
    )
    .unwrap();
    let mut corpus = CorpusOptions::new(vec![text]);
    corpus.split = DocumentSplit::Lines;
    corpus.vocab_size = 300;
    corpus.valid_fraction = 0.2;
    corpus.chunk_size = 17 * 8;
    corpus.valid_chunk_size = 17 * 8;
    let data = dir.path().join("data");
    prepare_corpus(&corpus, &data, |_, _| {}).unwrap();
    let grid = ScalingGrid {
        data,
        out: dir.path().join("sweep"),
        budgets: vec![1e7, 2e7],
        sizes: vec![size("a", 16), size("b", 24), size("c", 32)],
        models: vec![Objective::Mdm, Objective::Arm],
        warmup_fraction: 0.1,
        train: TrainConfig {
            seq_len: 16,
            micro_batch: 2,
            eval_blocks: 4,
            eval_mc: 1,
            log_every: 1000,
            ..Default::default()
        },
    };
    let device = [Default::default()];
    let mut finished = 0;
    let first = run_sweep::<B>(&grid, false, &device, |e| {
        finished += usize::from(matches!(e, RunEvent::Finished(_)))
    })
    .unwrap();
    assert_eq!((first.len(), finished), (12, 12));
    // smaller models get more steps from the same budget
    let steps = |name: &str| first.iter().find(|r| r.run == name).unwrap().steps;
    assert!(steps("mdm-a-1e7") > steps("mdm-c-1e7"));
    assert!(steps("arm-b-2e7") > steps("arm-b-1e7"));
    assert!(first
        .iter()
        .all(|r| r.flops_paper <= r.budget && r.flops_full > r.flops_paper));

    // run again: everything is skipped, the rows stay
    let mut skipped = 0;
    run_sweep::<B>(&grid, false, &device, |e| {
        skipped += usize::from(matches!(e, RunEvent::Skipped(_)))
    })
    .unwrap();
    assert_eq!(skipped, 12);
    let path = grid.out.join("results.csv");
    let before = read_results(&path).unwrap();
    assert_eq!(before.len(), 12);

    // lose the last three rows (as a crash between a run's end and its row would): they come back
    // from the runs' own validation, with no training step taken
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().take(1 + 9).collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let mut recovered = vec![];
    run_sweep::<B>(&grid, false, &device, |e| {
        if let RunEvent::Finished(r) = e {
            recovered.push(r.clone())
        }
    })
    .unwrap();
    assert_eq!(recovered.len(), 3);
    let after = read_results(&path).unwrap();
    assert_eq!(after.len(), 12);
    for r in &recovered {
        let old = before.iter().find(|b| b.run == r.run).unwrap();
        assert_eq!(
            (r.steps, r.tokens, r.params),
            (old.steps, old.tokens, old.params)
        );
        assert!(
            (r.valid_nats - old.valid_nats).abs() < 1e-5,
            "{r:?} {old:?}"
        );
    }
    let fit = fit_sweep(&after).unwrap();
    assert_eq!(fit.families.len(), 2);
    assert!(fit
        .families
        .iter()
        .all(|f| f.optima.len() == 2 && f.loss_law.is_some()));
}
