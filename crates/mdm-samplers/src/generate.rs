//! Generation and infilling from a masked model: prompts in, continuations out, through the one
//! decoding loop ([`decode`](crate::decode)).

use mdm_kernels::Kernels;

use burn::tensor::backend::Backend;
use mdm_models::{MaskPredictor, MaskedTransformer};

use crate::decode::{decode, Canvas, Decoded, Join, StepControl, StepEvent};
use crate::options::{Blocks, CacheMode, DecodingOptions, OptionError};
use crate::remasking::Remasking;
use crate::step::{check_prompts, generated_part, masked_rows, SamplerError};

/// Generates continuations from a masked model ([`MaskPredictor`]: a [`MaskedTransformer`] of
/// SMDM or LLaDA) with the [`DecodingOptions`] (and optionally a rule of the caller's own).
///
/// ```
/// use burn::backend::Flex;
/// use mdm_models::ModelConfig;
/// use mdm_samplers::{DecodingOptions, MaskedDiffusionSampler};
///
/// let model = ModelConfig::custom(100, 2, 4, 64, 128, 64).init_masked::<Flex>(0, &Default::default()).unwrap();
/// let sampler = MaskedDiffusionSampler::new(&model,
///     DecodingOptions::default().with_gen_length(8).with_steps(4));
/// let out = sampler.generate(&[vec![1, 5, 7], vec![2]], |_| {}).unwrap();
/// assert_eq!(out.len(), 2);
/// assert!(out.iter().all(|row| row.len() == 8 && row.iter().all(|&t| t < 128)));
/// ```
pub struct MaskedDiffusionSampler<'a, B: Backend, M: MaskPredictor<B> = MaskedTransformer<B>> {
    model: &'a M,
    _backend: std::marker::PhantomData<B>,
    /// A caller's own rule, in place of the options' `remasking`.
    rule: Option<Box<dyn Remasking>>,
    options: DecodingOptions,
    /// Each row's seed ([`Self::with_row_seeds`]).
    seeds: Option<Vec<u64>>,
}

impl<'a, B: Kernels, M: MaskPredictor<B>> MaskedDiffusionSampler<'a, B, M> {
    /// A sampler over any model of the seam ([`MaskPredictor`]: SMDM, LLaDA) with these options.
    pub fn new(model: &'a M, options: DecodingOptions) -> Self {
        Self {
            model,
            _backend: std::marker::PhantomData,
            rule: None,
            options,
            seeds: None,
        }
    }

    /// Builder: a remasking rule of the caller's own (it ranks by the options' confidence
    /// measure, the `remasking` option's).
    pub fn with_rule(mut self, rule: impl Remasking + 'static) -> Self {
        self.rule = Some(Box::new(rule));
        self
    }

    /// The options.
    pub fn options(&self) -> &DecodingOptions {
        &self.options
    }

    /// The options checked against the model.
    fn validate(&self) -> Result<Blocks, SamplerError> {
        Ok(self.options.validate_for(self.model.vocab_size())?)
    }

    /// Generates `gen_length` tokens after each prompt (rows may have different prompt lengths).
    /// `on_step` is called after every step; it may return [`StepControl::Stop`] to end the run
    /// early. Returns each row's generated tokens, cut at the first EOS when `eos_id` is set (and,
    /// after a stop, at the first position still masked).
    pub fn generate<C: Into<StepControl>>(
        &self,
        prompts: &[Vec<usize>],
        on_step: impl FnMut(&StepEvent) -> C,
    ) -> Result<Vec<Vec<usize>>, SamplerError> {
        let out = self.decode(prompts, on_step)?;
        let mask_id = self.model.mask_id();
        Ok(out
            .rows
            .iter()
            .zip(prompts)
            .map(|(row, p)| generated_part(row, p.len(), mask_id, self.options.eos_id, out.stopped))
            .collect())
    }

