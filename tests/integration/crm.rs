//! Shared setup for the leak and usability corpora: the demo CRM database (`crm`) in the shared
//! PostgreSQL with the demo roles, a tokengate running `policies/demo.yaml` in front of it, clients
//! that record everything they receive (rows, errors, notices, COPY data, raw bytes), and the
//! leak oracle that searches what was received for every protected plaintext and its trivially
//! reversible forms.
#![allow(dead_code)]

use crate::harness::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use tokengate::server::RunningServer;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

pub const CRM_DB: &str = "crm";

/// Login roles and their passwords. `ana2` is only a member of the NOLOGIN group `analysts`, so
/// the policy's `"*"` entry covers it.
pub const CRM_ROLES: &[(&str, &str)] = &[
    ("app_admin", "crm-admin-pw"),
    ("support", "crm-support-pw"),
    ("analyst", "crm-analyst-pw"),
    ("auditor", "crm-auditor-pw"),
    ("ana2", "crm-ana2-pw"),
];

pub fn password(role: &str) -> &'static str {
    CRM_ROLES
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("unknown crm role {role}"))
}

/// Customers loaded by the setup (and their payments and visits).
pub const CUSTOMERS: usize = 200;

pub struct Crm {
    pub keys: PathBuf,
    _keys_dir: tempfile::TempDir,
    pub oracle: Oracle,
}

static CRM: OnceLock<Crm> = OnceLock::new();
static CRM_INIT: Mutex<()> = Mutex::new(());

pub const ROLE_SETUP: &str = "
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_admin, support, analyst, auditor, analysts;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_admin, support, analyst, auditor, analysts;
GRANT CREATE ON SCHEMA public TO app_admin, support, analyst, auditor, analysts;
";

/// The `crm` database, roles, key file and oracle, made once per test process.
pub fn crm() -> &'static Crm {
    if let Some(c) = CRM.get() {
        return c;
    }
    let _guard = CRM_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = CRM.get() {
        return c;
    }
    let pg = &cluster().pg;
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys.json");
    // A fixed key makes tokens deterministic: with a random key per run a date token could now
    // and then equal some customer's real birth date and read as a leak (a flaky oracle).
    let mut ring = tokengate::protect::keys::KeyRing::default();
    ring.insert(
        tokengate::protect::keys::DEFAULT_KEY_NAME,
        1,
        tokengate::protect::keys::Key::from_bytes([0x5a; 32]),
    );
    ring.write_new(&keys, false).unwrap();
    let mut roles = String::from("CREATE ROLE analysts NOLOGIN;\n");
    for (role, pw) in CRM_ROLES {
        roles.push_str(&format!("CREATE ROLE {role} LOGIN PASSWORD '{pw}';\n"));
    }
    roles.push_str("GRANT analysts TO ana2;\n");
    // `SET ROLE app_admin` succeeds for support: the policy must still follow the login role.
    roles.push_str("GRANT app_admin TO support;\n");
    let schema = format!(
        "{}\n{}\n\
         CREATE VIEW public.customer_contacts AS SELECT id, full_name AS name, email FROM customers;\n\
         CREATE FUNCTION public.leak_ssn(int) RETURNS text AS $$ SELECT ssn FROM customers WHERE id = $1 $$ LANGUAGE sql;\n\
         {ROLE_SETUP}\n\
         ANALYZE;",
        tokengate::demo::data::SCHEMA,
        tokengate::demo::data::inserts(CUSTOMERS, 2026)
    );
    // The setup runs on a runtime of its own (tests call this from inside theirs).
    let oracle = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    pg.execute("postgres", &format!("CREATE DATABASE {CRM_DB}"))
                        .await
                        .expect("create crm");
                    pg.execute("postgres", &roles).await.expect("crm roles");
                    pg.execute(CRM_DB, &schema).await.expect("crm schema");
                    load_secrets().await
                })
            })
            .join()
            .unwrap()
    });
    let _ = CRM.set(Crm {
        keys,
        _keys_dir: keys_dir,
        oracle,
    });
    CRM.get().unwrap()
}

