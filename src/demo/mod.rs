//! `tokengate demo`: a throwaway PostgreSQL with a small CRM of fake customer data, and
//! tokengate in front of it, until Ctrl-C.
pub mod data;

use crate::config::{ServeConfig, Upstream};
use crate::embedded_pg::{EmbeddedPgError, EmbeddedPostgres, PgOptions};
use crate::protect::KeyRing;
use crate::server::{RunningServer, ServerError};
use std::net::SocketAddr;

/// The demo's policy (also `policies/demo.yaml`).
pub const POLICY: &str = include_str!("../../policies/demo.yaml");

/// The database the demo creates.
pub const DATABASE: &str = "crm";

/// Login roles the demo creates, with their passwords. The policy for them is
/// `policies/demo.yaml`.
pub const ROLES: &[(&str, &str)] = &[
    ("app_admin", "admin-demo-pw"),
    ("support", "support-demo-pw"),
    ("analyst", "analyst-demo-pw"),
    ("auditor", "auditor-demo-pw"),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Postgres(#[from] EmbeddedPgError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("{0}")]
    Task(String),
}

/// A running demo: the server stops and the database is removed when it is dropped.
pub struct Demo {
    pub server: RunningServer,
    pub pg: EmbeddedPostgres,
}

/// Starts PostgreSQL, loads the CRM, and starts tokengate on `listen` / `admin`.
pub async fn start(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    customers: usize,
) -> Result<Demo, DemoError> {
    start_with_ssl(listen, admin, customers, None).await
}

/// [`start`] with PostgreSQL's `ssl` on, given its PEM certificate and key (tokengate's own
/// upstream leg stays plain; tests start another tokengate for TLS on both legs).
pub async fn start_with_ssl(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    customers: usize,
    ssl: Option<(String, String)>,
) -> Result<Demo, DemoError> {
    let pg = tokio::task::spawn_blocking(|| {
        EmbeddedPostgres::start(&PgOptions {
            superuser_password: random_password(),
            ssl,
            ..PgOptions::default()
        })
    })
    .await
    .map_err(|e| DemoError::Task(e.to_string()))??;
    pg.execute("postgres", &format!("CREATE DATABASE {DATABASE}"))
        .await?;
    let mut setup = String::from(data::SCHEMA);
    setup.push_str(&data::inserts(customers, 2026));
    for (role, password) in ROLES {
        setup.push_str(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}';\n\
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};\n\
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};\n"
        ));
    }
    pg.execute(DATABASE, &setup).await?;
    let mut config = ServeConfig::for_upstream(
        Upstream::parse(&format!(
            "postgres://127.0.0.1:{}?sslmode=disable",
            pg.port()
        ))
        .map_err(|e| DemoError::Task(e.to_string()))?,
    );
    // The policy and a fresh key file live in the throwaway directory and vanish with it.
    let policy_path = pg.socket_dir().join("demo-policy.yaml");
    std::fs::write(&policy_path, POLICY).map_err(|e| DemoError::Task(e.to_string()))?;
    let keys_path = pg.socket_dir().join("demo-keys.json");
    KeyRing::generate("default")
        .write_new(&keys_path, true)
        .map_err(|e| DemoError::Task(e.to_string()))?;
    config.listen = listen;
    config.admin = admin;
    // Ctrl-C should end a throwaway demo promptly, open psql sessions or not.
    config.drain_timeout = std::time::Duration::from_secs(2);
    config.policy = Some(policy_path);
    config.keys = Some(keys_path);
    config.catalog_user = Some("postgres".into());
    config.catalog_password = Some(pg.superuser_password().to_string());
    let server = RunningServer::start(config).await?;
    Ok(Demo { server, pg })
}

fn random_password() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// What each demo role sees for `SELECT * FROM customers LIMIT 3`, through tokengate.
pub async fn preview(demo: &Demo) -> String {
    let mut out = String::new();
    for (role, password) in ROLES {
        out.push_str(&format!("\n  as {role}:\n"));
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(demo.server.addr.port())
            .user(*role)
            .password(*password)
            .dbname(DATABASE);
        let client = match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                client
            }
            Err(e) => {
                out.push_str(&format!("    cannot connect: {e}\n"));
                continue;
            }
        };
        match client
            .simple_query("SELECT id, full_name, email, phone, ssn, birth_date FROM customers ORDER BY id LIMIT 3")
            .await
        {
            Ok(messages) => {
                for m in messages {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        let cells: Vec<&str> = (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
                        out.push_str(&format!("    {}\n", cells.join(" | ")));
                    }
                }
            }
            Err(e) => {
                let message = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
                out.push_str(&format!("    refused: {message}\n"));
            }
        }
    }
    out
}

/// The banner printed once the demo is up.
pub fn banner(demo: &Demo) -> String {
    let port = demo.server.addr.port();
    let mut s = String::new();
    s.push_str("tokengate demo is running.\n\n");
    s.push_str(&format!(
        "  PostgreSQL (throwaway): 127.0.0.1:{}  database {DATABASE}: customers, payments, visits\n",
        demo.pg.port()
    ));
    s.push_str(&format!("  tokengate:              127.0.0.1:{port}\n"));
    if let Some(admin) = demo.server.admin_addr {
        s.push_str(&format!(
            "  metrics:                http://{admin}/metrics\n"
        ));
    }
    s.push_str("\nConnect through tokengate as any demo role:\n");
    for (role, password) in ROLES {
        s.push_str(&format!(
            "  PGPASSWORD={password} psql -h 127.0.0.1 -p {port} -U {role} -d {DATABASE}\n"
        ));
    }
    s.push_str(
        "\nTry: SELECT * FROM customers LIMIT 3;\n\nPress Ctrl-C to stop; everything is removed.\n",
    );
    s
}
