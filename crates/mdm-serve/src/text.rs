//! From token ids to the text a client sees: the completion's text is the decoded prompt and
//! completion minus the decoded prompt (so a first token's leading space survives tokenizers that
//! strip it), stop sequences cut it, and while streaming only text that is final is sent: never a
//! trailing incomplete UTF-8 sequence (U+FFFD from a byte-level tokenizer) and never the start of
//! what may become a stop sequence.

use std::sync::Arc;

use mdm_data::Tokenizer;

/// Turns ids into text: through the tokenizer, or as ids separated by spaces when the server has
/// none.
#[derive(Clone)]
pub struct Detokenizer {
    tokenizer: Option<Arc<Tokenizer>>,
}

impl Detokenizer {
    /// With or without a tokenizer.
    pub fn new(tokenizer: Option<Arc<Tokenizer>>) -> Self {
        Self { tokenizer }
    }

    /// The text of `ids` (special tokens left out).
    pub fn decode(&self, ids: &[usize]) -> String {
        match &self.tokenizer {
            Some(tok) => {
                let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
                tok.decode(&ids).unwrap_or_default()
            }
            None => ids
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// The text `completion` adds after `prompt`.
    pub fn completion_text(&self, prompt: &[usize], completion: &[usize]) -> String {
        if completion.is_empty() {
            return String::new();
        }
        if self.tokenizer.is_none() {
            let text = self.decode(completion);
            return if prompt.is_empty() {
                text
            } else {
                format!(" {text}")
            };
        }
        let before = self.decode(prompt);
        let whole: Vec<usize> = prompt.iter().chain(completion).copied().collect();
        let whole = self.decode(&whole);
        match whole.strip_prefix(&before) {
            Some(rest) => rest.to_string(),
            None => self.decode(completion),
        }
    }

    /// One token as it is listed in `logprobs` (the vocabulary's own string, unique per id).
    pub fn token_name(&self, id: usize) -> String {
        match &self.tokenizer {
            Some(tok) => tok
                .id_to_token(id as u32)
                .unwrap_or_else(|| format!("<{id}>")),
            None => id.to_string(),
        }
    }

    /// The generation region with `_` where still masked (the live canvas).
    pub fn canvas(&self, region: &[usize], mask_id: usize) -> String {
        match &self.tokenizer {
            Some(tok) => tok.render_masked(region, mask_id),
            None => region
                .iter()
                .map(|&t| {
                    if t == mask_id {
                        "_".into()
                    } else {
                        t.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// The character offset of each of `tokens` within the text of `tokens` (decoded prefixes).
    pub fn offsets(&self, tokens: &[usize]) -> Vec<usize> {
        (0..tokens.len())
            .map(|i| self.decode(&tokens[..i]).chars().count())
            .collect()
    }
}

/// The earliest stop sequence in `text`: the byte index where it starts.
pub fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Tracks what a streaming choice has sent.
#[derive(Debug, Clone)]
pub struct StreamedText {
    stops: Vec<String>,
    sent: usize,
    finished: bool,
}

impl StreamedText {
    /// Nothing sent yet.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            sent: 0,
            finished: false,
        }
    }

    /// Whether a stop sequence has ended the text.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Given the whole text that is final now (`done`: the generation is over), the new text to
    /// send, and whether a stop sequence ended it.
    pub fn advance(&mut self, text: &str, done: bool) -> (String, bool) {
        if self.finished {
            return (String::new(), true);
        }
        if let Some(cut) = find_stop(text, &self.stops) {
            self.finished = true;
            let delta = text.get(self.sent..cut).unwrap_or_default().to_string();
            self.sent = cut.max(self.sent);
            return (delta, true);
        }
        let mut end = text.len();
        if !done {
            // hold back an incomplete character and whatever could start a stop sequence
            end = text.trim_end_matches('\u{FFFD}').len();
            for stop in &self.stops {
                for (i, _) in stop.char_indices().skip(1) {
                    if text[..end].ends_with(&stop[..i]) {
                        end = end.min(text.len() - i);
                    }
                }
                // the whole stop string (not found above) cannot end the text
            }
            while !text.is_char_boundary(end) {
                end -= 1;
            }
        }
        // (a text whose already-sent part changed sends nothing more rather than panic)
        match text.get(self.sent..end) {
            Some(delta) if end > self.sent => {
                let delta = delta.to_string();
                self.sent = end;
                (delta, false)
            }
            _ => (String::new(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_holds_back_a_possible_stop_and_cuts_at_one() {
        let mut s = StreamedText::new(vec!["END".into()]);
        assert_eq!(s.advance("hello E", false), ("hello ".into(), false));
        assert_eq!(s.advance("hello EN", false), (String::new(), false));
        assert_eq!(
            s.advance("hello ENX more", false),
            ("ENX more".into(), false)
        );
        assert_eq!(
            s.advance("hello ENX more END tail", false),
            (" ".into(), true)
        );
        assert!(s.finished());
        assert_eq!(s.advance("anything", true), (String::new(), true));
    }

    #[test]
    fn streaming_holds_back_an_incomplete_character_until_done() {
        let mut s = StreamedText::new(vec![]);
        assert_eq!(s.advance("ab\u{FFFD}", false), ("ab".into(), false));
        assert_eq!(s.advance("abé", false), ("é".into(), false));
        assert_eq!(s.advance("abé\u{FFFD}", true), ("\u{FFFD}".into(), false));
    }

    #[test]
    fn ids_without_a_tokenizer() {
        let d = Detokenizer::new(None);
        assert_eq!(d.completion_text(&[1, 2], &[3, 4]), " 3 4");
        assert_eq!(d.completion_text(&[], &[3]), "3");
        assert_eq!(d.canvas(&[3, 9, 4], 9), "3 _ 4");
        assert_eq!(d.offsets(&[10, 200, 3]), vec![0, 2, 6]);
        assert_eq!(find_stop("a b c", &["c".into(), "b".into()]), Some(2));
    }
}
