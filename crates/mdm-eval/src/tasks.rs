//! Task files: JSONL readers for the shapes of `../shared/data/eval/` and of prompt/completion data.
//!
//! The shape is read from each line's keys, so any JSONL of a known shape is a task, no code needed:
//! - multiple choice `{context, choices, gold}` (HellaSwag, PIQA, ARC): choices carry their leading
//!   space; scored by `acc` and `acc_norm`;
//! - continuation `{context, continuation}` (LAMBADA): greedy accuracy and perplexity;
//! - math `{question, answer}` (GSM8K): generate after `Question: ...\nAnswer:`, compare the final
//!   numbers ([`crate::metrics::gsm8k_answer`]);
//! - completion `{prompt, completion}` (or `response`): generate after the prompt; exact match
//!   (reference contained, any case) and sentence BLEU (the reverse-curse files).
//!
//! An `id` key is optional (the line number is used instead).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::metrics::gsm8k_answer;
use crate::EvalError;

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// The item's id.
    pub id: String,
    /// The text before each choice.
    pub context: String,
    /// The candidate continuations (with their leading space).
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
}

/// One context whose continuation is scored.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuationItem {
    /// The item's id.
    pub id: String,
    /// The context.
    pub context: String,
    /// The continuation to score (LAMBADA: the last word, with its leading space).
    pub continuation: String,
}

/// How a generation is compared with its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// The final number (GSM8K).
    Number,
    /// Text: exact match (contained, any case) and BLEU.
    Text,
}

/// One prompt to generate from.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationItem {
    /// The item's id.
    pub id: String,
    /// The prompt given to the model.
    pub prompt: String,
    /// What a right generation holds (GSM8K: the normalised final number).
    pub reference: String,
}

/// The items of a task, by shape.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskItems {
    /// `{context, choices, gold}`.
    MultipleChoice(Vec<ChoiceItem>),
    /// `{context, continuation}`.
    Continuation(Vec<ContinuationItem>),
    /// `{question, answer}` (reference [`Reference::Number`]) or `{prompt, completion}`
    /// ([`Reference::Text`]).
    Generation(Reference, Vec<GenerationItem>),
}

