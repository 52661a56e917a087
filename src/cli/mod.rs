//! The command-line interface. Thin: each subcommand's flags live in a file of this module
//! and call into the module that owns the work.
use clap::{Parser, Subcommand};

pub mod policy;
use std::process::ExitCode;

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
    /// Print the version.
    Version,
    /// Check a policy file, or explain what a role gets.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("tokengate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Policy(command) => policy::run(command),
    }
}
