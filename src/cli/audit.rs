//! `tokengate audit verify FILE... --keys KEYFILE [--key audit] [--tail]`: reads the files
//! and prints `OK: N records` or the first line that breaks the chain. Exit 0 intact,
//! 1 broken, 2 usage (bad flags, unreadable key file or log file).
use crate::audit::DEFAULT_AUDIT_KEY;
use crate::audit::verify::{Break, Summary, Verifier, chain_order};
use crate::protect::keys::KeyRing;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the hash chain of an audit log (and its rotated files): prints `OK: N records`
    /// or the first line that was edited, deleted, reordered or truncated.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The log files. A rotated set (audit.log, audit.log.1, …) is put in chain order
    /// (oldest first) whatever order it is given in; other names are verified as given.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The key file the proxy used.
    #[arg(long, env = "TOKENGATE_KEYS")]
    pub keys: PathBuf,
    /// The key name in the key file.
    #[arg(long, default_value = DEFAULT_AUDIT_KEY)]
    pub key: String,
    /// The files are the end of a longer chain whose older files were archived: the first
    /// record need not be seq 0.
    #[arg(long)]
    pub tail: bool,
}

pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify(args) => verify(args),
    }
}

/// Why verification could not run at all (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Verifies `files` (re-ordered by [`chain_order`]). `Ok(Err(_))` is a broken chain.
pub fn verify_paths(
    files: &[PathBuf],
    ring: &KeyRing,
    key_name: &str,
    tail: bool,
) -> Result<Result<Summary, Break>, VerifyError> {
    verify_paths_reporting(files, ring, key_name, tail).map(|(result, _)| result)
}

/// [`verify_paths`], plus the lines torn by a crash that verification went past (each is
/// reported as `truncated`).
pub fn verify_paths_reporting(
    files: &[PathBuf],
    ring: &KeyRing,
    key_name: &str,
    tail: bool,
) -> Result<(Result<Summary, Break>, Vec<Break>), VerifyError> {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut verifier = Verifier::new(ring, key_name, tail);
    for name in chain_order(&names) {
        let content = std::fs::read(&name).map_err(|source| VerifyError::Read {
            path: name.clone(),
            source,
        })?;
        if let Err(brk) = verifier.verify_file(&name, &content) {
            return Ok((Err(brk), verifier.torn_lines().to_vec()));
        }
    }
    Ok((Ok(verifier.summary()), verifier.torn_lines().to_vec()))
}

fn verify(args: VerifyArgs) -> ExitCode {
    let ring = match KeyRing::load(&args.keys) {
        Ok(ring) => ring,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (result, torn) = match verify_paths_reporting(&args.files, &ring, &args.key, args.tail) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // A line torn by a crash is reported (its record is lost) and verification goes on with
    // what was written after the restart; the exit status is then 1.
    for brk in &torn {
        println!("TRUNCATED: {brk}");
    }
    match result {
        Ok(summary) => {
            print!("OK: {} records", summary.records);
            if summary.first_seq.is_some_and(|s| s > 0) {
                print!(" (from seq {})", summary.first_seq.unwrap_or_default());
            }
            if summary.lost > 0 {
                print!(
                    "; the writer noted {} lost record(s) (\"event\":\"records_lost\" lines)",
                    summary.lost
                );
            }
            if !torn.is_empty() {
                print!("; {} line(s) truncated by a crash (see above)", torn.len());
            }
            println!();
            if torn.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(brk) => {
            println!("BROKEN: {brk}");
            ExitCode::from(1)
        }
    }
}
