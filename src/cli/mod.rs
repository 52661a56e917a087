//! The command-line interface. Thin: each subcommand's flags live in a file of this module
//! and call into the module that owns the work.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod atrest;
pub mod audit;
pub mod demo;
pub mod policy;
pub mod protect;
pub mod serve;

#[derive(Parser, Debug)]
#[command(
    name = "tokengate",
    version,
    about = "PostgreSQL proxy that tokenizes and masks sensitive columns per role"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Relay clients to the upstream PostgreSQL, applying the policy.
    Serve(Box<serve::ServeArgs>),
    /// Start a throwaway PostgreSQL with sample customer data and tokengate in front of it.
    Demo(demo::DemoArgs),
    /// Print the version.
    Version,
    /// Write a new key file (mode 0600).
    Keygen(protect::KeygenArgs),
    /// Tokenize values (or reveal tokens with --reveal).
    Token(protect::TokenArgs),
    /// Mask values.
    Mask(protect::MaskArgs),
    /// Check a policy file, or explain what a role gets.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Verify audit logs.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Tokenize the existing values of the columns stored as tokens (`at_rest: token`) in
    /// place, in resumable batches, and record them as tokenized.
    Migrate(atrest::MigrateArgs),
    /// Move the columns stored as tokens from their key version to the active one (or
    /// --to-version), in resumable batches.
    Rekey(atrest::RekeyArgs),
}

/// The runtime for long-running commands (serve, demo); prints why when it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("tokengate: cannot start the runtime: {e}");
            None
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Demo(args) => demo::run(args),
        Command::Version => {
            println!("tokengate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Keygen(args) => protect::keygen(args),
        Command::Token(args) => protect::token(args),
        Command::Mask(args) => protect::mask(args),
        Command::Policy(command) => policy::run(command),
        Command::Audit(command) => audit::run(command),
        Command::Migrate(args) => atrest::migrate(args),
        Command::Rekey(args) => atrest::rekey(args),
    }
}