    /// [`Self::generate`] for a batch that more rows may join while it runs (continuous
    /// batching): before each block after the first, `join(block)` returns the rows, each a prompt
    /// and its seed, that start their first block there; every row, joined or not, gets exactly
    /// the tokens it would get alone with its seed. Returns the generated tokens of the first
    /// rows and then of the joined ones, in the order they joined; `on_step` sees them all
    /// (`StepEvent::tokens` grows as rows join, a joined row's blocks counted from the one it
    /// joined at).
    ///
    /// The first rows' seeds are [`Self::with_row_seeds`]'s (required). Refused with
    /// `block_causal` (its canvas counts blocks from position 0 per row), `joint_counting` and
    /// `mean_counting` (they count over the whole batch) and the prefix cache (its passes run from
    /// a row's block to the row's end: rows at different blocks would differ in width); no cache
    /// and the dual cache (a pass over each row's own block) take joining rows. With one block (no `block_length`),
    /// rows that join after it are decoded after the first rows, as a next batch would be. A
    /// joined prompt the model cannot take (too long, an id outside the vocabulary) makes the run
    /// an error.
    pub fn generate_joined<C: Into<StepControl>>(
        &self,
        prompts: &[Vec<usize>],
        on_step: impl FnMut(&StepEvent) -> C,
        mut join: impl FnMut(usize) -> Vec<(Vec<usize>, u64)>,
    ) -> Result<Vec<Vec<usize>>, SamplerError> {
        let o = &self.options;
        let refuse = |what: &str| {
            Err(SamplerError::Config {
                reason: format!("rows cannot join a running batch {what}"),
            })
        };
        if o.block_causal {
            return refuse("of block diffusion (`block_causal`)");
        }
        if o.joint_counting || o.mean_counting {
            return refuse("that counts over the batch (`joint_counting`, `mean_counting`)");
        }
        if o.cache == CacheMode::Prefix {
            // its passes run from each row's block to the row's end, one width for the batch:
            // rows at different blocks would be padded at their ends, and the padding seen
            return refuse("with the prefix cache (rows at different blocks differ in width)");
        }
        if self.seeds.is_none() {
            return refuse("without row seeds (`with_row_seeds`)");
        }
        let blocks = self.validate()?;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let (gen, vocab, positions) = (
            o.gen_length,
            self.model.vocab_size(),
            self.model.max_positions(),
        );
        check_prompts(prompts, vocab, gen, positions)?;
        let mut all: Vec<Vec<usize>> = prompts.to_vec();
        let mut invalid = None;
        let mut checked = |block: usize| -> Vec<(Vec<usize>, u64)> {
            let mut rows = join(block);
            // a row the model cannot take is an error of the run, reported after it
            if let Err(e) = check_prompts(
                &rows.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
                vocab,
                gen,
                positions,
            ) {
                invalid.get_or_insert(e);
                rows.clear();
            }
            all.extend(rows.iter().map(|(p, _)| p.clone()));
            rows
        };
        let canvas = Canvas {
            rows: masked_rows(prompts, gen, self.model.mask_id()),
            prompt_lens: prompts.iter().map(Vec::len).collect(),
            starts: prompts.iter().map(Vec::len).collect(),
            lengths: vec![blocks.length; prompts.len()],
            blocks,
            seeds: None,
        };
        let out = self.run(canvas, on_step, Some(&mut checked))?;
        if let Some(e) = invalid {
            return Err(e);
        }
        let mask_id = self.model.mask_id();
        Ok(out
            .rows
            .iter()
            .zip(&all)
            .map(|(row, p)| generated_part(row, p.len(), mask_id, o.eos_id, out.stopped))
            .collect())
    }

    /// [`Self::generate`] returning the whole rows (prompt, then generation) with what the run
    /// cost: forward passes (the references' `nfe`) and positions computed.
    pub fn decode<C: Into<StepControl>>(
        &self,
        prompts: &[Vec<usize>],
        on_step: impl FnMut(&StepEvent) -> C,
    ) -> Result<Decoded, SamplerError> {
        let blocks = self.validate()?;
        if prompts.is_empty() {
            return Ok(Decoded {
                rows: vec![],
                forward_passes: 0,
                positions: 0,
                stopped: false,
            });
        }
        let gen = self.options.gen_length;
        check_prompts(
            prompts,
            self.model.vocab_size(),
            gen,
            self.model.max_positions(),
        )?;
        if self.options.block_causal {
            return self.decode_blocks_from_zero(prompts, blocks, on_step);
        }
        let canvas = Canvas {
            rows: masked_rows(prompts, gen, self.model.mask_id()),
            prompt_lens: prompts.iter().map(Vec::len).collect(),
            starts: prompts.iter().map(Vec::len).collect(),
            lengths: vec![blocks.length; prompts.len()],
            blocks,
            seeds: None,
        };
        self.run(canvas, on_step, None)
    }

