//! Scoring rules, as lm-evaluation-harness defines them where it defines them.
//!
//! - [`multiple_choice`]: `acc` picks the choice with the highest log-likelihood; `acc_norm` the
//!   highest log-likelihood divided by the choice's length in UTF-8 bytes.
//! - [`mean_stderr`]: the standard error of a mean over items (sample variance, `n - 1`), which is
//!   what the harness reports next to `acc`.
//! - [`gsm8k_answer`] / [`normalize_number`]: the final number of a GSM8K answer.
//! - [`contains_reference`]: the reverse-curse exact match.
//! - [`sentence_bleu`]: 4-gram BLEU of one hypothesis against one reference.

/// The outcome of one multiple-choice item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoiceOutcome {
    /// Index of the choice with the highest log-likelihood (ties: the first).
    pub pred: usize,
    /// Index of the choice with the highest log-likelihood per byte (ties: the first).
    pub pred_norm: usize,
}

impl ChoiceOutcome {
    /// `acc` of this item against `gold` (1 or 0).
    pub fn acc(&self, gold: usize) -> f64 {
        f64::from(u8::from(self.pred == gold))
    }

    /// `acc_norm` of this item against `gold` (1 or 0).
    pub fn acc_norm(&self, gold: usize) -> f64 {
        f64::from(u8::from(self.pred_norm == gold))
    }
}

fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// lm-evaluation-harness's `acc` and `acc_norm` choices from each choice's log-likelihood (nats)
/// and its text (the length normalisation counts the bytes of the choice text, leading space
/// included, as the harness does).
pub fn multiple_choice(log_likelihoods: &[f64], choices: &[String]) -> ChoiceOutcome {
    let pred = argmax(log_likelihoods.iter().copied());
    let pred_norm = argmax(
        log_likelihoods
            .iter()
            .zip(choices)
            .map(|(ll, c)| ll / c.len().max(1) as f64),
    );
    ChoiceOutcome { pred, pred_norm }
}

/// Mean of per-item scores.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Standard error of the mean: `sqrt(s^2 / n)` with the sample variance `s^2` (divisor `n - 1`);
/// 0 for fewer than two items.
pub fn mean_stderr(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let m = mean(values);
    let var = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    (var / n as f64).sqrt()
}

/// A number written in an answer, normalised for comparison: thousands separators, currency and
/// percent signs, a trailing full stop and trailing zero decimals (`18.0`, `18.50`) removed; a
/// leading `+` dropped. Returns `None` when no digit remains.
pub fn normalize_number(raw: &str) -> Option<String> {
    let mut s: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ',' | '$' | '%' | '€' | '£' | ' '))
        .collect();
    while s.ends_with('.') {
        s.pop();
    }
    if let Some(rest) = s.strip_prefix('+') {
        s = rest.to_string();
    }
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if s == "-0" {
        s = "0".into();
    }
    s.chars().any(|c| c.is_ascii_digit()).then_some(s)
}

/// The numbers written in `text` (`-1,234.50`, `$18`, `7%` ...), in order, as they are written.
fn numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_number = chars[i].is_ascii_digit()
            || (chars[i] == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if !starts_number {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < chars.len() {
            let c = chars[i];
            let inner_sep =
                matches!(c, ',' | '.') && chars.get(i + 1).is_some_and(char::is_ascii_digit);
            if c.is_ascii_digit() || inner_sep {
                i += 1;
            } else {
                break;
            }
        }
        out.push(chars[start..i].iter().collect());
    }
    out
}

/// The final answer of a GSM8K solution or generation, normalised with [`normalize_number`]: the
/// number after the last `####` when there is one (the dataset's format), otherwise the last number
/// in the text (lm-evaluation-harness's "flexible extract").
pub fn gsm8k_answer(text: &str) -> Option<String> {
    if let Some(pos) = text.rfind("####") {
        if let Some(n) = numbers(&text[pos + 4..]).into_iter().next() {
            return normalize_number(&n);
        }
    }
    numbers(text).pop().and_then(|n| normalize_number(&n))
}

/// The reverse-curse exact match: whether `generation` contains `reference` (both trimmed),
/// ignoring case. An empty reference never matches.
pub fn contains_reference(generation: &str, reference: &str) -> bool {
    let reference = reference.trim().to_lowercase();
    !reference.is_empty() && generation.to_lowercase().contains(&reference)
}