async fn load_secrets() -> Oracle {
    let admin = cluster().pg.connect_admin(CRM_DB).await.unwrap();
    let mut secrets = Vec::new();
    let queries: &[(Kind, &str)] = &[
        (Kind::FullName, "SELECT full_name FROM customers"),
        (Kind::Email, "SELECT email FROM customers"),
        (Kind::Phone, "SELECT phone FROM customers"),
        (Kind::Ssn, "SELECT ssn FROM customers"),
        (Kind::BirthDate, "SELECT birth_date::text FROM customers"),
        (Kind::Card, "SELECT card_number FROM payments"),
        (Kind::Diagnosis, "SELECT DISTINCT diagnosis FROM visits"),
        (Kind::Notes, "SELECT DISTINCT notes FROM visits"),
    ];
    for (kind, sql) in queries {
        for row in admin.query(*sql, &[]).await.unwrap() {
            secrets.push((*kind, row.get::<_, String>(0)));
        }
    }
    assert_eq!(secrets.len(), CUSTOMERS * 7 + 6 + 5, "every secret loaded");
    Oracle::new(&secrets)
}

/// `policies/demo.yaml` in read-path-only mode. The CRM fixture loads its plaintext directly,
/// so here nothing is stored as tokens (`at_rest: token` removed) and tokengate protects what
/// leaves PostgreSQL; `demo.rs` covers the demo's at-rest columns and `at_rest.rs` that mode.
pub fn crm_policy_text() -> String {
    let text = tokengate::demo::read_path_only_policy();
    assert_ne!(
        text,
        tokengate::demo::POLICY,
        "the demo policy stores some labels as tokens"
    );
    assert!(!text.contains("at_rest: token }"));
    text
}

/// [`crm_policy_text`] in a file that lives as long as the test process.
pub fn crm_policy_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("tokengate-crm-policy-")
            .tempdir()
            .unwrap()
            .keep();
        let path = dir.join("demo.yaml");
        std::fs::write(&path, crm_policy_text()).unwrap();
        path
    })
    .clone()
}

/// A tokengate running the demo policy (read-path only) in front of the shared PostgreSQL.
pub async fn crm_proxy() -> RunningServer {
    crm_proxy_with_policy(crm_policy_path()).await
}

/// A proxy over the CRM running the policy file at `path` (its watcher reloads edits).
pub async fn crm_proxy_with_policy(path: PathBuf) -> RunningServer {
    let keys = crm().keys.clone();
    proxy_with(move |c| {
        c.policy = Some(path);
        c.keys = Some(keys);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
    })
    .await
}

/// `policies/demo.yaml` with its `support` rule replaced by `rule`, written to `dir`.
pub fn demo_policy_with_support(dir: &std::path::Path, rule: &str) -> PathBuf {
    let demo = crm_policy_text();
    let support_rule = "support:   { pii: mask, financial: mask, health: deny }";
    assert!(demo.contains(support_rule));
    let path = dir.join("policy.yaml");
    std::fs::write(&path, demo.replace(support_rule, rule)).unwrap();
    path
}

pub fn crm_config(port: u16, role: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user(role)
        .password(password(role))
        .dbname(CRM_DB)
        .connect_timeout(std::time::Duration::from_secs(10));
    c
}

/// A tokio-postgres client whose notices are kept (a DO block can leak through RAISE NOTICE).
pub struct Session {
    pub client: tokio_postgres::Client,
    notices: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Session {
    /// Moves the notices received so far into `seen`.
    pub fn drain_notices(&mut self, seen: &mut Seen) {
        while let Ok(n) = self.notices.try_recv() {
            seen.notices += 1;
            seen.push("NoticeResponse", n);
        }
    }
}

pub async fn session_at(port: u16, role: &str) -> Session {
    session_with(crm_config(port, role)).await
}

/// A session with a config of the caller's (another database, startup options...).
pub async fn session_with(config: tokio_postgres::Config) -> Session {
    let role = config.get_user().unwrap_or_default().to_string();
    let port = config.get_ports().first().copied().unwrap_or_default();
    let (client, mut conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as {role} to port {port}: {e:?}"));
    let (tx, notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notice(n) = message {
                let mut text = n.message().as_bytes().to_vec();
                for part in [n.detail(), n.hint(), n.where_()].into_iter().flatten() {
                    text.push(b'\n');
                    text.extend_from_slice(part.as_bytes());
                }
                let _ = tx.send(text);
            }
        }
    });
    Session { client, notices }
}

/// A session as `role` through tokengate.
pub async fn via(proxy: &RunningServer, role: &str) -> Session {
    session_at(proxy.addr.port(), role).await
}