    /// Block diffusion ([`DecodingOptions::block_causal`]): each row's blocks counted from
    /// position 0, from the one its prompt ends in to the one its generation ends in, decoded
    /// whole; the rows are cut to `prompt + gen_length` after the run.
    fn decode_blocks_from_zero<C: Into<StepControl>>(
        &self,
        prompts: &[Vec<usize>],
        blocks: Blocks,
        on_step: impl FnMut(&StepEvent) -> C,
    ) -> Result<Decoded, SamplerError> {
        let (gen, bl) = (self.options.gen_length, blocks.length);
        let ends: Vec<usize> = prompts
            .iter()
            .map(|p| (p.len() + gen).div_ceil(bl) * bl)
            .collect();
        // the canvas holds whole blocks: a row's last block may reach past its generation
        let longest = ends.iter().copied().max().unwrap_or(0);
        if longest > self.model.max_positions() {
            return Err(SamplerError::Config {
                reason: format!(
                    "block diffusion decodes whole blocks of {bl}: {longest} positions exceed the {} the model allows",
                    self.model.max_positions()
                ),
            });
        }
        let mask_id = self.model.mask_id();
        let rows: Vec<Vec<usize>> = prompts
            .iter()
            .zip(&ends)
            .map(|(p, &end)| {
                let mut row = p.clone();
                row.resize(end, mask_id);
                row
            })
            .collect();
        let starts: Vec<usize> = prompts.iter().map(|p| p.len() / bl * bl).collect();
        let count = ends
            .iter()
            .zip(&starts)
            .map(|(end, start)| (end - start) / bl)
            .max()
            .unwrap_or(0);
        let canvas = Canvas {
            rows,
            prompt_lens: prompts.iter().map(Vec::len).collect(),
            starts,
            lengths: vec![bl; prompts.len()],
            blocks: Blocks { count, ..blocks },
            seeds: None,
        };
        let mut out = self.run(canvas, on_step, None)?;
        for (row, p) in out.rows.iter_mut().zip(prompts) {
            row.truncate(p.len() + gen);
            // token editing decodes past an EOS: a completed row ends at its first
            let mask_id = self.model.mask_id();
            if let Some(eos) = self.options.eos_id {
                let gen = &mut row[p.len()..];
                if let Some(e) = gen.iter().position(|&t| t == eos) {
                    if !gen[..e].contains(&mask_id) {
                        gen[e..].fill(eos);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Builder: row `r` of every batch draws from `seeds[r]` (a batch of requests decoded
    /// together, each row drawing as it would alone with its own seed); without it row `r` draws
    /// from the options' `seed + r`. The batch must have `seeds.len()` rows. Ignored with
    /// `joint_counting`, whose one stream is the batch's.
    pub fn with_row_seeds(mut self, seeds: Vec<u64>) -> Self {
        self.seeds = Some(seeds);
        self
    }

    /// The row seeds for a batch of `rows`, checked.
    fn row_seeds(&self, rows: usize) -> Result<Option<Vec<u64>>, SamplerError> {
        match &self.seeds {
            Some(s) if s.len() != rows => Err(SamplerError::Config {
                reason: format!("{} row seeds for a batch of {rows} rows", s.len()),
            }),
            s => Ok(s.clone()),
        }
    }

    fn run<C: Into<StepControl>>(
        &self,
        mut canvas: Canvas,
        on_step: impl FnMut(&StepEvent) -> C,
        join: Option<Join<'_>>,
    ) -> Result<Decoded, SamplerError> {
        canvas.seeds = self.row_seeds(canvas.rows.len())?;
        let own;
        let rule: &dyn Remasking = match &self.rule {
            Some(rule) => rule.as_ref(),
            None => {
                own = self.options.rule();
                own.as_ref()
            }
        };
        decode(self.model, canvas, &self.options, rule, on_step, join)
    }

    /// Infilling: fills every `mask_id` of each row, wherever it stands, in `steps` steps with the
    /// sampler's rule, temperature and counting; the known tokens on both sides condition the fill
    /// and never change, and rows keep their length. Blocks, caches, CFG and EOS do not apply
    /// (options that set `block_length`, `cache` or `cfg_scale` are an error; `gen_length` is
    /// unused). With the masks at the end of the rows this is [`generate`](Self::generate)
    /// without EOS.
    pub fn infill<C: Into<StepControl>>(
        &self,
        rows: &[Vec<usize>],
        on_step: impl FnMut(&StepEvent) -> C,
    ) -> Result<Vec<Vec<usize>>, SamplerError> {
        Ok(self.decode_infill(rows, on_step)?.rows)
    }

    /// [`Self::infill`] with what the run cost: forward passes (the references' `nfe`) and
    /// positions computed.
    pub fn decode_infill<C: Into<StepControl>>(
        &self,
        rows: &[Vec<usize>],
        on_step: impl FnMut(&StepEvent) -> C,
    ) -> Result<Decoded, SamplerError> {
        let o = &self.options;
        let refuse = |field: &'static str| {
            Err(SamplerError::Option(OptionError {
                field,
                reason: "infilling takes neither blocks, caches nor guidance".into(),
            }))
        };
        if o.block_length.is_some() {
            return refuse("block_length");
        }
        if o.cache != CacheMode::None {
            return refuse("cache");
        }
        if o.cfg_scale.is_some() {
            return refuse("cfg_scale");
        }
        let steps = o.total_steps();
        let options = DecodingOptions {
            gen_length: steps,
            steps: Some(steps),
            eos_id: None,
            ..o.clone()
        };
        let blocks = options.validate_for(self.model.vocab_size())?;
        let (mask_id, vocab) = (self.model.mask_id(), self.model.vocab_size());
        // mask ids are what is filled; everything else must be a token of the vocabulary
        let known: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&t| if t == mask_id { 0 } else { t })
                    .collect()
            })
            .collect();
        check_prompts(&known, vocab, 0, self.model.max_positions())?;
        let canvas = Canvas {
            rows: rows.to_vec(),
            prompt_lens: vec![0; rows.len()],
            starts: vec![0; rows.len()],
            lengths: rows.iter().map(Vec::len).collect(),
            blocks,
            seeds: self.row_seeds(rows.len())?,
        };
        let sampler = MaskedDiffusionSampler {
            model: self.model,
            _backend: std::marker::PhantomData,
            rule: None,
            options,
            seeds: None,
        };
        let own_rule = self.rule.as_deref();
        let out = match own_rule {
            Some(rule) => decode(self.model, canvas, &sampler.options, rule, on_step, None)?,
            None => sampler.run(canvas, on_step, None)?,
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn infill_at_the_end_is_generation_and_keeps_known_tokens() {
        use mdm_models::ModelConfig;
        let model = ModelConfig::custom(50, 2, 2, 32, 64, 32)
            .init_masked::<Flex>(3, &Default::default())
            .unwrap();
        let m = model.mask_id();
        let config = DecodingOptions::default().with_gen_length(5).with_steps(5);
        let sampler = MaskedDiffusionSampler::new(&model, config.clone());
        let prompts = vec![vec![1, 2, 3], vec![4, 5]];
        let generated = sampler.generate(&prompts, |_| {}).unwrap();
        let rows: Vec<Vec<usize>> = prompts
            .iter()
            .map(|p| p.iter().copied().chain([m; 5]).collect())
            .collect();
        let filled = sampler.infill(&rows, |_| {}).unwrap();
        for ((p, g), f) in prompts.iter().zip(&generated).zip(&filled) {
            assert_eq!(&f[..p.len()], &p[..]);
            assert_eq!(&f[p.len()..], &g[..]);
        }
        // masks in the middle and at the start: known tokens kept, every mask filled
        let rows = vec![vec![m, m, 7, 8, m, 9], vec![10, m, 11]];
        let mut steps = 0;
        let filled = sampler.infill(&rows, |_| steps += 1).unwrap();
        assert!(steps > 0);
        for (r, f) in rows.iter().zip(&filled) {
            assert_eq!(r.len(), f.len());
            for (&a, &b) in r.iter().zip(f) {
                if a != m {
                    assert_eq!(a, b);
                }
            }
            assert!(f.iter().all(|&t| t != m));
        }
        let guided = MaskedDiffusionSampler::new(&model, config.with_cfg_scale(1.0));
        assert!(guided.infill(&rows, |_| {}).is_err());
    }

    #[test]
    fn a_callback_can_stop_the_run_and_gets_the_final_prefix() {
        use mdm_models::ModelConfig;
        let model = ModelConfig::custom(50, 2, 2, 32, 64, 32)
            .init_masked::<Flex>(3, &Default::default())
            .unwrap();
        let m = model.mask_id();
        let config = DecodingOptions::default().with_gen_length(8).with_steps(8);
        let sampler = MaskedDiffusionSampler::new(&model, config);
        let prompts = vec![vec![1, 2, 3], vec![4]];
        let whole = sampler.generate(&prompts, |_| {}).unwrap();
        let (mut steps, mut canvas) = (0, Vec::new());
        let stopped = sampler
            .generate(&prompts, |e| {
                steps += 1;
                canvas = e.tokens.to_vec();
                if steps == 3 {
                    StepControl::Stop
                } else {
                    StepControl::Continue
                }
            })
            .unwrap();
        assert_eq!(steps, 3);
        for ((row, p), (s, w)) in canvas.iter().zip(&prompts).zip(stopped.iter().zip(&whole)) {
            // what the stopped run returns is the revealed prefix of its canvas, and the steps
            // it ran are those of the full run
            let gen = &row[p.len()..];
            let final_len = gen.iter().position(|&t| t == m).unwrap_or(gen.len());
            assert_eq!(&s[..], &gen[..final_len]);
            assert_eq!(&s[..], &w[..s.len()]);
            assert!(s.len() < 8);
        }
    }
}
