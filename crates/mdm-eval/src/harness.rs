//! Running a [`Task`] on a model: tokenisation as lm-evaluation-harness does it, the estimator and
//! CFG scale chosen per task, metrics with standard errors, and what it cost.
//!
//! ```
//! use burn::backend::Flex;
//! use mdm_eval::harness::{evaluate_task, markdown_table, TaskSettings};
//! use mdm_eval::Masked;
//! use mdm_eval::tasks::{ContinuationItem, Task, TaskItems};
//! use mdm_models::ModelConfig;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let tokenizer = mdm_data::Tokenizer::train_bpe(["a small world of words"].into_iter(), 300)?;
//! let config = ModelConfig::custom(tokenizer.vocab_size(), 1, 2, 32, 64, 32);
//! let model = config.init_masked::<Flex>(0, &Default::default())?;
//! let item = ContinuationItem { id: "0".into(), context: "a small".into(), continuation: " world".into() };
//! let task = Task { name: "toy".into(), file: dir.path().into(), items: TaskItems::Continuation(vec![item]) };
//! let result = evaluate_task(&Masked(&model), &tokenizer, &task, &TaskSettings::default(), |_, _| {})?;
//! assert_eq!(result.metrics[0].name, "acc");
//! println!("{}", markdown_table(&[result]));
//! # Ok(()) }
//! ```

use mdm_kernels::Kernels;
use std::str::FromStr;
use std::time::Instant;

use burn::tensor::backend::Backend;
use mdm_data::Tokenizer;
use mdm_models::{MaskPredictor, ModelKind};
use mdm_samplers::{DecodingOptions, MaskedDiffusionSampler};
use serde::Serialize;

use crate::likelihood::McOptions;
use crate::metrics::{
    contains_reference, gsm8k_answer, mean, mean_stderr, multiple_choice, sentence_bleu,
};
use crate::model::{ForwardCost, LanguageModel, Run, Scoring};
use crate::tasks::{Reference, Task, TaskItems};
use crate::EvalError;

/// How an MDM scores a continuation (the autoregressive baseline is always exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// The Monte Carlo ELBO bound ([`crate::likelihood::mc_elbo`]).
    MonteCarlo,
    /// The exact chain rule ([`crate::likelihood::chain_rule`]).
    ChainRule,
}

/// Per-task settings. Defaults: Monte Carlo with 128 samples in batches of 32, no CFG, 64 generated
/// tokens in as many steps, 16 prompts per generation batch, seed 0.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSettings {
    /// Likelihood estimator of an MDM.
    pub estimator: Estimator,
    /// Monte Carlo options (its `cfg_scale` is replaced by [`TaskSettings::cfg_scale`]).
    pub mc: McOptions,
    /// Unsupervised CFG scale of an MDM (0 = off).
    pub cfg_scale: f64,
    /// Tokens to generate (generation tasks).
    pub gen_length: usize,
    /// Denoising steps of an MDM generation (`None`: one per token).
    pub steps: Option<usize>,
    /// Prompts per generation batch.
    pub gen_batch: usize,
    /// Evaluate only the first `limit` items.
    pub limit: Option<usize>,
    /// Seed of the Monte Carlo draws.
    pub seed: u64,
    /// Generations kept in the result for inspection.
    pub keep_samples: usize,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            estimator: Estimator::MonteCarlo,
            mc: McOptions::default(),
            cfg_scale: 0.0,
            gen_length: 64,
            steps: None,
            gen_batch: 16,
            limit: None,
            seed: 0,
            keep_samples: 5,
        }
    }
}

/// A task name with per-task settings: `name[:key=value]...`, keys `estimator` (`mc` or `chain`),
/// `cfg`, `mc` (samples), `gen` (tokens to generate), `steps`. Example: `lambada:estimator=chain:cfg=0.5`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskSpec {
    /// The task name or JSONL path.
    pub name: String,
    /// Estimator override.
    pub estimator: Option<Estimator>,
    /// CFG scale override.
    pub cfg_scale: Option<f64>,
    /// Monte Carlo sample count override.
    pub mc_num: Option<usize>,
    /// Generation length override.
    pub gen_length: Option<usize>,
    /// Denoising steps override.
    pub steps: Option<usize>,
}

