//! `tokengate migrate` and `tokengate rekey`: flags, the progress bar and the summary; the
//! work is [`crate::atrest`]. Exit codes: 0 done (or nothing to do), 1 a run failed (the
//! state stays resumable: run the command again), 2 usage or configuration errors.
use crate::atrest::{self, AtRestError, Column, Options, Outcome, Progress};
use crate::policy::Policy;
use crate::protect::KeyRing;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The policy file: its columns labelled `at_rest: token` are the ones to run.
    #[arg(long, env = "TOKENGATE_POLICY")]
    pub policy: PathBuf,
    /// Key file (see `tokengate keygen`).
    #[arg(long, env = "TOKENGATE_KEYS")]
    pub keys: PathBuf,
    /// A PostgreSQL URL, connecting directly (not through tokengate) as a role that may
    /// update the tables and create the `tokengate` schema, e.g. postgres://admin@host/db.
    #[arg(long, env = "TOKENGATE_UPSTREAM")]
    pub upstream: String,
    /// Only this column (`schema.table.column`); default: every column stored as tokens.
    #[arg(long)]
    pub column: Option<String>,
    /// Rows per batch; each batch is one transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The column already holds tokens made with this key version (written through a
    /// tokengate that had no state table): record it as tokenized without touching a row.
    /// Never guess: a wrong version makes clear roles read garbage.
    #[arg(long, value_name = "KEY_VERSION")]
    pub already_tokenized: Option<u32>,
}

#[derive(Args, Debug)]
pub struct RekeyArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The key version to move to (default: the key file's active version).
    #[arg(long)]
    pub to_version: Option<u32>,
    /// Wait after recording the rekeying state before touching rows: longer than every
    /// proxy's `at_rest_max_age` (default 5s), so no proxy still writes or decrypts with the
    /// old version. Durations like 12s, 500ms. Default 12s.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub grace: Option<Duration>,
    /// `lock_timeout` of each attempt at the lock barrier taken after the grace period.
    /// Default 1s.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// How long to wait, after the grace period, for the database's sessions that are running
    /// statements to be seen idle once (a statement queued behind a long one may have been
    /// planned under the old state). Default 10m.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub drain_timeout: Option<Duration>,
}

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn config_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("tokengate: {message}");
    ExitCode::from(EXIT_CONFIG)
}

/// A progress bar on stderr: rows done of the estimated total, rate and ETA.
struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    quiet: bool,
}

impl Bar {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Progress for Bar {
    fn begin(&self, column: &str, total: u64, done: u64) {
        if self.quiet {
            return;
        }
        let bar =
            ProgressBar::with_draw_target(Some(total.max(done)), ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} rows, {per_sec}, ETA {eta}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(column.to_string());
        bar.set_position(done);
        bar.reset_eta();
        *self.lock() = Some(bar);
    }
    fn advance(&self, rows: u64) {
        if let Some(b) = self.lock().as_ref() {
            b.inc(rows);
        }
    }
    fn note(&self, message: &str) {
        if self.quiet {
            return;
        }
        match self.lock().as_ref() {
            Some(b) => b.println(message),
            None => eprintln!("{message}"),
        }
    }
    fn end(&self) {
        if let Some(b) = self.lock().take() {
            b.finish_and_clear();
        }
    }
}

struct Loaded {
    keys: KeyRing,
    columns: Vec<Column>,
}

fn load(args: &RunArgs) -> Result<Loaded, ExitCode> {
    let policy = Policy::load(&args.policy).map_err(config_error)?;
    let keys = KeyRing::load(&args.keys).map_err(config_error)?;
    let columns = atrest::columns(&policy, args.column.as_deref()).map_err(config_error)?;
    if columns.is_empty() {
        return Err(config_error(format!(
            "the policy {} stores no column as tokens (at_rest: token)",
            args.policy.display()
        )));
    }
    Ok(Loaded { keys, columns })
}

pub fn migrate(args: MigrateArgs) -> ExitCode {
    let options = Options {
        batch_size: args.run.batch_size,
        already_tokenized: args.already_tokenized,
        ..Options::default()
    };
    run(&args.run, options, "migrate", false)
}

pub fn rekey(args: RekeyArgs) -> ExitCode {
    let defaults = Options::default();
    let options = Options {
        batch_size: args.run.batch_size,
        grace: args.grace.unwrap_or(defaults.grace),
        lock_timeout: args.lock_timeout.unwrap_or(defaults.lock_timeout),
        drain_timeout: args.drain_timeout.unwrap_or(defaults.drain_timeout),
        to_version: args.to_version,
        ..defaults
    };
    run(&args.run, options, "rekey", true)
}

fn run(args: &RunArgs, options: Options, verb: &str, rekey: bool) -> ExitCode {
    if rekey && options.grace <= crate::config::MAX_AT_REST_MAX_AGE {
        eprintln!(
            "tokengate rekey: warning: --grace {:?} is not above the largest at_rest_max_age a proxy accepts ({:?}); this is safe only if every proxy runs with an at_rest_max_age below it",
            options.grace,
            crate::config::MAX_AT_REST_MAX_AGE
        );
    }
    let loaded = match load(args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return config_error(format!("cannot start the runtime: {e}")),
    };
    let bar = Bar {
        bar: Mutex::new(None),
        quiet: args.quiet,
    };
    rt.block_on(async {
        let (mut client, driver) =
            match crate::net::direct::connect(&args.upstream, &format!("tokengate-{verb}")).await {
                Ok(c) => c,
                Err(e) => {
                    return config_error(format!(
                        "cannot connect to the upstream {}: {e}",
                        crate::net::pg_error::address_of(&args.upstream)
                    ));
                }
            };
        let mut failed = false;
        for c in &loaded.columns {
            let result = if rekey {
                atrest::rekey(&mut client, &loaded.keys, c, &options, &bar).await
            } else {
                atrest::migrate(&mut client, &loaded.keys, c, &options, &bar).await
            };
            match result {
                Ok(Outcome::Recorded { key_version }) => println!(
                    "{}: recorded as tokenized with key version {key_version}; no row changed",
                    c.qualified()
                ),
                Ok(Outcome::AlreadyDone { key_version }) => println!(
                    "{}: already tokenized, key version {key_version}; nothing to do",
                    c.qualified()
                ),
                Ok(Outcome::Done {
                    rows,
                    key_version,
                    elapsed,
                }) => {
                    let secs = elapsed.as_secs_f64();
                    let rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
                    println!(
                        "{}: {verb} done, {rows} values in {secs:.1}s ({rate:.0} rows/s), key version {key_version}",
                        c.qualified()
                    );
                }
                Err(e) => {
                    eprintln!("tokengate {verb}: {e}");
                    if matches!(e, AtRestError::Value { .. } | AtRestError::Lock { .. }) {
                        eprintln!("the column's state is kept: run the command again to resume");
                    }
                    failed = true;
                    break;
                }
            }
        }
        drop(client);
        let _ = driver.await;
        if failed {
            ExitCode::from(EXIT_FAILED)
        } else {
            ExitCode::SUCCESS
        }
    })
}
