//! What a run reports as it goes: [`TrainEvent`]s, handed to a [`TrainObserver`]. The loop itself
//! prints nothing; [`ConsoleReporter`] turns the events into a progress bar or log lines, and a
//! program that embeds the trainer passes its own observer (a closure will do).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use mdm_eval::perplexity::PerTokenNll;
use mdm_models::checkpoint::ModelKind;

use crate::step::StepOutcome;

/// One thing that happened in a run.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The validation blocks are read.
    ValidationSet {
        /// Blocks.
        blocks: usize,
        /// Tokens per block.
        block_len: usize,
        /// Entropy of their unigram distribution, bits per token.
        unigram_bits: f64,
    },
    /// A fresh run starts.
    Started {
        /// Which network.
        kind: ModelKind,
        /// Its non-embedding parameters.
        params: usize,
        /// Steps planned.
        total_steps: usize,
        /// Tokens per optimizer step.
        tokens_per_step: usize,
    },
    /// A run resumes.
    Resumed {
        /// The checkpoint it continues from.
        checkpoint: PathBuf,
        /// Steps already done.
        step: usize,
        /// Steps planned.
        total_steps: usize,
    },
    /// An optimizer step finished.
    Step {
        /// Steps done (1-based: the step just finished).
        step: usize,
        /// Steps planned.
        total_steps: usize,
        /// Its learning rate.
        lr: f64,
        /// Loss and gradient norm.
        outcome: StepOutcome,
        /// Throughput over the recent window.
        tokens_per_s: f64,
    },
    /// A validation finished.
    Validated {
        /// After this many steps.
        step: usize,
        /// Which network (the MDM's figure is a bound).
        kind: ModelKind,
        /// The result.
        nll: PerTokenNll,
    },
    /// A checkpoint was written.
    Checkpointed {
        /// Its folder.
        dir: PathBuf,
    },
    /// Something went wrong that does not stop the run (e.g. a plot could not be drawn).
    Warning(String),
}

/// Receives a run's events.
pub trait TrainObserver {
    /// Called for each event, in order.
    fn on_event(&mut self, event: &TrainEvent);
}

impl<F: FnMut(&TrainEvent)> TrainObserver for F {
    fn on_event(&mut self, event: &TrainEvent) {
        self(event)
    }
}

/// Prints a run's events: an indicatif progress bar, or, without one, a log line every
/// `log_every` steps; validations, starts and warnings always.
pub struct ConsoleReporter {
    bar: ProgressBar,
    log_every: usize,
    last_validation_bits: Option<f64>,
}

impl ConsoleReporter {
    /// A progress bar when `progress`, else log lines on stderr.
    pub fn new(progress: bool, log_every: usize) -> Self {
        let bar = if progress {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  ETA {eta}  {msg}",
        ) {
            bar.set_style(style);
        }
        Self {
            bar,
            log_every,
            last_validation_bits: None,
        }
    }

    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the bar (call when the run ends).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for ConsoleReporter {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl TrainObserver for ConsoleReporter {
    fn on_event(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::ValidationSet {
                blocks,
                block_len,
                unigram_bits,
            } => self.say(format!(
                "validation set: {blocks} blocks of {block_len} tokens, unigram entropy \
                 {unigram_bits:.4} bits/token"
            )),
            TrainEvent::Started {
                kind,
                params,
                total_steps,
                tokens_per_step,
            } => {
                self.bar.set_length(*total_steps as u64);
                self.say(format!(
                    "training {kind:?} ({params} non-embedding parameters) for {total_steps} \
                     steps of {tokens_per_step} tokens"
                ));
            }
            TrainEvent::Resumed {
                checkpoint,
                step,
                total_steps,
            } => {
                self.bar.set_length(*total_steps as u64);
                self.bar.set_position(*step as u64);
                self.say(format!(
                    "resumed from {} at step {step}",
                    checkpoint.display()
                ));
            }
            TrainEvent::Step {
                step,
                total_steps,
                lr,
                outcome,
                tokens_per_s,
            } => {
                self.bar.set_position(*step as u64);
                self.bar.set_message(format!(
                    "loss {:.4}  {tokens_per_s:.0} tok/s{}",
                    outcome.loss,
                    self.last_validation_bits
                        .map_or(String::new(), |b| format!("  val {b:.3} bits/tok"))
                ));
                if self.bar.is_hidden() && self.log_every > 0 && step.is_multiple_of(self.log_every)
                {
                    eprintln!(
                        "step {step}/{total_steps}  loss {:.4}  lr {lr:.2e}  grad norm {:.3}  \
                         {tokens_per_s:.0} tok/s",
                        outcome.loss, outcome.grad_norm
                    );
                }
            }
            TrainEvent::Validated { step, kind, nll } => {
                self.last_validation_bits = Some(nll.bits());
                self.say(format!(
                    "step {step}: validation {:.4} ± {:.4} bits/token (perplexity {}{:.2}) on {} \
                     tokens",
                    nll.bits(),
                    nll.stderr_bits(),
                    if *kind == ModelKind::Masked {
                        "≤ "
                    } else {
                        ""
                    },
                    nll.perplexity(),
                    nll.tokens
                ));
            }
            TrainEvent::Checkpointed { .. } => {}
            TrainEvent::Warning(message) => self.say(message.clone()),
        }
    }
}