impl TaskSpec {
    /// `base` with this spec's overrides.
    pub fn settings(&self, base: &TaskSettings) -> TaskSettings {
        let mut s = base.clone();
        s.estimator = self.estimator.unwrap_or(s.estimator);
        s.cfg_scale = self.cfg_scale.unwrap_or(s.cfg_scale);
        s.mc.mc_num = self.mc_num.unwrap_or(s.mc.mc_num);
        s.gen_length = self.gen_length.unwrap_or(s.gen_length);
        s.steps = self.steps.or(s.steps);
        s
    }
}

impl FromStr for TaskSpec {
    type Err = EvalError;

    fn from_str(spec: &str) -> Result<Self, EvalError> {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default().trim();
        if name.is_empty() {
            return Err(EvalError::Request(format!(
                "task spec `{spec}` has no name"
            )));
        }
        let mut out = TaskSpec {
            name: name.to_string(),
            ..Default::default()
        };
        let bad = |what: &str| EvalError::Request(format!("task spec `{spec}`: {what}"));
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(&format!("`{part}` is not key=value")))?;
            let number = || {
                value
                    .parse::<f64>()
                    .map_err(|_| bad(&format!("`{value}` is not a number")))
            };
            let count = || {
                value
                    .parse::<usize>()
                    .map_err(|_| bad(&format!("`{value}` is not a count")))
            };
            match key {
                "estimator" => {
                    out.estimator = Some(match value {
                        "mc" => Estimator::MonteCarlo,
                        "chain" => Estimator::ChainRule,
                        _ => return Err(bad("estimator is `mc` or `chain`")),
                    })
                }
                "cfg" => out.cfg_scale = Some(number()?),
                "mc" => out.mc_num = Some(count()?),
                "gen" => out.gen_length = Some(count()?),
                "steps" => out.steps = Some(count()?),
                _ => {
                    return Err(bad(&format!(
                        "unknown key `{key}` (estimator, cfg, mc, gen, steps)"
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// One reported number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// `acc`, `acc_norm`, `perplexity`, `exact_match`, `bleu`.
    pub name: String,
    /// The value (accuracies and BLEU in `[0, 1]`).
    pub value: f64,
    /// Its standard error over items.
    pub stderr: f64,
    /// Items it is computed over.
    pub n: usize,
}

/// A generation kept for inspection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Item id.
    pub id: String,
    /// The prompt.
    pub prompt: String,
    /// The generated text.
    pub generation: String,
    /// The reference.
    pub reference: String,
}

/// The result of one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskResult {
    /// Task name.
    pub task: String,
    /// `mdm` or `arm`.
    pub model: String,
    /// Items evaluated.
    pub n: usize,
    /// Estimator used (MDM likelihood tasks).
    pub estimator: Option<Estimator>,
    /// CFG scale used (MDM).
    pub cfg_scale: f64,
    /// The metrics.
    pub metrics: Vec<Metric>,
    /// Items whose context was cut from the left to fit the model's block size.
    pub truncated_contexts: usize,
    /// Batched model calls.
    pub forward_passes: usize,
    /// Sequences (rows) the model ran.
    pub forward_rows: usize,
    /// Token positions the model ran (rows times their length; generation: before early-stop savings).
    pub tokens: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The first generations (generation tasks).
    pub samples: Vec<Sample>,
}

#[derive(Default)]
struct Cost {
    model: ForwardCost,
    truncated: usize,
}

/// Token ids of a context and a continuation as lm-evaluation-harness makes them: trailing spaces of
/// the context move to the continuation, the pair is encoded whole, and the continuation is what
/// follows the context's own encoding. The context starts with the tokenizer's BOS or, without one,
/// its EOS (the document separator the shards put before every document).
pub fn encode_pair(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<usize>, Vec<usize>), EvalError> {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let start = tokenizer.document_start() as usize;
    let as_usize = |ids: Vec<u32>| ids.into_iter().map(|t| t as usize).collect::<Vec<_>>();
    let whole = as_usize(tokenizer.encode(&format!("{trimmed}{continuation}"), false)?);
    let ctx = as_usize(tokenizer.encode(trimmed, false)?);
    let cont = if whole.starts_with(&ctx) && whole.len() > ctx.len() {
        whole[ctx.len()..].to_vec()
    } else {
        as_usize(tokenizer.encode(&continuation, false)?)
    };
    if cont.is_empty() {
        return Err(EvalError::Request(format!(
            "the continuation {continuation:?} encodes to no tokens"
        )));
    }
    let mut prefix = vec![start];
    prefix.extend(ctx);
    Ok((prefix, cont))
}

/// Token ids of a generation prompt: the BOS (or, without one, the EOS) and the prompt's ids.
pub fn encode_prompt(tokenizer: &Tokenizer, prompt: &str) -> Result<Vec<usize>, EvalError> {
    let start = tokenizer.document_start() as usize;
    let ids = tokenizer.encode(prompt, false)?;
    Ok(std::iter::once(start)
        .chain(ids.into_iter().map(|t| t as usize))
        .collect())
}

/// `prefix` cut from the left (keeping its first token, the BOS/EOS) so that `prefix + target` fits
/// `block_size`. Errors when the target alone does not fit.
fn fit(
    prefix: Vec<usize>,
    target_len: usize,
    block_size: usize,
    cost: &mut Cost,
) -> Result<Vec<usize>, EvalError> {
    if target_len + 1 > block_size {
        return Err(EvalError::Request(format!(
            "a continuation of {} tokens does not fit the model's block size {block_size}",
            target_len
        )));
    }
    if prefix.len() + target_len <= block_size {
        return Ok(prefix);
    }
    cost.truncated += 1;
    let keep = block_size - target_len - 1;
    let mut out = vec![prefix[0]];
    out.extend_from_slice(&prefix[prefix.len() - keep..]);
    Ok(out)
}

/// Seed of item `item`, choice `choice`: results do not depend on `--limit` or on order.
fn item_seed(seed: u64, item: usize, choice: usize) -> u64 {
    seed ^ (item as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (choice as u64) << 48
}

/// Log-likelihood (nats) of `target` after `prefix`, and whether it is the greedy continuation
/// (only when `greedy` is asked).
fn score<B: Backend, L: LanguageModel<B> + ?Sized>(
    model: &L,
    prefix: &[usize],
    target: &[usize],
    settings: &TaskSettings,
    seed: u64,
    greedy: bool,
    cost: &mut Cost,
) -> Result<(f64, Option<bool>), EvalError> {
    let scoring = match settings.estimator {
        Estimator::ChainRule => Scoring::ChainRule,
        Estimator::MonteCarlo => Scoring::MonteCarlo {
            options: settings.mc,
            seed,
        },
    };
    let s = model.score(prefix, target, &scoring, settings.cfg_scale, greedy)?;
    cost.model += s.cost;
    Ok((-s.nll, s.is_greedy))
}

fn metric(name: &str, values: &[f64]) -> Metric {
    Metric {
        name: name.into(),
        value: mean(values),
        stderr: mean_stderr(values),
        n: values.len(),
    }
}

/// Runs `task` (its first `settings.limit` items) on `model`. `on_item(done, total)` is called after
/// each item (progress bars).
pub fn evaluate_task<B: Backend, L: LanguageModel<B> + ?Sized>(
    model: &L,
    tokenizer: &Tokenizer,
    task: &Task,
    settings: &TaskSettings,
    mut on_item: impl FnMut(usize, usize),
) -> Result<TaskResult, EvalError> {
    let started = Instant::now();
    let mut items = task.items.clone();
    if let Some(limit) = settings.limit {
        items.truncate(limit);
    }
    let total = items.len();
    let block = model.max_positions();
    let mut cost = Cost::default();
    let mut samples = Vec::new();
    let metrics = match &items {
        TaskItems::MultipleChoice(items) => {
            let (mut acc, mut acc_norm) = (vec![], vec![]);
            for (i, item) in items.iter().enumerate() {
                let mut ll = Vec::with_capacity(item.choices.len());
                for (c, choice) in item.choices.iter().enumerate() {
                    let (prefix, target) = encode_pair(tokenizer, &item.context, choice)?;
                    let prefix = fit(prefix, target.len(), block, &mut cost)?;
                    let seed = item_seed(settings.seed, i, c);
                    ll.push(score(model, &prefix, &target, settings, seed, false, &mut cost)?.0);
                }
                let outcome = multiple_choice(&ll, &item.choices);
                acc.push(outcome.acc(item.gold));
                acc_norm.push(outcome.acc_norm(item.gold));
                on_item(i + 1, total);
            }
            vec![metric("acc", &acc), metric("acc_norm", &acc_norm)]
        }
        TaskItems::Continuation(items) => {
            let (mut acc, mut ll) = (vec![], vec![]);
            for (i, item) in items.iter().enumerate() {
                let (prefix, target) = encode_pair(tokenizer, &item.context, &item.continuation)?;
                let prefix = fit(prefix, target.len(), block, &mut cost)?;
                let seed = item_seed(settings.seed, i, 0);
                let (l, greedy) = score(model, &prefix, &target, settings, seed, true, &mut cost)?;
                ll.push(l);
                acc.push(f64::from(u8::from(greedy == Some(true))));
                on_item(i + 1, total);
            }
            // perplexity = exp(-mean log-likelihood), as the harness aggregates it; its standard
            // error by the delta method
            let ppl = (-mean(&ll)).exp();
            vec![
                metric("acc", &acc),
                Metric {
                    name: "perplexity".into(),
                    value: ppl,
                    stderr: ppl * mean_stderr(&ll),
                    n: ll.len(),
                },
            ]
        }
        TaskItems::Generation(reference, items) => {
            let (mut em, mut bleu) = (vec![], vec![]);
            for (chunk_index, chunk) in items.chunks(settings.gen_batch.max(1)).enumerate() {
                let prompts = chunk
                    .iter()
                    .map(|item| {
                        let prefix = encode_prompt(tokenizer, &item.prompt)?;
                        fit(prefix, settings.gen_length, block, &mut cost)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let generated = generate(model, &prompts, tokenizer, settings, &mut cost)?;
                for (k, (item, ids)) in chunk.iter().zip(generated).enumerate() {
                    let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
                    let text = tokenizer.decode(&ids)?;
                    match reference {
                        Reference::Number => {
                            let right = gsm8k_answer(&text).is_some_and(|a| a == item.reference);
                            em.push(f64::from(u8::from(right)));
                        }
                        Reference::Text => {
                            em.push(f64::from(u8::from(contains_reference(
                                &text,
                                &item.reference,
                            ))));
                            bleu.push(sentence_bleu(&text, &item.reference));
                        }
                    }
                    if samples.len() < settings.keep_samples {
                        samples.push(Sample {
                            id: item.id.clone(),
                            prompt: item.prompt.clone(),
                            generation: text,
                            reference: item.reference.clone(),
                        });
                    }
                    on_item(chunk_index * settings.gen_batch.max(1) + k + 1, total);
                }
            }
            let mut m = vec![metric("exact_match", &em)];
            if !bleu.is_empty() {
                m.push(metric("bleu", &bleu));
            }
            m
        }
    };
    let (masked, is_likelihood) = (
        model.kind() == ModelKind::Masked,
        !matches!(items, TaskItems::Generation(..)),
    );
    Ok(TaskResult {
        task: task.name.clone(),
        model: if masked { "mdm" } else { "arm" }.into(),
        n: total,
        estimator: (masked && is_likelihood).then_some(settings.estimator),
        cfg_scale: if masked { settings.cfg_scale } else { 0.0 },
        metrics,
        truncated_contexts: cost.truncated,
        forward_passes: cost.model.passes,
        forward_rows: cost.model.rows,
        tokens: cost.model.tokens,
        seconds: started.elapsed().as_secs_f64(),
        samples,
    })
}

/// Greedy (temperature 0) generations after `prompts`, cut at EOS: low-confidence remasking for an
/// MDM (`settings.steps` steps, CFG at `settings.cfg_scale`), the KV-cache sampler for the
/// baseline.
fn generate<B: Backend, L: LanguageModel<B> + ?Sized>(
    model: &L,
    prompts: &[Vec<usize>],
    tokenizer: &Tokenizer,
    settings: &TaskSettings,
    cost: &mut Cost,
) -> Result<Vec<Vec<usize>>, EvalError> {
    let gen = settings.gen_length;
    let mut options = DecodingOptions::default()
        .with_gen_length(gen)
        .with_steps(settings.steps.unwrap_or(gen))
        .with_eos(tokenizer.eos_id() as usize)
        .with_seed(settings.seed);
    if settings.cfg_scale != 0.0 {
        options = options.with_cfg_scale(settings.cfg_scale);
    }
    let out = model.generate(prompts, &options, Run::default())?;
    cost.model += out.cost;
    Ok(out.rows)
}

/// Four decimals, or four significant digits in scientific notation for large values.
fn number(x: f64) -> String {
    if x.abs() >= 1e4 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

/// Infilling accuracy of an MDM (what a left-to-right model cannot be asked): for each
/// `(text, answer)`, the tokens of `answer` inside `text` (its first occurrence) are masked and filled
/// with low-confidence remasking, one token per step, temperature 0; exact match = the filled span is
/// the answer's tokens. The number of masks (the answer's length in tokens) is given to the model.
/// An answer that does not fall on token boundaries of `text` is an error.
pub fn infill_exact_match<B: Kernels, M: MaskPredictor<B>>(
    model: &M,
    tokenizer: &Tokenizer,
    items: &[(String, String)],
    keep_samples: usize,
) -> Result<(Metric, Vec<Sample>), EvalError> {
    let mask_id = model.mask_id();
    let encode = |t: &str| -> Result<Vec<usize>, EvalError> {
        Ok(tokenizer
            .encode(t, false)?
            .into_iter()
            .map(|t| t as usize)
            .collect())
    };
    let mut rows = Vec::with_capacity(items.len());
    let mut spans = Vec::with_capacity(items.len());
    for (text, answer) in items {
        let at = text.find(answer.as_str()).ok_or_else(|| {
            EvalError::Request(format!("the answer {answer:?} is not in {text:?}"))
        })?;
        let before = encode(&text[..at])?;
        let through = encode(&text[..at + answer.len()])?;
        let mut row = encode_prompt(tokenizer, "")?;
        let whole = encode(text)?;
        if !through.starts_with(&before)
            || !whole.starts_with(&through)
            || through.len() == before.len()
        {
            return Err(EvalError::Request(format!(
                "the answer {answer:?} does not fall on token boundaries of {text:?}"
            )));
        }
        let span = (row.len() + before.len(), row.len() + through.len());
        row.extend(whole);
        let truth = row[span.0..span.1].to_vec();
        row[span.0..span.1].fill(mask_id);
        rows.push(row);
        spans.push((span, truth));
    }
    let longest = spans.iter().map(|((a, b), _)| b - a).max().unwrap_or(1);
    let config = DecodingOptions::default().with_steps(longest);
    let filled = MaskedDiffusionSampler::new(model, config).infill(&rows, |_| {})?;
    let mut hits = Vec::with_capacity(items.len());
    let mut samples = Vec::new();
    for (((text, answer), ((a, b), truth)), row) in items.iter().zip(&spans).zip(&filled) {
        hits.push(f64::from(u8::from(&row[*a..*b] == truth.as_slice())));
        if samples.len() < keep_samples {
            let ids: Vec<u32> = row[*a..*b].iter().map(|&t| t as u32).collect();
            samples.push(Sample {
                id: samples.len().to_string(),
                prompt: text.replacen(answer.as_str(), "___", 1),
                generation: tokenizer.decode(&ids)?,
                reference: answer.clone(),
            });
        }
    }
    Ok((metric("exact_match", &hits), samples))
}

/// The results as a Markdown table: task, model, metric, value, stderr, n.
pub fn markdown_table(results: &[TaskResult]) -> String {
    let mut out = String::from(
        "| task | model | metric | value | stderr | n |\n|---|---|---|---:|---:|---:|\n",
    );
    for r in results {
        let model = match (r.estimator, r.cfg_scale) {
            (Some(e), w) => format!(
                "{} ({}{})",
                r.model,
                if e == Estimator::MonteCarlo {
                    "MC"
                } else {
                    "chain rule"
                },
                if w != 0.0 {
                    format!(", cfg {w}")
                } else {
                    String::new()
                }
            ),
            (None, w) if w != 0.0 => format!("{} (cfg {w})", r.model),
            _ => r.model.clone(),
        };
        for m in &r.metrics {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.task,
                model,
                m.name,
                number(m.value),
                number(m.stderr),
                m.n
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::likelihood::causal_score;
    use crate::tasks::{ChoiceItem, ContinuationItem, GenerationItem};
    use crate::{Causal, Masked};
    use burn::backend::Flex;
    use mdm_models::ModelConfig;

    fn tokenizer() -> Tokenizer {
        let docs = [
            "the cat sat on the mat",
            "a dog ran in the park",
            "one two three four five",
        ];
        Tokenizer::train_bpe(docs.into_iter(), 300).unwrap()
    }

    fn task(items: TaskItems) -> Task {
        Task {
            name: "t".into(),
            file: "t.jsonl".into(),
            items,
        }
    }

    #[test]
    fn spec_parsing_and_overrides() {
        let spec: TaskSpec = "lambada:estimator=chain:cfg=0.5:mc=16:gen=8:steps=4"
            .parse()
            .unwrap();
        let s = spec.settings(&TaskSettings::default());
        assert_eq!(s.estimator, Estimator::ChainRule);
        assert_eq!(
            (s.cfg_scale, s.mc.mc_num, s.gen_length, s.steps),
            (0.5, 16, 8, Some(4))
        );
        assert_eq!("piqa".parse::<TaskSpec>().unwrap().settings(&s), s);
        for bad in [
            "",
            "x:cfg",
            "x:cfg=a",
            "x:estimator=z",
            "x:foo=1",
            "x:mc=-1",
        ] {
            assert!(bad.parse::<TaskSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs_are_encoded_as_the_harness_does() {
        let tok = tokenizer();
        let (prefix, cont) = encode_pair(&tok, "the cat sat on the ", "mat").unwrap();
        let (p2, c2) = encode_pair(&tok, "the cat sat on the", " mat").unwrap();
        assert_eq!((&prefix, &cont), (&p2, &c2));
        assert_eq!(prefix[0], tok.eos_id() as usize);
        let whole: Vec<usize> = tok
            .encode("the cat sat on the mat", false)
            .unwrap()
            .into_iter()
            .map(|t| t as usize)
            .collect();
        assert_eq!([&prefix[1..], &cont[..]].concat(), whole);
        assert!(encode_pair(&tok, "the cat", "").is_err());
    }

    #[test]
    fn a_causal_model_scores_multiple_choice_by_exact_likelihoods() {
        let tok = tokenizer();
        let config = ModelConfig::custom(tok.vocab_size(), 1, 2, 32, 64, 24);
        let model = config.init_causal::<Flex>(3, &Default::default()).unwrap();
        let item = ChoiceItem {
            id: "0".into(),
            context: "the cat sat on the".into(),
            choices: vec![" mat".into(), " park".into(), " dog ran in the park".into()],
            gold: 0,
        };
        let t = task(TaskItems::MultipleChoice(vec![item.clone(); 3]));
        let settings = TaskSettings {
            limit: Some(2),
            ..Default::default()
        };
        let mut calls = vec![];
        let r = evaluate_task(&Causal(&model), &tok, &t, &settings, |d, n| {
            calls.push((d, n))
        })
        .unwrap();
        assert_eq!(calls, [(1, 2), (2, 2)]);
        assert_eq!((r.n, r.forward_rows, r.forward_passes), (2, 6, 6));
        // the same choice by hand
        let ll: Vec<f64> = item
            .choices
            .iter()
            .map(|c| {
                let (p, t) = encode_pair(&tok, &item.context, c).unwrap();
                let (p, t) = (fit(p, t.len(), 24, &mut Cost::default()).unwrap(), t);
                -causal_score(&model, &p, &t).unwrap().0.nll
            })
            .collect();
        let out = multiple_choice(&ll, &item.choices);
        assert_eq!(r.metrics[0].value, out.acc(0));
        assert_eq!(r.metrics[1].value, out.acc_norm(0));
        // the long choice does not fit 24 positions with its context: the context is cut, counted
        assert!(r.truncated_contexts > 0);
        let table = markdown_table(&[r]);
        assert!(
            table.contains("| t | arm | acc |") && table.contains("| 2 |"),
            "{table}"
        );
    }

    #[test]
    fn infill_masks_exactly_the_answer_span() {
        let tok = tokenizer();
        let config = ModelConfig::custom(tok.vocab_size(), 1, 2, 32, 64, 32);
        let model = config.init_masked::<Flex>(5, &Default::default()).unwrap();
        let items = vec![
            ("the cat sat on the mat".to_string(), "the cat".to_string()),
            ("a dog ran in the park".to_string(), " park".to_string()),
        ];
        let (m, samples) = infill_exact_match(&model, &tok, &items, 2).unwrap();
        assert_eq!((m.name.as_str(), m.n), ("exact_match", 2));
        assert_eq!(samples[0].prompt, "___ sat on the mat");
        // the score is the share of samples whose fill decodes to the answer
        let right = samples
            .iter()
            .filter(|s| s.generation == s.reference)
            .count();
        assert_eq!(m.value, right as f64 / 2.0);
        let bad = vec![("the cat".to_string(), "dog".to_string())];
        assert!(infill_exact_match(&model, &tok, &bad, 0).is_err());
    }

    #[test]
    fn lambada_and_generation_tasks_run_on_an_mdm() {
        let tok = tokenizer();
        let config = ModelConfig::custom(tok.vocab_size(), 1, 2, 32, 64, 32);
        let model = config.init_masked::<Flex>(4, &Default::default()).unwrap();
        let item = ContinuationItem {
            id: "0".into(),
            context: "one two three four".into(),
            continuation: " five".into(),
        };
        let t = task(TaskItems::Continuation(vec![item]));
        let settings = TaskSettings {
            estimator: Estimator::ChainRule,
            cfg_scale: 0.5,
            ..Default::default()
        };
        let r = evaluate_task(&Masked(&model), &tok, &t, &settings, |_, _| {}).unwrap();
        assert_eq!(
            r.metrics
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["acc", "perplexity"]
        );
        // a random model: perplexity is finite and above 1
        assert!(r.metrics[1].value > 1.0 && r.metrics[1].value.is_finite());
        let gen = GenerationItem {
            id: "g".into(),
            prompt: "the cat".into(),
            reference: "sat".into(),
        };
        let t = task(TaskItems::Generation(Reference::Text, vec![gen; 3]));
        let settings = TaskSettings {
            gen_length: 4,
            gen_batch: 2,
            ..Default::default()
        };
        let r = evaluate_task(&Masked(&model), &tok, &t, &settings, |_, _| {}).unwrap();
        assert_eq!(r.metrics[0].name, "exact_match");
        assert_eq!(r.samples.len(), 3);
        // identical prompts, temperature 0: identical generations
        assert!(r
            .samples
            .windows(2)
            .all(|w| w[0].generation == w[1].generation));
        let scored = f64::from(u8::from(contains_reference(
            &r.samples[0].generation,
            "sat",
        )));
        assert_eq!(r.metrics[0].value, scored);
    }
}
