//! A throwaway PostgreSQL built from the machine's binaries, for `tokengate demo` and the
//! integration tests: initdb into a temp dir, start on a free loopback port, and remove
//! everything on drop.
//!
//! When running as root, every PostgreSQL process runs as the `postgres` OS user (the server
//! refuses to run as root). Cleanup does not depend on our process ending cleanly: the server
//! runs under a small shell that waits on a pipe from us; when the pipe closes (drop, panic or
//! exit) it stops the server and deletes the directory. The shell and the server run in a
//! process group of their own, so a terminal's Ctrl-C (SIGINT to the whole foreground group)
//! reaches only us: we stop the server through the pipe and delete the directory ourselves.
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    #[error(
        "PostgreSQL server binaries not found (looked at $TOKENGATE_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin); install the postgresql package"
    )]
    NoBinaries,
    #[error("running as root but there is no `postgres` OS user to run the server as")]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{step} failed: {output}")]
    Step { step: &'static str, output: String },
    #[error("PostgreSQL did not become ready within 60s; its log says:\n{log}")]
    NotReady { log: String },
    #[error("SQL failed: {0}")]
    Sql(#[from] tokio_postgres::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedPgError {
    let what = what.into();
    move |source| EmbeddedPgError::Io { what, source }
}

/// How to set the server up.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Password of the `postgres` superuser (used over TCP; the Unix socket trusts).
    pub superuser_password: String,
    /// pg_hba.conf lines placed before the default `host all all 127.0.0.1/32 scram-sha-256`.
    pub hba: Vec<String>,
    /// PEM certificate and key: turns on `ssl`.
    pub ssl: Option<(String, String)>,
    /// Extra `postgresql.conf` settings.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway server.
pub struct EmbeddedPostgres {
    root: PathBuf,
    port: u16,
    bindir: PathBuf,
    password: String,
    guard: Mutex<Option<(Child, ChildStdin)>>,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("root", &self.root)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, EmbeddedPgError> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(d) = std::env::var("TOKENGATE_PG_BINDIR")
        && has(Path::new(&d))
    {
        return Ok(PathBuf::from(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has(&d) {
            return Ok(d);
        }
    }
    // Debian's layout: newest major version first.
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has(d))
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, d)| d)
        .ok_or(EmbeddedPgError::NoBinaries)
}

/// The uid/gid to run PostgreSQL (and tools that refuse root, like PgBouncer) as: ourselves,
/// or `postgres` when we are root.
pub fn server_identity() -> Result<Option<(u32, u32)>, EmbeddedPgError> {
    let me = std::fs::metadata("/proc/self").map_err(io("reading /proc/self"))?;
    if me.uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("reading /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or(EmbeddedPgError::NoPostgresUser)
}

fn command(program: &Path, identity: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = identity {
        c.uid(uid).gid(gid);
    }
    c.env("LC_ALL", "C");
    c
}

fn free_port() -> Result<u16, EmbeddedPgError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl EmbeddedPostgres {
    /// initdb + start. Blocking: call it before entering async code or from `spawn_blocking`.
    pub fn start(options: &PgOptions) -> Result<Self, EmbeddedPgError> {
        let bindir = find_bindir()?;
        let identity = server_identity()?;
        let root = std::env::temp_dir().join(format!(
            "tokengate-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod temp dir"))?;
        let own = |p: &Path| -> Result<(), EmbeddedPgError> {
            if let Some((uid, gid)) = identity {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(io(format!("chown {}", p.display())))?;
            }
            Ok(())
        };
        own(&root)?;

        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", options.superuser_password))
            .map_err(io("writing pwfile"))?;
        own(&pwfile)?;
        let data = root.join("data");
        let out = command(&bindir.join("initdb"), identity)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(io("running initdb"))?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(EmbeddedPgError::Step {
                step: "initdb",
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }

        let mut hba = String::from("local all all trust\n");
        for line in &options.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(io("writing pg_hba.conf"))?;

        let port = free_port()?;
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n",
            root.display()
        );
        if let Some((cert, key)) = &options.ssl {
            for (name, pem, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
                let p = data.join(name);
                std::fs::write(&p, pem).map_err(io(format!("writing {name}")))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(io(format!("chmod {name}")))?;
                own(&p)?;
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for (k, v) in &options.settings {
            conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(io("opening postgresql.conf"))?;
        f.write_all(conf.as_bytes())
            .map_err(io("writing postgresql.conf"))?;

        // The guardian shell: runs the server, waits for our pipe to close, then cleans up.
        let script = r#"
"$1/postgres" -D "$2/data" >"$2/server.log" 2>&1 &
pid=$!
read _unused
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$2"
"#;
        let mut child = command(Path::new("/bin/sh"), identity)
            .arg("-c")
            .arg(script)
            .arg("tokengate-pg")
            .arg(&bindir)
            .arg(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's foreground group: Ctrl-C must not kill the guardian
            // before it cleans up.
            .process_group(0)
            .spawn()
            .map_err(io("starting postgres"))?;
        let stdin = child.stdin.take().ok_or_else(|| EmbeddedPgError::Step {
            step: "starting postgres",
            output: "no stdin pipe".into(),
        })?;
        let pg = EmbeddedPostgres {
            root,
            port,
            bindir,
            password: options.superuser_password.clone(),
            guard: Mutex::new(Some((child, stdin))),
        };
        pg.wait_ready()?;
        Ok(pg)
    }

    fn wait_ready(&self) -> Result<(), EmbeddedPgError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pidfile = self.root.join("data/postmaster.pid");
        while Instant::now() < deadline {
            // Line 8 of postmaster.pid is the postmaster status; "ready" once it accepts.
            if let Ok(s) = std::fs::read_to_string(&pidfile)
                && s.lines().nth(7).map(str::trim) == Some("ready")
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(EmbeddedPgError::NotReady {
            log: std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The server's log so far (for diagnostics).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// `postgres://127.0.0.1:PORT` for tokengate's `--upstream`.
    pub fn upstream_url(&self) -> String {
        format!("postgres://127.0.0.1:{}", self.port)
    }

    /// A superuser connection over the Unix socket (trusted).
    pub async fn connect_admin(
        &self,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, EmbeddedPgError> {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&self.root)
            .port(self.port)
            .user("postgres")
            .dbname(dbname)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Runs a batch of SQL statements as the superuser.
    pub async fn execute(&self, dbname: &str, sql: &str) -> Result<(), EmbeddedPgError> {
        let client = self.connect_admin(dbname).await?;
        client.batch_execute(sql).await?;
        Ok(())
    }

    /// Stops the server and removes its directory (data, sockets and anything the caller put
    /// there, such as the demo's key file), waiting for both.
    pub fn stop(&self) {
        let taken = self.guard.lock().ok().and_then(|mut g| g.take());
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
            // The guardian removes the directory; if it was killed before it could, stop a
            // server it left behind and remove the directory here.
            if self.root.exists() {
                self.stop_orphaned_server();
                let _ = std::fs::remove_dir_all(&self.root);
            }
        }
    }
}

impl EmbeddedPostgres {
    /// Asks a postmaster whose guardian is gone to shut down (SIGINT: fast shutdown) and
    /// waits, boundedly, for it to remove its pid file.
    fn stop_orphaned_server(&self) {
        let pidfile = self.root.join("data/postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pidfile.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
