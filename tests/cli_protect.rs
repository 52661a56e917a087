//! End-to-end checks of `tokengate keygen`, `token` and `mask` through the built binary.
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn tokengate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env_remove("TOKENGATE_KEYS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn keygen(dir: &Path) -> String {
    let path = dir.join("keys.json");
    let output = tokengate(&["keygen", "--out", path.to_str().unwrap()], None);
    assert!(output.status.success(), "{output:?}");
    path.to_str().unwrap().to_owned()
}

#[test]
fn keygen_writes_mode_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = keygen(dir.path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = tokengate(&["keygen", "--out", &path], None);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = tokengate(&["keygen", "--out", &path, "--force"], None);
    assert!(forced.status.success());
}

#[test]
fn token_and_reveal_round_trip_from_args_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    let base = [
        "token",
        "--keys",
        keys.as_str(),
        "--label",
        "ssn",
        "--format",
        "digits",
    ];
    let values = ["123-45-6789", "987-65-4321"];
    let tokens = tokengate(&[&base[..], &values[..]].concat(), None);
    assert!(tokens.status.success(), "{tokens:?}");
    let tokens = stdout_lines(&tokens);
    assert_eq!(tokens.len(), 2);
    for (token, value) in tokens.iter().zip(values) {
        assert_ne!(token, value);
        assert_eq!(token.len(), value.len());
        assert_eq!(&token[3..4], "-");
    }
    // Stdin mode gives the same tokens; --reveal gives the values back.
    let from_stdin = tokengate(&base, Some("123-45-6789\n987-65-4321\n"));
    assert_eq!(stdout_lines(&from_stdin), tokens);
    let revealed = tokengate(
        &[
            &base[..],
            &["--reveal"],
            &[tokens[0].as_str(), tokens[1].as_str()],
        ]
        .concat(),
        None,
    );
    assert_eq!(stdout_lines(&revealed), values);
}

#[test]
fn bad_value_exits_1_naming_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    let output = tokengate(
        &[
            "token", "--keys", &keys, "--label", "pin", "--format", "digits", "12345678", "1234",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("value 2"), "{stderr}");
    assert!(
        !stderr.contains("1234"),
        "the value itself is never printed: {stderr}"
    );
}

#[test]
fn mask_from_args_and_stdin() {
    let output = tokengate(&["mask", "--mask", "***-**-####", "123-45-6789"], None);
    assert!(output.status.success());
    assert_eq!(stdout_lines(&output), ["***-**-6789"]);
    let output = tokengate(&["mask", "--mask", "email"], Some("john@example.com\n"));
    assert_eq!(stdout_lines(&output), ["j***@example.com"]);
    let output = tokengate(&["mask", "--mask", "bogus"], None);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn missing_or_open_key_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let output = tokengate(
        &[
            "token",
            "--keys",
            missing.to_str().unwrap(),
            "--label",
            "l",
            "--format",
            "digits",
            "1234567",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.json"));

    let keys = keygen(dir.path());
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = tokengate(
        &[
            "token", "--keys", &keys, "--label", "l", "--format", "digits", "1234567",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("chmod 600"));
}

#[test]
fn keygen_add_keeps_existing_keys_and_rotates_versions() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    let token = |k: &str| {
        let out = tokengate(
            &[
                "token",
                "--keys",
                k,
                "--label",
                "ssn",
                "--format",
                "digits",
                "123-45-6789",
            ],
            None,
        );
        assert!(out.status.success(), "{out:?}");
        stdout_lines(&out)[0].clone()
    };
    let before = token(&keys);
    // A second name (the audit log's key) leaves the default key, and so its tokens, unchanged.
    let added = tokengate(
        &["keygen", "--out", &keys, "--name", "audit", "--add"],
        None,
    );
    assert!(added.status.success(), "{added:?}");
    assert!(String::from_utf8_lossy(&added.stdout).contains("\"audit\" (version 1)"));
    assert_eq!(token(&keys), before);
    let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Adding an existing name rotates it: version 2 becomes active, so tokens change.
    let rotated = tokengate(&["keygen", "--out", &keys, "--add"], None);
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("\"default\" (version 2)"));
    assert_ne!(token(&keys), before);
    // Tokens do not record their version: with two versions, --reveal of a version-1 token
    // without --key-version would print a wrong value with exit 0; it exits 2 instead.
    let reveal = |extra: &[&str]| {
        let args = [
            &[
                "token", "--keys", &keys, "--label", "ssn", "--format", "digits", "--reveal",
            ][..],
            extra,
            &[before.as_str()],
        ]
        .concat();
        tokengate(&args, None)
    };
    let guessed = reveal(&[]);
    assert_eq!(guessed.status.code(), Some(2), "{guessed:?}");
    assert!(guessed.stdout.is_empty());
    assert!(String::from_utf8_lossy(&guessed.stderr).contains("--key-version"));
    let named = reveal(&["--key-version", "1"]);
    assert!(named.status.success(), "{named:?}");
    assert_eq!(stdout_lines(&named), ["123-45-6789"]);
    // --add needs an existing file.
    let missing = dir.path().join("none.json");
    let out = tokengate(
        &["keygen", "--out", missing.to_str().unwrap(), "--add"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

/// The README's `cut -d, -f3 customers.csv | tokengate token …`: a header line and a bad value
/// no longer stop the run when asked; `--on-error empty` keeps one output line per input line.
#[test]
fn bulk_token_handles_headers_and_bad_values_line_for_line() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    let base = [
        "token",
        "--keys",
        keys.as_str(),
        "--label",
        "email",
        "--format",
        "email",
    ];
    let csv_column = "email\nada.lovelace@example.com\nnot-an-email\ngrace.hopper@example.org\n";
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        tokengate(&args, Some(csv_column))
    };

    // Default (fail): the header is a bad value, nothing after it is printed.
    let fail = run(&[]);
    assert_eq!(fail.status.code(), Some(1));
    assert!(stdout_lines(&fail).is_empty());
    assert!(String::from_utf8_lossy(&fail.stderr).contains("value 1"));

    // The header passes through, the bad value becomes an empty line: 4 lines in, 4 out.
    let empty = run(&["--skip-header", "--on-error", "empty"]);
    assert!(empty.status.success(), "{empty:?}");
    let lines = stdout_lines(&empty);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0], "email");
    assert!(lines[1].ends_with("@example.com") && lines[1] != "ada.lovelace@example.com");
    assert_eq!(lines[2], "");
    assert!(lines[3].ends_with("@example.org"));
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("value 3"), "{stderr}");
    assert!(
        !stderr.contains("not-an-email"),
        "values never appear in messages"
    );

    // skip leaves bad values out.
    let skip = run(&["--skip-header", "--on-error", "skip"]);
    assert!(skip.status.success());
    assert_eq!(stdout_lines(&skip).len(), 3);

    // The same tokens whichever way the values arrive.
    let direct = tokengate(&[&base[..], &["ada.lovelace@example.com"]].concat(), None);
    assert_eq!(stdout_lines(&direct)[0], lines[1]);
}

/// `--help` shows the format syntax that works (options after a colon, comma-separated).
#[test]
fn token_help_shows_the_working_format_syntax() {
    let help = tokengate(&["token", "--help"], None);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("digits:small=mask"), "{text}");
    assert!(!text.contains("digits,small"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    for format in ["digits:small=mask", "card:keep-last4,small=null"] {
        let out = tokengate(
            &[
                "token",
                "--keys",
                &keys,
                "--label",
                "x",
                "--format",
                format,
                "4111111111111111",
            ],
            None,
        );
        assert!(out.status.success(), "{format}: {out:?}");
    }
}
