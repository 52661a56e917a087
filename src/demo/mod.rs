//! `tokengate demo`: a throwaway PostgreSQL with a small CRM of fake customer data, and
//! tokengate in front of it, until Ctrl-C.
pub mod data;

use crate::config::{ServeConfig, Upstream};
use crate::embedded_pg::{EmbeddedPgError, EmbeddedPostgres, PgOptions};
use crate::server::{RunningServer, ServerError};
use std::net::SocketAddr;

/// The database the demo creates.
pub const DATABASE: &str = "crm";

/// Login roles the demo creates, with their passwords. The policy for them is
/// `policies/demo.yaml` once read-path enforcement is on.
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
    let pg = tokio::task::spawn_blocking(|| {
        EmbeddedPostgres::start(&PgOptions {
            superuser_password: random_password(),
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
    config.listen = listen;
    config.admin = admin;
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
