//! `tokengate demo`: a throwaway PostgreSQL with a small CRM of fake customer data, and
//! tokengate in front of it, until Ctrl-C. The policy stores SSNs and card numbers as tokens
//! (`at_rest: token`): the demo loads the CRM, then tokenizes those columns in place the way
//! `tokengate migrate` does, so a direct connection to PostgreSQL sees only tokens.
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

/// The demo's policy in read-path-only mode: the same labels and rules, but nothing stored as
/// tokens (values stay in clear in PostgreSQL and are protected on the way out). What the
/// application-compatibility tests and the CRM test fixture run, and what the at-rest
/// benchmarks compare against.
pub fn read_path_only_policy() -> String {
    POLICY.replace(", at_rest: token", "")
}

/// Starts PostgreSQL, loads the CRM, tokenizes the columns the demo policy stores as tokens,
/// and starts tokengate on `listen` / `admin`.
pub async fn start(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    customers: usize,
) -> Result<Demo, DemoError> {
    start_with(listen, admin, customers, POLICY, None).await
}

/// [`start`] with another policy text (e.g. [`read_path_only_policy`]; the columns it stores
/// as tokens are tokenized after the load) and, when `ssl` is given (PEM certificate and
/// key), PostgreSQL's `ssl` on (tokengate's own upstream leg stays plain; tests start another
/// tokengate for TLS on both legs).
pub async fn start_with(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    customers: usize,
    policy_text: &str,
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
    let keys = KeyRing::generate("default");
    let policy = crate::policy::Policy::from_yaml(policy_text, "demo.yaml")
        .map_err(|e| DemoError::Task(e.to_string()))?;
    let mut direct = pg.connect_admin(DATABASE).await?;
    crate::atrest::migrate_all(
        &mut direct,
        &policy,
        &keys,
        &crate::atrest::Options::default(),
    )
    .await
    .map_err(|e| DemoError::Task(e.to_string()))?;
    let mut config = ServeConfig::for_upstream(
        Upstream::parse(&format!(
            "postgres://127.0.0.1:{}?sslmode=disable",
            pg.port()
        ))
        .map_err(|e| DemoError::Task(e.to_string()))?,
    );
    // The policy and a fresh key file live in the throwaway directory and vanish with it.
    let policy_path = pg.socket_dir().join("demo-policy.yaml");
    std::fs::write(&policy_path, policy_text).map_err(|e| DemoError::Task(e.to_string()))?;
    let keys_path = pg.socket_dir().join("demo-keys.json");
    keys.write_new(&keys_path, true)
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

/// The query the preview runs for each role.
pub const PREVIEW_QUERY: &str =
    "SELECT id, full_name, email, phone, ssn, birth_date FROM customers ORDER BY id LIMIT 3";

/// The query that shows what PostgreSQL itself stores for the columns stored as tokens.
pub const STORED_QUERY: &str = "SELECT c.id, c.ssn, p.card_number FROM customers c \
     JOIN payments p ON p.customer_id = c.id ORDER BY p.id LIMIT 3";

/// What PostgreSQL stores (read directly, bypassing tokengate), then what `app_admin` reads
/// through tokengate, for [`STORED_QUERY`].
pub async fn stored_preview(demo: &Demo) -> String {
    let mut out = String::from(
        "\n  directly from PostgreSQL (what the database, its backups and pg_dump hold):\n",
    );
    match demo.pg.connect_admin(DATABASE).await {
        Ok(client) => out.push_str(&rows(&client, STORED_QUERY).await),
        Err(e) => out.push_str(&format!("    cannot connect: {e}\n")),
    }
    out.push_str("\n  through tokengate as app_admin (clear):\n");
    let (role, password) = ROLES[0];
    match connect(demo, role, password).await {
        Ok(client) => out.push_str(&rows(&client, STORED_QUERY).await),
        Err(e) => out.push_str(&format!("    cannot connect: {e}\n")),
    }
    out
}

async fn connect(
    demo: &Demo,
    role: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(demo.server.addr.port())
        .user(role)
        .password(password)
        .dbname(DATABASE);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The rows of `sql`, one line each, or the refusal.
async fn rows(client: &tokio_postgres::Client, sql: &str) -> String {
    let mut out = String::new();
    match client.simple_query(sql).await {
        Ok(messages) => {
            for m in messages {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    let cells: Vec<&str> =
                        (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
                    out.push_str(&format!("    {}\n", cells.join(" | ")));
                }
            }
        }
        Err(e) => {
            let message = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            out.push_str(&format!("    refused: {message}\n"));
        }
    }
    out
}

/// What each demo role sees for [`PREVIEW_QUERY`], through tokengate.
pub async fn preview(demo: &Demo) -> String {
    let mut out = String::new();
    for (role, password) in ROLES {
        out.push_str(&format!("\n  as {role}:\n"));
        match connect(demo, role, password).await {
            Ok(client) => out.push_str(&rows(&client, PREVIEW_QUERY).await),
            Err(e) => out.push_str(&format!("    cannot connect: {e}\n")),
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
    s.push_str(&format!(
        "\nssn and card_number are stored as tokens. See what PostgreSQL itself holds, bypassing tokengate:\n  \
         PGPASSWORD={} psql -h 127.0.0.1 -p {} -U postgres -d {DATABASE} -c 'SELECT ssn FROM customers LIMIT 3'\n",
        demo.pg.superuser_password(),
        demo.pg.port()
    ));
    s.push_str(
        "\nTry: SELECT * FROM customers LIMIT 3;\n\nPress Ctrl-C to stop; everything is removed.\n",
    );
    s
}
