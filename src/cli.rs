//! How the programs end: a user's mistake (a bad path, an unknown `model_type`, a model that does
//! not fit) prints its message and the chain of causes, never a stack trace, whatever
//! `RUST_BACKTRACE` says (anyhow's `Debug`, which `fn main() -> Result` prints, adds one there).

use std::error::Error;
use std::process::ExitCode;

/// `result` as the program's exit: success, or `error: ...` and each cause on stderr and exit
/// status 1.
///
/// ```
/// fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     Err("no such file".into())
/// }
/// let code = mdm::cli::exit(run());
/// assert_eq!(code, std::process::ExitCode::FAILURE);
/// ```
pub fn exit<E>(result: Result<(), E>) -> ExitCode
where
    E: std::ops::Deref<Target = dyn Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&*e));
            ExitCode::FAILURE
        }
    }
}

/// `error: <message>` and a `caused by: <source>` line for each cause.
pub fn report(error: &(dyn Error + 'static)) -> String {
    let mut out = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        // a message that already ends with its cause's text (`file: reason`) does not repeat it
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
        source = cause.source();
    }
    out
}