/// A session as `role` straight to PostgreSQL (for comparisons).
pub async fn direct(role: &str) -> Session {
    crm();
    session_at(cluster().port(), role).await
}

/// A raw protocol client logged in as `role` (SCRAM, as pg_hba asks) to the `crm` database.
pub async fn raw_as(addr: SocketAddr, role: &str) -> Raw {
    raw_in(addr, role, CRM_DB).await
}

/// A raw protocol client logged in as `role` to `database`.
pub async fn raw_in(addr: SocketAddr, role: &str, database: &str) -> Raw {
    let mut raw = Raw::tcp(addr).await;
    raw.send(&startup_packet(
        196_608,
        &[("user", role), ("database", database)],
    ))
    .await;
    let mut scram: Option<ScramSha256> = None;
    loop {
        let m = raw.recv().await.expect("login: connection closed");
        match m.tag {
            b'R' => {
                let code = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
                let data = &m.body[4..];
                match code {
                    0 => {}
                    3 => {
                        let mut body = password(role).as_bytes().to_vec();
                        body.push(0);
                        raw.send(&frame(b'p', &body)).await;
                    }
                    10 => {
                        let s = ScramSha256::new(
                            password(role).as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        let mut body = b"SCRAM-SHA-256\0".to_vec();
                        body.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                        body.extend_from_slice(s.message());
                        raw.send(&frame(b'p', &body)).await;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().expect("SASLContinue before SASL");
                        s.update(data).expect("scram server-first");
                        let msg = s.message().to_vec();
                        raw.send(&frame(b'p', &msg)).await;
                    }
                    12 => {
                        let s = scram.as_mut().expect("SASLFinal before SASL");
                        s.finish(data).expect("scram server-final");
                    }
                    other => panic!("login as {role}: unsupported auth request {other}"),
                }
            }
            b'E' => panic!("login as {role} refused: {:?}", m.field(b'M')),
            b'Z' => return raw,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What a client received.

/// One ErrorResponse as the client saw it.
#[derive(Debug, Clone)]
pub struct PgErr {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl PgErr {
    /// tokengate's refusal: SQLSTATE 42501, `tokengate TG1xx ...`, with a hint.
    pub fn is_refusal(&self) -> bool {
        self.code == "42501"
            && self.message.starts_with("tokengate TG1")
            && self.hint.as_deref().is_some_and(|h| !h.trim().is_empty())
    }
}

/// Everything a client received for one attempt.
#[derive(Debug, Default)]
pub struct Seen {
    /// Each received value (row field, error field, notice, COPY field...) with where it came
    /// from.
    pub values: Vec<(String, Vec<u8>)>,
    /// The raw byte stream (raw client only), searched as a whole too.
    pub raw: Vec<u8>,
    pub errors: Vec<PgErr>,
    pub rows: usize,
    pub copy_messages: usize,
    pub notices: usize,
    /// Row-description state for decoding binary dates in raw DataRows: (type oid, format).
    columns: Vec<(u32, i16)>,
}

/// Binary DATE: days since 2000-01-01, as `YYYY-MM-DD`.
pub fn date_from_binary(raw: &[u8]) -> Option<String> {
    let days = i32::from_be_bytes(raw.try_into().ok()?);
    // Howard Hinnant's civil_from_days, from 1970-01-01.
    let z = i64::from(days) + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

/// Any value as raw bytes, whatever its type (binary results).
struct AnyValue(Vec<u8>);

impl<'a> FromSql<'a> for AnyValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AnyValue(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

impl Seen {
    pub fn push(&mut self, place: &str, bytes: impl Into<Vec<u8>>) {
        self.values.push((place.to_string(), bytes.into()));
    }

    pub fn refused(&self) -> bool {
        self.errors.iter().any(PgErr::is_refusal)
    }

    pub fn error(&mut self, e: &tokio_postgres::Error) {
        match e.as_db_error() {
            Some(db) => {
                let mut text = db.message().as_bytes().to_vec();
                for part in [db.detail(), db.hint(), db.where_()].into_iter().flatten() {
                    text.push(b'\n');
                    text.extend_from_slice(part.as_bytes());
                }
                self.push("ErrorResponse", text);
                self.errors.push(PgErr {
                    code: db.code().code().to_string(),
                    message: db.message().to_string(),
                    hint: db.hint().map(str::to_string),
                });
            }
            None => {
                self.push("client error", e.to_string());
                self.errors.push(PgErr {
                    code: "client".into(),
                    message: e.to_string(),
                    hint: None,
                });
            }
        }
    }

    /// A simple-protocol query through tokio-postgres, streaming so rows sent before an error
    /// are kept.
    pub async fn simple(&mut self, s: &mut Session, sql: &str) {
        use futures_util::StreamExt;
        match s.client.simple_query_raw(sql).await {
            Err(e) => self.error(&e),
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(SimpleQueryMessage::Row(row)) => {
                            self.rows += 1;
                            for i in 0..row.len() {
                                if let Some(v) = row.get(i) {
                                    self.push("DataRow (simple)", v);
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.error(&e);
                            break;
                        }
                    }
                }
            }
        }
        s.drain_notices(self);
    }

    /// Rows from an extended-protocol query (binary results), streaming.
    pub async fn absorb_rows(&mut self, stream: tokio_postgres::RowStream) {
        use futures_util::StreamExt;
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(row) => self.row(&row, "DataRow (binary)"),
                Err(e) => {
                    self.error(&e);
                    break;
                }
            }
        }
    }

    pub fn row(&mut self, row: &tokio_postgres::Row, place: &str) {
        self.rows += 1;
        for (i, col) in row.columns().iter().enumerate() {
            match row.try_get::<_, Option<AnyValue>>(i) {
                Ok(Some(AnyValue(v))) => {
                    if *col.type_() == Type::DATE
                        && let Some(iso) = date_from_binary(&v)
                    {
                        self.push(place, iso);
                    }
                    self.push(place, v);
                }
                Ok(None) => {}
                Err(e) => self.push("decode error", e.to_string()),
            }
        }
    }

    /// Raw protocol messages: every byte is kept, and values are split out for the digit check.
    pub fn absorb(&mut self, msgs: &[Msg]) {
        for m in msgs {
            self.raw.push(m.tag);
            self.raw.extend_from_slice(&m.body);
            match m.tag {
                b'T' => self.columns = row_description(&m.body),
                b'D' => {
                    self.rows += 1;
                    for (i, v) in data_row(&m.body).into_iter().enumerate() {
                        let Some(v) = v else { continue };
                        if self.columns.get(i) == Some(&(1082, 1))
                            && let Some(iso) = date_from_binary(&v)
                        {
                            self.push("DataRow (raw)", iso);
                        }
                        self.push("DataRow (raw)", v);
                    }
                }
                b'd' => {
                    self.copy_messages += 1;
                    self.copy_data(&m.body);
                }
                b'E' | b'N' => {
                    if m.tag == b'N' {
                        self.notices += 1;
                    }
                    for (code, v) in fields(&m.body) {
                        self.push(
                            if m.tag == b'E' {
                                "ErrorResponse"
                            } else {
                                "NoticeResponse"
                            },
                            v,
                        );
                        let _ = code;
                    }
                    if m.tag == b'E' {
                        self.errors.push(PgErr {
                            code: m.field(b'C').unwrap_or_default(),
                            message: m.field(b'M').unwrap_or_default(),
                            hint: m.field(b'H'),
                        });
                    }
                }
                _ => self.push("other message", m.body.clone()),
            }
        }
    }

    /// One CopyData payload (text, CSV or binary COPY).
    pub fn copy_data(&mut self, data: &[u8]) {
        self.push("CopyData", data.to_vec());
        if data.starts_with(b"PGCOPY\n\xff\r\n\0") || !self.binary_copy_fields(data) {
            for piece in data.split(|b| matches!(b, b'\n' | b'\t' | b',' | b'|')) {
                self.push("CopyData field", piece.to_vec());
            }
        }
    }

    /// Splits a binary COPY tuple into fields; 4-byte fields are also read as dates (binary
    /// COPY cases select no other 4-byte column). False when `data` is not a binary tuple.
    fn binary_copy_fields(&mut self, data: &[u8]) -> bool {
        let mut d = data;
        if let Some(rest) = d.strip_prefix(b"PGCOPY\n\xff\r\n\0".as_slice()) {
            if rest.len() < 8 {
                return false;
            }
            d = &rest[8..];
        }
        if d.len() < 2 {
            return false;
        }
        let n = i16::from_be_bytes([d[0], d[1]]);
        if n == -1 {
            return true;
        }
        let mut p = 2usize;
        let mut out = Vec::new();
        for _ in 0..n.max(0) {
            let Some(len) = d.get(p..p + 4) else {
                return false;
            };
            let len = i32::from_be_bytes(len.try_into().unwrap_or_default());
            p += 4;
            if len < 0 {
                continue;
            }
            let Some(v) = d.get(p..p + len as usize) else {
                return false;
            };
            out.push(v.to_vec());
            p += len as usize;
        }
        if p != d.len() {
            return false;
        }
        for v in out {
            if let Some(iso) = (v.len() == 4).then(|| date_from_binary(&v)).flatten() {
                self.push("CopyData (binary)", iso);
            }
            self.push("CopyData (binary)", v);
        }
        true
    }
}

fn row_description(body: &[u8]) -> Vec<(u32, i16)> {
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut p = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        while body[p] != 0 {
            p += 1;
        }
        p += 1 + 4 + 2;
        let oid = u32::from_be_bytes(body[p..p + 4].try_into().unwrap());
        p += 4 + 2 + 4;
        let format = i16::from_be_bytes([body[p], body[p + 1]]);
        p += 2;
        out.push((oid, format));
    }
    out
}

pub fn data_row(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut p = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(body[p..p + 4].try_into().unwrap());
        p += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(body[p..p + len as usize].to_vec()));
            p += len as usize;
        }
    }
    out
}

