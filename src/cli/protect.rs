//! `tokengate keygen`, `token` and `mask`: the protect layer from the command line.
//! Exit codes: 0 ok, 1 a bad value (the message gives its position, never its content),
//! 2 usage or configuration errors.
use crate::protect::{
    Action, ColumnTransform, KeyRing, MaskSpec, Output, TokenFormat, TransformSpec, column::oid,
};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_BAD_VALUE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the new key file (mode 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Name of the generated key.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
    /// Add the key to an existing file instead (a new name, e.g. `audit`, or a new active
    /// version of an existing name: key rotation; older versions stay for reveal).
    #[arg(long, conflicts_with = "force")]
    pub add: bool,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Key file (see `tokengate keygen`).
    #[arg(long, env = "TOKENGATE_KEYS")]
    pub keys: PathBuf,
    /// Label: tokens of the same value differ between labels.
    #[arg(long)]
    pub label: String,
    /// Token format: digits, alnum, email[:tokenize-domain], card[:keep-last4], integer,
    /// date[:FROM..TO], text; options may add small=refuse|mask|null.
    #[arg(long)]
    pub format: String,
    /// Key name in the key file.
    #[arg(long, default_value = "default")]
    pub key: String,
    /// Key version (default: the active one). Tokens do not record the version.
    #[arg(long)]
    pub key_version: Option<u32>,
    /// Reverse: print the original value of each token.
    #[arg(long)]
    pub reveal: bool,
    /// Values; when none are given, one value per line is read from stdin.
    pub values: Vec<String>,
}

#[derive(Args, Debug)]
pub struct MaskArgs {
    /// Mask spec: last4, last:N, first:N, a pattern such as ***-**-####, email, fixed:TEXT,
    /// null, hash[:N[:hex|base32]].
    #[arg(long)]
    pub mask: String,
    /// Key file, needed only by hash masks.
    #[arg(long, env = "TOKENGATE_KEYS")]
    pub keys: Option<PathBuf>,
    /// Label mixed into hash masks.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Values; when none are given, one value per line is read from stdin.
    pub values: Vec<String>,
}

fn config_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("tokengate: {message}");
    ExitCode::from(EXIT_CONFIG)
}

pub fn keygen(args: KeygenArgs) -> ExitCode {
    let (ring, version) = if args.add {
        let mut ring = match KeyRing::load(&args.out) {
            Ok(ring) => ring,
            Err(error) => return config_error(error),
        };
        let version = ring.next_version(&args.name);
        ring.insert(&args.name, version, crate::protect::Key::generate());
        (ring, version)
    } else {
        (KeyRing::generate(&args.name), 1)
    };
    match ring.write_new(&args.out, args.force || args.add) {
        Ok(()) => {
            println!(
                "wrote key {:?} (version {version}) to {}",
                args.name,
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => config_error(error),
    }
}

pub fn token(args: TokenArgs) -> ExitCode {
    let format: TokenFormat = match args.format.parse() {
        Ok(format) => format,
        Err(error) => return config_error(error),
    };
    let keys = match KeyRing::load(&args.keys) {
        Ok(keys) => keys,
        Err(error) => return config_error(error),
    };
    let spec = TransformSpec {
        action: Action::Token(format),
        label: args.label,
        key_name: Some(args.key),
        key_version: args.key_version,
    };
    let transform = match ColumnTransform::new(&spec, oid::TEXT, 0, &keys) {
        Ok(transform) => transform,
        Err(error) => return config_error(error),
    };
    run_values(args.values, |value, out| {
        if args.reveal {
            transform.reveal(value, out)
        } else {
            transform.apply(value, out)
        }
    })
}

pub fn mask(args: MaskArgs) -> ExitCode {
    let mask: MaskSpec = match args.mask.parse() {
        Ok(mask) => mask,
        Err(error) => return config_error(error),
    };
    let keys = match (&args.keys, mask.needs_key()) {
        (Some(path), true) => match KeyRing::load(path) {
            Ok(keys) => keys,
            Err(error) => return config_error(error),
        },
        (None, true) => return config_error("hash masks need --keys FILE or TOKENGATE_KEYS"),
        (_, false) => KeyRing::default(),
    };
    let spec = TransformSpec::new(Action::Mask(mask), args.label);
    let transform = match ColumnTransform::new(&spec, oid::TEXT, 0, &keys) {
        Ok(transform) => transform,
        Err(error) => return config_error(error),
    };
    run_values(args.values, |value, out| transform.apply(value, out))
}

/// Applies `transform` to each value (arguments, or stdin lines) and prints one result a line;
/// SQL NULL prints as `\N`. Stops at the first bad value.
fn run_values(
    values: Vec<String>,
    transform: impl Fn(&[u8], &mut Vec<u8>) -> Result<Output, crate::protect::ProtectError>,
) -> ExitCode {
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let mut out = Vec::new();
    let mut handle = |position: usize, value: &[u8]| -> Result<(), ExitCode> {
        out.clear();
        match transform(value, &mut out) {
            Ok(Output::Value) => out.push(b'\n'),
            Ok(Output::Null) => out.extend_from_slice(b"\\N\n"),
            Err(error) => {
                eprintln!("tokengate: value {position}: {error}");
                return Err(ExitCode::from(EXIT_BAD_VALUE));
            }
        }
        stdout
            .write_all(&out)
            .map_err(|error| config_error(format!("writing output: {error}")))
    };
    let result = if values.is_empty() {
        let stdin = std::io::stdin();
        let mut position = 0;
        let mut result = Ok(());
        for line in stdin.lock().lines() {
            position += 1;
            let line = match line {
                Ok(line) => line,
                Err(error) => {
                    result = Err(config_error(format!("reading stdin: {error}")));
                    break;
                }
            };
            result = handle(position, line.trim_end_matches('\r').as_bytes());
            if result.is_err() {
                break;
            }
        }
        result
    } else {
        values
            .iter()
            .enumerate()
            .try_for_each(|(index, value)| handle(index + 1, value.as_bytes()))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