/// The tokenisation of [`sentence_bleu`]: lower case, then runs of letters and digits are words
/// and every other non-space character is a token of its own (`"A Journey."` → `a`, `journey`, `.`).
pub fn bleu_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_alphanumeric() {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// Sentence BLEU of `hypothesis` against one `reference`, in `[0, 1]`: the geometric mean of the
/// modified 1- to 4-gram precisions (uniform weights) times the brevity penalty
/// `exp(1 - r / c)` when the hypothesis is shorter (`c < r`). Tokens from [`bleu_tokens`]. As NLTK's
/// `sentence_bleu` with `SmoothingFunction().method1`: an n-gram order with no match counts
/// `0.1 / max(1, n-grams in the hypothesis)` instead of 0, so one missing order does not zero the
/// score; no unigram match at all scores 0.
pub fn sentence_bleu(hypothesis: &str, reference: &str) -> f64 {
    let hyp = bleu_tokens(hypothesis);
    let refs = bleu_tokens(reference);
    if hyp.is_empty() || refs.is_empty() {
        return 0.0;
    }
    let mut log_precision = 0.0;
    for n in 1..=4 {
        fn counts(tokens: &[String], n: usize) -> std::collections::HashMap<&[String], usize> {
            let mut map = std::collections::HashMap::new();
            for gram in tokens.windows(n) {
                *map.entry(gram).or_default() += 1;
            }
            map
        }
        let (hyp_counts, ref_counts) = (counts(&hyp, n), counts(&refs, n));
        let matched: usize = hyp_counts
            .iter()
            .map(|(gram, &c)| c.min(ref_counts.get(gram).copied().unwrap_or(0)))
            .sum();
        let total = hyp.len().saturating_sub(n - 1).max(1) as f64;
        if n == 1 && matched == 0 {
            return 0.0;
        }
        let p = if matched == 0 {
            0.1 / total
        } else {
            matched as f64 / total
        };
        log_precision += 0.25 * p.ln();
    }
    let (c, r) = (hyp.len() as f64, refs.len() as f64);
    let brevity = if c < r { (1.0 - r / c).exp() } else { 1.0 };
    brevity * log_precision.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_and_acc_norm_on_a_hand_built_item() {
        // byte lengths 19, 4, 7
        let choices: Vec<String> = [" a long answer here", " yes", " no way"]
            .map(String::from)
            .to_vec();
        let out = multiple_choice(&[-5.0, -6.0, -9.0], &choices);
        assert_eq!(
            out,
            ChoiceOutcome {
                pred: 0,
                pred_norm: 0
            }
        );
        // -4 wins unnormalised; per byte -10/19 = -0.53 beats -4/4 = -1.0 and -9/7 = -1.29
        let out = multiple_choice(&[-10.0, -4.0, -9.0], &choices);
        assert_eq!((out.pred, out.pred_norm), (1, 0));
        assert_eq!((out.acc(1), out.acc_norm(1)), (1.0, 0.0));
        // -4 wins unnormalised; per byte -5/7 = -0.71 beats -4/4 = -1.0
        let out = multiple_choice(&[-30.0, -4.0, -5.0], &choices);
        assert_eq!((out.pred, out.pred_norm), (1, 2));
        // ties go to the first choice, as numpy's argmax
        assert_eq!(multiple_choice(&[-1.0, -1.0], &choices[..2]).pred, 0);
    }

    #[test]
    fn stderr_of_a_mean_uses_the_sample_variance() {
        let v = [1.0, 0.0, 1.0, 1.0];
        assert_eq!(mean(&v), 0.75);
        // s^2 = (3 * 0.0625 + 0.5625) / 3 = 0.25; sqrt(0.25 / 4) = 0.25
        assert!((mean_stderr(&v) - 0.25).abs() < 1e-12);
        assert_eq!(mean_stderr(&[1.0]), 0.0);
    }

    #[test]
    fn gsm8k_answers_are_extracted_and_normalised() {
        assert_eq!(
            gsm8k_answer("She makes 9 * 2 = $18.\n#### 18").as_deref(),
            Some("18")
        );
        assert_eq!(gsm8k_answer("#### 1,234").as_deref(), Some("1234"));
        assert_eq!(
            gsm8k_answer("so the total is $1,234.00.").as_deref(),
            Some("1234")
        );
        assert_eq!(
            gsm8k_answer("it costs 18.50 dollars").as_deref(),
            Some("18.5")
        );
        assert_eq!(
            gsm8k_answer("a 7% rise, then -3 more").as_deref(),
            Some("-3")
        );
        assert_eq!(
            gsm8k_answer("The answer is 42 apples.").as_deref(),
            Some("42")
        );
        assert_eq!(gsm8k_answer("no numbers here"), None);
        assert_eq!(normalize_number("18.0"), Some("18".into()));
        assert_eq!(normalize_number("100"), Some("100".into()));
        assert_eq!(normalize_number("$"), None);
        assert_eq!(
            gsm8k_answer("3 then 4\n#### 5 (not 6)").as_deref(),
            Some("5")
        );
    }

    #[test]
    fn reverse_curse_exact_match_is_case_insensitive_containment() {
        assert!(contains_reference(
            " daphne barrington, of course",
            " Daphne Barrington"
        ));
        assert!(!contains_reference("Daphne", "Daphne Barrington"));
        assert!(!contains_reference("anything", "  "));
    }

    #[test]
    fn bleu_on_hand_computed_cases() {
        assert_eq!(
            bleu_tokens("A Journey Through Time.\""),
            ["a", "journey", "through", "time", ".", "\""]
        );
        let s = "the acclaimed director of the masterpiece";
        assert!((sentence_bleu(s, s) - 1.0).abs() < 1e-12);
        assert_eq!(sentence_bleu("nothing shared", s), 0.0);
        // hypothesis "the acclaimed director" (3 tokens) vs the 6-token reference:
        // p1 = 3/3, p2 = 2/2, p3 = 1/1, p4 = 0 -> 0.1 / max(1, 0) = 0.1; BP = exp(1 - 6/3)
        let expected = (0.25 * 0.1f64.ln()).exp() * (-1.0f64).exp();
        let got = sentence_bleu("The acclaimed director", s);
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        // clipped counts: "the the the" matches "the" at most twice in the reference
        let got = sentence_bleu("the the the", s);
        let p1: f64 = 2.0 / 3.0;
        let expected = (0.25 * (p1.ln() + (0.1f64 / 2.0).ln() + 0.1f64.ln() + 0.1f64.ln())).exp()
            * (1.0f64 - 6.0 / 3.0).exp();
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    }
}