fn fields(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < body.len() && body[p] != 0 {
        let code = body[p];
        let end = body[p + 1..]
            .iter()
            .position(|b| *b == 0)
            .map_or(body.len(), |e| p + 1 + e);
        out.push((code, body[p + 1..end].to_vec()));
        p = end + 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Raw extended-protocol messages.

pub fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'P', &b)
}

/// Bind with text parameters and one result format for all columns (0 text, 1 binary).
pub fn bind_msg(portal: &str, stmt: &str, params: &[&str], result_format: i16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(portal.as_bytes());
    b.push(0);
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&result_format.to_be_bytes());
    frame(b'B', &b)
}

pub fn describe_portal_msg(portal: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    b.extend_from_slice(portal.as_bytes());
    b.push(0);
    frame(b'D', &b)
}

pub fn execute_msg(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = portal.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(&max_rows.to_be_bytes());
    frame(b'E', &b)
}

pub fn sync_msg() -> Vec<u8> {
    frame(b'S', &[])
}

pub fn flush_msg() -> Vec<u8> {
    frame(b'H', &[])
}

// ---------------------------------------------------------------------------------------------
// The oracle.

/// The kind of a protected value (used in failure messages instead of the value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    FullName,
    Email,
    Phone,
    Ssn,
    BirthDate,
    Card,
    Diagnosis,
    Notes,
}

