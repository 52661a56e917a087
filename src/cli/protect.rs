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
    /// Token format NAME[:OPTION,OPTION...]: digits, alnum, email[:tokenize-domain],
    /// card[:keep-last4], integer, date[:FROM..TO], text. Options follow a colon and are
    /// separated by commas; any format takes small=refuse|mask|null, e.g. digits:small=mask
    /// or card:keep-last4,small=null.
    #[arg(long)]
    pub format: String,
    /// Key name in the key file.
    #[arg(long, default_value = "default")]
    pub key: String,
    /// Key version (default: the active one). Tokens do not record the version, so
    /// --reveal needs it when the key has several versions.
    #[arg(long)]
    pub key_version: Option<u32>,
    /// Reverse: print the original value of each token.
    #[arg(long)]
    pub reveal: bool,
    #[command(flatten)]
    pub bulk: BulkArgs,
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
    #[command(flatten)]
    pub bulk: BulkArgs,
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
    // Tokens do not record their key version: revealing with a guessed one prints a wrong
    // value. With several versions, the version must be named.
    if args.reveal && args.key_version.is_none() && keys.version_count(&args.key) > 1 {
        return config_error(format!(
            "key {:?} has {} versions and tokens do not record theirs: --reveal needs --key-version N (a column's version: `tokengate policy check --upstream`)",
            args.key,
            keys.version_count(&args.key)
        ));
    }
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
    run_values(args.values, &args.bulk, |value, out| {
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
    run_values(args.values, &args.bulk, |value, out| {
        transform.apply(value, out)
    })
}

/// What bulk `token`/`mask`/`--reveal` does with a value it cannot transform. The message
/// on stderr gives the value's line number, never its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnError {
    /// Stop at the first bad value with exit status 1 (the lines before it are printed).
    #[default]
    Fail,
    /// Print an empty line in its place: one output line per input line, e.g. to `paste`
    /// the result back next to the other columns.
    Empty,
    /// Print nothing for it; the output has fewer lines than the input.
    Skip,
}

/// The options every bulk command shares.
#[derive(Args, Debug, Default)]
pub struct BulkArgs {
    /// What to do with a value that cannot be transformed (a header line, a malformed value).
    #[arg(long, value_enum, default_value_t = OnError::Fail)]
    pub on_error: OnError,
    /// Copy the first stdin line to the output unchanged (a CSV header such as `email`).
    #[arg(long)]
    pub skip_header: bool,
}

/// Applies `transform` to each value (arguments, or stdin lines) and prints one result a line;
/// SQL NULL prints as `\N`. Output is buffered: one `write` per 64 KiB, not one per line.
fn run_values(
    values: Vec<String>,
    bulk: &BulkArgs,
    transform: impl Fn(&[u8], &mut Vec<u8>) -> Result<Output, crate::protect::ProtectError>,
) -> ExitCode {
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut out = Vec::new();
    let mut refused = 0usize;
    let mut handle = |position: usize, value: &[u8], out: &mut Vec<u8>| -> Result<(), ExitCode> {
        let start = out.len();
        match transform(value, out) {
            Ok(Output::Value) => out.push(b'\n'),
            Ok(Output::Null) => out.extend_from_slice(b"\\N\n"),
            Err(error) => {
                out.truncate(start);
                eprintln!("tokengate: value {position}: {error}");
                refused += 1;
                match bulk.on_error {
                    OnError::Fail => return Err(ExitCode::from(EXIT_BAD_VALUE)),
                    OnError::Empty => out.push(b'\n'),
                    OnError::Skip => {}
                }
            }
        }
        Ok(())
    };
    let write_error = |error: std::io::Error| config_error(format!("writing output: {error}"));
    let result = if values.is_empty() {
        let mut stdin = std::io::stdin().lock();
        let mut line = Vec::new();
        let mut position = 0;
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(error) => break Err(config_error(format!("reading stdin: {error}"))),
            }
            position += 1;
            let mut value = line.as_slice();
            value = value.strip_suffix(b"\n").unwrap_or(value);
            value = value.strip_suffix(b"\r").unwrap_or(value);
            let step = if position == 1 && bulk.skip_header {
                out.extend_from_slice(value);
                out.push(b'\n');
                Ok(())
            } else {
                handle(position, value, &mut out)
            };
            // Flush what was transformed before a failure too, then stop.
            if out.len() >= 1 << 16 || step.is_err() {
                if let Err(error) = stdout.write_all(&out) {
                    break Err(write_error(error));
                }
                out.clear();
            }
            if let Err(code) = step {
                break Err(code);
            }
        }
    } else {
        let step = values
            .iter()
            .enumerate()
            .try_for_each(|(index, value)| handle(index + 1, value.as_bytes(), &mut out));
        if step.is_err() {
            // Print the values before the failure, as the stdin path does.
            let _ = stdout.write_all(&out);
            out.clear();
        }
        step
    };
    let result = result.and_then(|()| {
        stdout.write_all(&out).map_err(write_error)?;
        stdout.flush().map_err(write_error)
    });
    if result.is_ok() && refused > 0 {
        eprintln!(
            "tokengate: {refused} value(s) could not be transformed ({})",
            match bulk.on_error {
                OnError::Empty => "printed as empty lines",
                _ => "left out",
            }
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => {
            let _ = stdout.flush();
            code
        }
    }
}