impl TaskItems {
    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            Self::MultipleChoice(v) => v.len(),
            Self::Continuation(v) => v.len(),
            Self::Generation(_, v) => v.len(),
        }
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` items.
    pub fn truncate(&mut self, n: usize) {
        match self {
            Self::MultipleChoice(v) => v.truncate(n),
            Self::Continuation(v) => v.truncate(n),
            Self::Generation(_, v) => v.truncate(n),
        }
    }
}

/// A task read from a JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Its name (the known name, or the file stem).
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Its items, in file order.
    pub items: TaskItems,
}

/// The known task names and their files under the evaluation data folder.
pub const KNOWN_TASKS: [(&str, &str); 6] = [
    ("hellaswag", "hellaswag_validation.jsonl"),
    ("piqa", "piqa_validation.jsonl"),
    ("arc_easy", "arc_easy_validation.jsonl"),
    ("arc_challenge", "arc_challenge_validation.jsonl"),
    ("lambada", "lambada_openai_test.jsonl"),
    ("gsm8k", "gsm8k_test.jsonl"),
];

/// The file of a task: a known name under `data_dir`, or a path to a JSONL file.
pub fn resolve_task(name: &str, data_dir: &Path) -> Result<(String, PathBuf), EvalError> {
    if let Some((known, file)) = KNOWN_TASKS.iter().find(|(n, _)| *n == name) {
        return Ok((known.to_string(), data_dir.join(file)));
    }
    let path = PathBuf::from(name);
    if path.is_file() {
        let stem = path
            .file_stem()
            .map_or_else(|| name.to_string(), |s| s.to_string_lossy().into_owned());
        return Ok((stem, path));
    }
    let known: Vec<&str> = KNOWN_TASKS.iter().map(|(n, _)| *n).collect();
    Err(EvalError::Request(format!(
        "unknown task `{name}`: not one of {} and not a JSONL file",
        known.join(", ")
    )))
}

fn task_err(file: &Path, line: usize, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        file: file.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

fn string(
    obj: &Map<String, Value>,
    key: &str,
    file: &Path,
    line: usize,
) -> Result<String, EvalError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(task_err(
            file,
            line,
            format!("`{key}` is not a string: {other}"),
        )),
        None => Err(task_err(file, line, format!("missing key `{key}`"))),
    }
}

fn id_of(obj: &Map<String, Value>, line: usize) -> String {
    match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => line.to_string(),
    }
}

/// The shape of one line, from its keys.
fn shape_of(obj: &Map<String, Value>) -> Option<&'static str> {
    let has = |k: &str| obj.contains_key(k);
    if has("context") && has("choices") && has("gold") {
        Some("multiple choice {context, choices, gold}")
    } else if has("context") && has("continuation") {
        Some("continuation {context, continuation}")
    } else if has("question") && has("answer") {
        Some("math {question, answer}")
    } else if has("prompt") && (has("completion") || has("response")) {
        Some("completion {prompt, completion}")
    } else {
        None
    }
}

/// Reads a task file (shapes in the module docs). Every line must have the same shape; errors name
/// the file and the 1-based line.
pub fn read_task(name: &str, file: &Path) -> Result<Task, EvalError> {
    let text = std::fs::read_to_string(file).map_err(|source| EvalError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    let mut shape: Option<&'static str> = None;
    let (mut mc, mut cont, mut gen) = (vec![], vec![], vec![]);
    let mut reference = Reference::Text;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| task_err(file, line, format!("not JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(task_err(file, line, "not a JSON object"));
        };
        let this = shape_of(&obj).ok_or_else(|| {
            let keys: Vec<&String> = obj.keys().collect();
            task_err(file, line, format!("unknown shape, keys {keys:?}"))
        })?;
        match shape {
            Some(s) if s != this => {
                return Err(task_err(file, line, format!("a {this} line in a {s} file")))
            }
            _ => shape = Some(this),
        }
        let id = id_of(&obj, line);
        if this.starts_with("multiple") {
            let choices = match obj.get("choices") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|c| c.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| task_err(file, line, "`choices` holds a non-string"))?,
                _ => return Err(task_err(file, line, "`choices` is not an array")),
            };
            let gold = obj
                .get("gold")
                .and_then(Value::as_u64)
                .ok_or_else(|| task_err(file, line, "`gold` is not a non-negative integer"))?
                as usize;
            if choices.len() < 2 || gold >= choices.len() {
                return Err(task_err(
                    file,
                    line,
                    format!("gold {gold} with {} choices", choices.len()),
                ));
            }
            let context = string(&obj, "context", file, line)?;
            mc.push(ChoiceItem {
                id,
                context,
                choices,
                gold,
            });
        } else if this.starts_with("continuation") {
            cont.push(ContinuationItem {
                id,
                context: string(&obj, "context", file, line)?,
                continuation: string(&obj, "continuation", file, line)?,
            });
        } else if this.starts_with("math") {
            reference = Reference::Number;
            let answer = string(&obj, "answer", file, line)?;
            let reference = gsm8k_answer(&answer)
                .ok_or_else(|| task_err(file, line, "the answer holds no number"))?;
            let question = string(&obj, "question", file, line)?;
            gen.push(GenerationItem {
                id,
                prompt: format!("Question: {question}\nAnswer:"),
                reference,
            });
        } else {
            let key = if obj.contains_key("completion") {
                "completion"
            } else {
                "response"
            };
            gen.push(GenerationItem {
                id,
                prompt: string(&obj, "prompt", file, line)?,
                reference: string(&obj, key, file, line)?,
            });
        }
    }
    let items = match shape {
        None => return Err(task_err(file, 0, "no items")),
        Some(s) if s.starts_with("multiple") => TaskItems::MultipleChoice(mc),
        Some(s) if s.starts_with("continuation") => TaskItems::Continuation(cont),
        Some(_) => TaskItems::Generation(reference, gen),
    };
    Ok(Task {
        name: name.to_string(),
        file: file.to_path_buf(),
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, lines).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_each_shape() {
        let (_d, p) = write(
            "{\"id\": 7, \"context\": \"Q\", \"choices\": [\" a\", \" b\"], \"gold\": 1}\n\n\
             {\"context\": \"R\", \"choices\": [\" c\", \" d\", \" e\"], \"gold\": 0}\n",
        );
        let t = read_task("mc", &p).unwrap();
        let TaskItems::MultipleChoice(items) = &t.items else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].id.as_str(), items[0].gold), ("7", 1));
        assert_eq!(items[1].id, "3");
        let (_d, p) = write("{\"context\": \"a b\", \"continuation\": \" c\"}\n");
        assert!(matches!(
            read_task("l", &p).unwrap().items,
            TaskItems::Continuation(_)
        ));
        let (_d, p) = write("{\"question\": \"1+1?\", \"answer\": \"so\\n#### 2\"}\n");
        let TaskItems::Generation(Reference::Number, g) = read_task("g", &p).unwrap().items else {
            panic!()
        };
        assert_eq!(
            (g[0].prompt.as_str(), g[0].reference.as_str()),
            ("Question: 1+1?\nAnswer:", "2")
        );
        let (_d, p) = write("{\"prompt\": \"Who?\", \"completion\": \" Ann\"}\n");
        let TaskItems::Generation(Reference::Text, g) = read_task("r", &p).unwrap().items else {
            panic!()
        };
        assert_eq!(g[0].reference, " Ann");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("{\"context\": \"a\", \"continuation\": \" b\"}\nnot json\n", 2, "not JSON"),
            ("{\"context\": \"Q\", \"choices\": [\" a\"], \"gold\": 3}\n", 1, "gold 3"),
            ("{\"context\": \"a\", \"continuation\": \" b\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n", 2, "a completion"),
            ("{\"text\": \"x\"}\n", 1, "unknown shape"),
            ("{\"context\": 3, \"continuation\": \" b\"}\n", 1, "not a string"),
        ];
        for (text, line, what) in cases {
            let (_d, p) = write(text);
            let err = read_task("t", &p).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, EvalError::Task { line: l, .. } if l == line),
                "{msg}"
            );
            assert!(msg.contains(what) && msg.contains("t.jsonl"), "{msg}");
        }
        assert!(resolve_task("no_such_task", Path::new(".")).is_err());
        let (name, file) = resolve_task("piqa", Path::new("/d")).unwrap();
        assert_eq!(
            (name.as_str(), file),
            ("piqa", PathBuf::from("/d/piqa_validation.jsonl"))
        );
    }
}
