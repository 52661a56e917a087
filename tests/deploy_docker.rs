//! The Dockerfile builds: this test has no Docker engine, so it assembles exactly the files the
//! build stage COPYs into an empty directory (respecting .dockerignore for the context) and
//! runs `cargo check --locked --offline` on them, sharing this checkout's target directory so
//! only tokengate itself is checked again. It also checks what the images need at run time.
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One stage of the Dockerfile: its `FROM` line and its instructions (continuations joined).
struct Stage {
    name: String,
    base: String,
    instructions: Vec<(String, String)>,
}

fn stages() -> Vec<Stage> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (op, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push(Stage {
                name,
                base: words[0].to_string(),
                instructions: Vec::new(),
            });
        } else {
            let stage = stages.last_mut().expect("an instruction before FROM");
            stage.instructions.push((op, rest.trim().to_string()));
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

/// `*` matches any run of characters (no other wildcards are used in .dockerignore here).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Whether `.dockerignore` keeps `rel` (a path relative to the context) out of the context:
/// a pattern matches the path, a leading directory of it, or (for `*.ext`) its file name.
fn ignored(rel: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(root().join(".dockerignore")) else {
        return false;
    };
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let rel_text = rel.to_str().unwrap_or("");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|pattern| {
            glob(pattern, rel_text)
                || rel
                    .ancestors()
                    .any(|a| a.to_str().is_some_and(|a| glob(pattern, a)))
                || (pattern.starts_with('*') && glob(pattern, name))
        })
}

/// `COPY SRC... DEST` from the build context, as Docker does: a directory's contents go into
/// DEST; with several sources or a DEST ending in `/`, each source goes inside DEST.
fn copy_from_context(args: &str, workdir: &Path) {
    let words: Vec<&str> = args.split_whitespace().collect();
    assert!(
        !words.iter().any(|w| w.starts_with("--")),
        "unexpected COPY flags in the build stage: {args}"
    );
    let (dest, sources) = words.split_last().unwrap();
    let into_dir = sources.len() > 1 || dest.ends_with('/');
    let dest = workdir.join(dest);
    for source in sources {
        let from = root().join(source);
        assert!(from.exists(), "COPY {source}: not in the repository");
        let to = if into_dir {
            dest.join(Path::new(source).file_name().unwrap())
        } else {
            dest.clone()
        };
        copy_tree(&from, &to, Path::new(source));
    }
}

fn copy_tree(from: &Path, to: &Path, rel: &Path) {
    if ignored(rel) {
        return;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            copy_tree(&entry.path(), &to.join(&name), &rel.join(&name));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn build_stage_compiles_from_exactly_the_files_it_copies() {
    let stages = stages();
    let build = stage(&stages, "build");
    let context = tempfile::tempdir().unwrap();
    let mut workdir = context.path().to_path_buf();
    let mut build_command = None;
    for (op, args) in &build.instructions {
        match op.as_str() {
            "WORKDIR" => workdir = context.path().join(args.trim_start_matches('/')),
            "COPY" => copy_from_context(args, &workdir),
            "RUN" => build_command = Some(args.clone()),
            _ => {}
        }
    }
    let build_command = build_command.expect("the build stage runs cargo");
    assert!(
        build_command.contains("cargo build") && build_command.contains("--locked"),
        "{build_command}"
    );
    // Same dependency graph as the image (--locked), no network, and the checkout's target
    // directory so that the dependencies are not checked again.
    let target: PathBuf = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["check", "--locked", "--offline", "--bin", "tokengate"])
        .current_dir(&workdir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Dockerfile's build stage does not compile from the files it copies:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn runtime_images_have_what_tokengate_needs_at_run_time() {
    let stages = stages();
    let all = |stage: &Stage, op: &str| -> Vec<String> {
        // Inherited instructions count: walk the FROM chain within the file.
        let mut chain = vec![stage];
        while let Some(parent) = stages
            .iter()
            .find(|s| s.name == chain[chain.len() - 1].base)
        {
            chain.push(parent);
        }
        chain
            .iter()
            .rev()
            .flat_map(|s| s.instructions.iter())
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let last = stages.last().unwrap();
    assert_eq!(
        last.name, "runtime",
        "`docker build .` must give the server image"
    );
    for image in [last, stage(&stages, "demo")] {
        let runs = all(image, "RUN").join("\n");
        assert!(
            runs.contains("ca-certificates"),
            "{}: no CA certificates",
            image.name
        );
        let user = all(image, "USER").pop().unwrap_or_default();
        assert!(
            !user.is_empty() && !user.starts_with("root") && !user.starts_with('0'),
            "{}: must run as a non-root user, not {user:?}",
            image.name
        );
        let copies = all(image, "COPY").join("\n");
        assert!(copies.contains("--from=build"), "{}", image.name);
        assert!(copies.contains("policies /etc/tokengate/policies"));
        let entry = all(image, "ENTRYPOINT").join("");
        assert!(entry.contains("/usr/local/bin/tokengate"), "{entry}");
    }
    assert!(all(last, "CMD").join("").contains("serve"));
    let env = all(last, "ENV").join(" ");
    assert!(env.contains("TOKENGATE_LISTEN=0.0.0.0:6432"), "{env}");
    assert!(env.contains("TOKENGATE_ADMIN=0.0.0.0:9187"), "{env}");

    // The demo starts PostgreSQL: the image needs initdb and postgres, where tokengate looks.
    let demo = stage(&stages, "demo");
    let runs = all(demo, "RUN").join("\n");
    assert!(runs.contains("postgresql-15"), "{runs}");
    assert!(
        all(demo, "ENV")
            .join(" ")
            .contains("TOKENGATE_PG_BINDIR=/usr/lib/postgresql/15/bin")
    );
    let cmd = all(demo, "CMD").join("");
    assert!(
        cmd.contains("demo") && cmd.contains("0.0.0.0:6432"),
        "{cmd}"
    );

    // The build context never carries build output, git data or key material.
    for path in [
        "target",
        ".git",
        "keys.json",
        "server.key",
        "ca.pem",
        "deploy/x/keys.json",
    ] {
        assert!(
            ignored(Path::new(path)),
            ".dockerignore must exclude {path}"
        );
    }
}