struct Needle {
    kind: Kind,
    form: &'static str,
    bytes: Vec<u8>,
}

/// Searches received bytes for protected plaintexts: the value in any letter case, reversed,
/// hex, base64, md5/sha256 hex, and for phone/SSN/card numbers the bare digit string (≥ 7 digits)
/// inside a run of digits and separators of nearly the same length.
#[derive(Default)]
pub struct Oracle {
    needles: Vec<Needle>,
    /// Needles matched against the lower-cased haystack, by their first four bytes.
    folded: HashMap<[u8; 4], Vec<usize>>,
    /// Needles matched byte-exactly (base64), by their first four bytes.
    exact: HashMap<[u8; 4], Vec<usize>>,
    digits: HashMap<Vec<u8>, Kind>,
    digit_lens: HashSet<usize>,
}

/// A leak found by the oracle: never the value itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Leak {
    pub kind: Kind,
    pub form: &'static str,
    pub place: String,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({}) in {}", self.kind, self.form, self.place)
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect()
}

fn base64(bytes: &[u8]) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(A[((v >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

fn digits_of(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(u8::is_ascii_digit).collect()
}

impl Oracle {
    pub fn new(secrets: &[(Kind, String)]) -> Oracle {
        let mut o = Oracle::default();
        o.add(secrets);
        o
    }

    /// This oracle plus more secrets (values a test wrote itself).
    pub fn with(&self, extra: &[(Kind, String)]) -> Oracle {
        let mut o = Oracle::default();
        for n in &self.needles {
            o.needle(n.kind, n.form, n.bytes.clone(), n.form == "base64");
        }
        o.digits = self.digits.clone();
        o.digit_lens = self.digit_lens.clone();
        o.add(extra);
        o
    }

    fn needle(&mut self, kind: Kind, form: &'static str, bytes: Vec<u8>, exact: bool) {
        if bytes.len() < 4 {
            return;
        }
        let key: [u8; 4] = bytes[..4].try_into().unwrap();
        let i = self.needles.len();
        self.needles.push(Needle { kind, form, bytes });
        let map = if exact {
            &mut self.exact
        } else {
            &mut self.folded
        };
        map.entry(key).or_default().push(i);
    }

    fn add(&mut self, secrets: &[(Kind, String)]) {
        let mut done = HashSet::new();
        for (kind, value) in secrets {
            if !done.insert((*kind, value.clone())) {
                continue;
            }
            let v = value.as_bytes();
            let lower = value.to_lowercase().into_bytes();
            self.needle(*kind, "plaintext, any case", lower.clone(), false);
            let reversed: Vec<u8> = value
                .to_lowercase()
                .chars()
                .rev()
                .collect::<String>()
                .into();
            self.needle(*kind, "reversed", reversed, false);
            if v.len() >= 6 {
                self.needle(*kind, "hex", hex(v), false);
                // PostgreSQL's encode(.., 'base64') breaks lines at 76 characters.
                let mut b64 = base64(v);
                b64.truncate(76);
                self.needle(*kind, "base64", b64, true);
                let md5 = postgres_protocol::password::md5(v, "");
                self.needle(*kind, "md5", md5.as_bytes()[3..].to_vec(), false);
                use sha2::Digest;
                self.needle(*kind, "sha256", hex(&sha2::Sha256::digest(v)), false);
            }
            if matches!(kind, Kind::Phone | Kind::Ssn | Kind::Card) {
                let d = digits_of(v);
                if d.len() >= 7 {
                    // A phone's national number alone is as good as the whole.
                    if *kind == Kind::Phone && d.len() > 10 {
                        let national = d[d.len() - 10..].to_vec();
                        self.digit_lens.insert(national.len());
                        self.digits.insert(national, *kind);
                    }
                    self.digit_lens.insert(d.len());
                    self.digits.insert(d, *kind);
                }
            }
        }
    }

    fn scan(&self, hay: &[u8], place: &str, out: &mut Vec<Leak>) {
        let folded = hay.to_ascii_lowercase();
        for (map, h) in [(&self.folded, &folded[..]), (&self.exact, hay)] {
            for start in 0..h.len().saturating_sub(3) {
                let key: [u8; 4] = h[start..start + 4].try_into().unwrap();
                let Some(candidates) = map.get(&key) else {
                    continue;
                };
                for &i in candidates {
                    let n = &self.needles[i];
                    if h[start..].starts_with(&n.bytes) {
                        out.push(Leak {
                            kind: n.kind,
                            form: n.form,
                            place: place.to_string(),
                        });
                    }
                }
            }
        }
    }

    fn scan_digits(&self, hay: &[u8], place: &str, out: &mut Vec<Leak>) {
        // Runs of digits joined by the separators phone/SSN/card formats use.
        let mut runs: Vec<Vec<u8>> = Vec::new();
        let mut current = Vec::new();
        for &b in hay {
            if b.is_ascii_digit() {
                current.push(b);
            } else if matches!(b, b'-' | b' ' | b'(' | b')' | b'+' | b'.' | b'/') {
                continue;
            } else if !current.is_empty() {
                runs.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            runs.push(current);
        }
        for run in runs.iter().filter(|r| r.len() >= 7) {
            for &len in &self.digit_lens {
                if run.len() < len || run.len() - len > 3 {
                    continue;
                }
                for window in run.windows(len) {
                    if let Some(kind) = self.digits.get(window) {
                        out.push(Leak {
                            kind: *kind,
                            form: "digits only",
                            place: place.to_string(),
                        });
                    }
                }
            }
        }
    }

    /// Every leak in what was received, de-duplicated.
    pub fn leaks(&self, seen: &Seen) -> Vec<Leak> {
        let mut out = Vec::new();
        for (place, v) in &seen.values {
            self.scan(v, place, &mut out);
            self.scan_digits(v, place, &mut out);
        }
        self.scan(&seen.raw, "raw byte stream", &mut out);
        let mut unique = HashSet::new();
        out.retain(|l| unique.insert(l.clone()));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Expectations.

/// What a restricted role's attempt must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Refused by tokengate (42501, `tokengate TG1..`, with a hint).
    Refused,
    /// Succeeds with rows, protected values rewritten (no error at all).
    Rewritten,
    /// The contract allows either a refusal or rewritten rows; never plaintext.
    Protected,
    /// PostgreSQL itself may refuse (e.g. `SET ROLE` without the grant); only the oracle counts.
    NoLeak,
}

/// Checks one attempt; returns the failure description (never a plaintext) or None.
pub fn judge(name: &str, expect: Expect, seen: &Seen, oracle: &Oracle) -> Option<String> {
    let mut problems = Vec::new();
    let leaks = oracle.leaks(seen);
    if !leaks.is_empty() {
        let mut kinds: Vec<String> = leaks.iter().map(ToString::to_string).collect();
        kinds.sort();
        kinds.dedup();
        kinds.truncate(6);
        problems.push(format!("LEAK {}", kinds.join("; ")));
    }
    // Error texts are shown only when the oracle finds nothing in them (PostgreSQL echoes
    // values in some messages, e.g. RAISE EXCEPTION).
    let describe_errors = || {
        seen.errors
            .iter()
            .map(|e| {
                let mut probe = Seen::default();
                probe.push("error", e.message.clone());
                if oracle.leaks(&probe).is_empty() {
                    format!(
                        "{} {:?}",
                        e.code,
                        e.message.chars().take(80).collect::<String>()
                    )
                } else {
                    format!("{} <message withheld: contains a protected value>", e.code)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match expect {
        Expect::Refused => {
            if !seen.refused() {
                problems.push(format!(
                    "expected a tokengate refusal (42501 TG1 + hint), got {} rows, {} COPY messages, errors [{}]",
                    seen.rows,
                    seen.copy_messages,
                    describe_errors()
                ));
            }
        }
        Expect::Rewritten => {
            if !seen.errors.is_empty() {
                problems.push(format!(
                    "expected rewritten rows, got errors [{}]",
                    describe_errors()
                ));
            } else if seen.rows == 0 && seen.copy_messages == 0 {
                problems.push("expected rewritten rows, got none".into());
            }
        }
        Expect::NoLeak => {}
        Expect::Protected => {
            let refused = seen.refused();
            let clean_rows = seen.errors.is_empty() && (seen.rows > 0 || seen.copy_messages > 0);
            if !refused && !clean_rows {
                problems.push(format!(
                    "expected a refusal or rewritten rows, got {} rows, errors [{}]",
                    seen.rows,
                    describe_errors()
                ));
            }
        }
    }
    (!problems.is_empty()).then(|| format!("[{name}] {}", problems.join(" | ")))
}

/// Fails the test with every failed case listed.
pub fn report(path: &str, total: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{path}: {} of {total} cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn oracle_finds_derived_forms_and_ignores_masks() {
    let o = Oracle::new(&[
        (Kind::Email, "ada.lovelace1@example.com".into()),
        (Kind::Ssn, "123-45-6789".into()),
        (Kind::Phone, "+1 (555) 201-3344".into()),
        (Kind::BirthDate, "1975-03-12".into()),
    ]);
    let leaks = |v: &[u8]| {
        let mut s = Seen::default();
        s.push("test", v.to_vec());
        o.leaks(&s)
    };
    for hit in [
        &b"x ADA.LOVELACE1@EXAMPLE.COM y"[..],
        b"moc.elpmaxe@1ecalevol.ada",
        b"\\x6164612e6c6f76656c61636531406578616d706c652e636f6d",
        b"YWRhLmxvdmVsYWNlMUBleGFtcGxlLmNvbQ==",
        b"123456789",
        b"5552013344",
        b"1975-03-12",
    ] {
        assert!(!leaks(hit).is_empty(), "{:?}", String::from_utf8_lossy(hit));
    }
    for miss in [
        &b"a***@example.com"[..],
        b"***-**-6789",
        b"***********3344",
        b"4111111111111111 123456780",
        b"1975-03-13",
        b"NULL",
    ] {
        assert!(
            leaks(miss).is_empty(),
            "{:?}",
            String::from_utf8_lossy(miss)
        );
    }
    assert_eq!(date_from_binary(&0i32.to_be_bytes()).unwrap(), "2000-01-01");
    assert_eq!(
        date_from_binary(&(-1i32).to_be_bytes()).unwrap(),
        "1999-12-31"
    );
}
