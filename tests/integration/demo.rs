//! `tokengate demo` end to end: the CRM loads and every demo role can query it through tokengate.
use std::net::SocketAddr;
use tokengate::demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_crm_to_every_role() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let d = demo::start(any, Some(any), 50).await.expect("demo starts");
    let banner = demo::banner(&d);
    let port = d.server.addr.port();
    for &(role, password) in demo::ROLES {
        let line = format!("PGPASSWORD={password} psql -h 127.0.0.1 -p {port} -U {role} -d crm");
        assert!(banner.contains(&line), "banner lacks {line}:\n{banner}");
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(role)
            .password(password)
            .dbname(demo::DATABASE);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM customers)::int, (SELECT count(*) FROM payments)::int, \
                 (SELECT count(*) FROM visits)::int, (SELECT email FROM customers WHERE id = 1)",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, i32>(0),
                row.get::<_, i32>(1),
                row.get::<_, i32>(2)
            ),
            (50, 100, 25)
        );
        assert!(row.get::<_, String>(3).contains('@'));
    }
    // The demo's policy is in force: what each role sees of the same customer differs as the
    // policy says (clear, masked, tokenized) and health notes are refused for support.
    let seen = |role: &'static str, password: &'static str| {
        let port = d.server.addr.port();
        async move {
            let mut config = tokio_postgres::Config::new();
            config
                .host("127.0.0.1")
                .port(port)
                .user(role)
                .password(password)
                .dbname(demo::DATABASE);
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let ssn: String = client
                .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
                .await
                .unwrap()
                .get(0);
            let notes = client.simple_query("SELECT notes FROM visits").await;
            (ssn, notes.is_err())
        }
    };
    let (clear, admin_refused) = seen("app_admin", "admin-demo-pw").await;
    let (masked, support_refused) = seen("support", "support-demo-pw").await;
    let (token, _) = seen("analyst", "analyst-demo-pw").await;
    assert!(!admin_refused && support_refused);
    assert_eq!(masked, format!("***-**-{}", &clear[7..]));
    assert_ne!(token, clear);
    assert_eq!(token.len(), clear.len());
    let cards = {
        let c = d.pg.connect_admin(demo::DATABASE).await.unwrap();
        c.query("SELECT card_number FROM payments", &[])
            .await
            .unwrap()
    };
    assert!(
        cards
            .iter()
            .all(|r| demo::data::luhn_valid(&r.get::<_, String>(0)))
    );
    // ssn and card_number are stored as tokens: a direct read sees, for each value app_admin
    // reads in clear through tokengate, exactly its FF1 token under the demo's key (so the
    // database holds no plaintext, and nothing was tokenized twice), of the same shape.
    let keys =
        tokengate::protect::KeyRing::load(&d.pg.socket_dir().join("demo-keys.json")).unwrap();
    let token_of = |label: &str, format: &str, plain: &str| {
        let spec = tokengate::protect::TransformSpec::new(
            tokengate::protect::Action::Token(format.parse().unwrap()),
            label,
        );
        let t = tokengate::protect::ColumnTransform::new(&spec, 25, 0, &keys).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            t.apply(plain.as_bytes(), &mut out).unwrap(),
            tokengate::protect::Output::Value
        );
        String::from_utf8(out).unwrap()
    };
    let direct = d.pg.connect_admin(demo::DATABASE).await.unwrap();
    let admin = {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("app_admin")
            .password("admin-demo-pw")
            .dbname(demo::DATABASE);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    };
    for (sql, label, format) in [
        ("SELECT ssn FROM customers ORDER BY id", "ssn", "digits"),
        (
            "SELECT card_number FROM payments ORDER BY id",
            "card",
            "card:keep-last4",
        ),
    ] {
        let stored: Vec<String> = direct
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let clear: Vec<String> = admin
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(stored.len(), clear.len());
        assert!(!stored.is_empty());
        for (s, c) in stored.iter().zip(&clear) {
            assert_ne!(s, c, "{label}: the database holds the plaintext");
            assert_eq!(
                s,
                &token_of(label, format, c),
                "{label}: stored value is the token of the clear one"
            );
            assert_eq!(s.len(), c.len());
        }
    }
    let stored_preview = demo::stored_preview(&d).await;
    assert!(
        !stored_preview.contains("refused") && !stored_preview.contains("cannot"),
        "{stored_preview}"
    );
    let root = d.pg.socket_dir().to_path_buf();
    let demo::Demo { server, pg } = d;
    server.shutdown().await;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
    assert!(!root.exists(), "the throwaway database is removed");
}

/// Ctrl-C in a terminal sends SIGINT to the whole foreground process group: tokengate, and
/// (before the fix) the guardian shell and PostgreSQL, which died before they could clean up,
/// leaving the data directory and the demo key file behind. Run `tokengate demo` under a shell
/// in a process group of its own, like a terminal job, and interrupt the whole group.
#[test]
fn demo_removes_everything_on_ctrl_c_to_its_process_group() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    // Run as root, PostgreSQL runs as `postgres` and must be able to enter the directory.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} demo --listen 127.0.0.1:0 --admin 127.0.0.1:0 --customers 20",
            env!("CARGO_BIN_EXE_tokengate")
        ))
        .env("TMPDIR", tmp.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(banner.contains("tokengate demo is running"), "{banner}");
    let leftovers = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("tokengate-pg-"))
            })
            .collect()
    };
    let dirs = leftovers();
    assert_eq!(dirs.len(), 1, "the demo's directory is in TMPDIR: {dirs:?}");
    assert!(dirs[0].join("demo-keys.json").exists());

    let status = Command::new("kill")
        .args(["-INT", "--", &format!("-{group}")])
        .status()
        .unwrap();
    assert!(status.success());
    // Bounded wait for the process to finish its cleanup (not a timing assertion: the test
    // only fails here if the demo never exits).
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the demo did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        leftovers().is_empty(),
        "the demo left {:?} behind (incl. its key file: {})",
        leftovers(),
        dirs[0].join("demo-keys.json").exists()
    );
}
