//! `tokengate policy check` and `tokengate policy explain`: flags, database look-ups and
//! printing. The decisions themselves come from [`crate::policy`].
use crate::net::direct::DirectError;
use crate::policy::detect::{CatalogColumn, is_text_type, lint_catalog, quote_ident};
use crate::policy::model::StatementKind;
use crate::policy::{Action, Policy, RoleView};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// How many values `check --upstream` samples per text column.
const SAMPLE_ROWS: i64 = 50;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file (every error, with file:line:column); with --upstream, also
    /// report labelled columns that don't exist and unlabelled columns that look sensitive.
    Check(CheckArgs),
    /// Show what a role gets: every labelled column's decision and the rule behind it; with a
    /// statement, whether tokengate would run it (exit 0) or refuse it (exit 1).
    Explain(ExplainArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The policy file.
    pub file: PathBuf,
    /// A PostgreSQL URL to check the policy against (e.g. postgres://user@host/db).
    #[arg(long, env = "TOKENGATE_UPSTREAM")]
    pub upstream: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The policy file.
    #[arg(long)]
    pub policy: PathBuf,
    /// The login role.
    #[arg(long)]
    pub role: String,
    /// Groups the role belongs to, comma-separated (transitively).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Look the role's group memberships up in this database instead of --groups.
    #[arg(long)]
    pub upstream: Option<String>,
    /// A SQL statement: prints each output column's lineage and decision, each use of a
    /// protected column, and whether tokengate would refuse it (needs --upstream).
    pub sql: Option<String>,
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Explain(args) => explain(args),
    }
}

fn load_or_print(file: &std::path::Path) -> Option<Policy> {
    match Policy::load(file) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let Some(policy) = load_or_print(&args.file) else {
        return ExitCode::FAILURE;
    };
    println!(
        "{}: valid ({} labels, {} columns, {} roles)",
        args.file.display(),
        policy.labels().len(),
        policy.columns().len(),
        policy.roles().len()
    );
    let Some(url) = args.upstream else {
        return ExitCode::SUCCESS;
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let catalog = match rt.block_on(fetch_catalog(&url)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "cannot read the catalog from the upstream {}: {e}",
                crate::net::pg_error::address_of(&url)
            );
            return ExitCode::FAILURE;
        }
    };
    let at_rest_ready = match rt.block_on(report_at_rest(&policy, &url)) {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!(
                "cannot read the state of the columns stored as tokens from the upstream {}: {e}",
                crate::net::pg_error::address_of(&url)
            );
            return ExitCode::FAILURE;
        }
    };
    let edges = match rt.block_on(fetch_inheritance(&url)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "cannot read the inheritance of tables from the upstream {}: {e}",
                crate::net::pg_error::address_of(&url)
            );
            return ExitCode::FAILURE;
        }
    };
    let mut findings = lint_catalog(&policy, &catalog);
    findings.extend(crate::policy::detect::lint_inheritance(
        &policy, &catalog, &edges,
    ));
    if findings.is_empty() {
        println!("upstream: {} columns checked, no findings", catalog.len());
        return if at_rest_ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    println!(
        "upstream: {} columns checked, {} finding(s); suggested additions under columns:",
        catalog.len(),
        findings.len()
    );
    for f in &findings {
        println!("{}", f.render());
    }
    ExitCode::FAILURE
}

/// Prints each column stored as tokens with its recorded state and key version; false when
/// one is not usable through tokengate yet (never migrated, migrating, rekeying, or made
/// under another label).
async fn report_at_rest(policy: &Policy, url: &str) -> Result<bool, DirectError> {
    let Ok(columns) = crate::atrest::columns(policy, None) else {
        return Ok(true);
    };
    if columns.is_empty() {
        return Ok(true);
    }
    let client = connect(url).await?;
    let states = crate::catalog::at_rest::load_states(&client).await?;
    let mut ready = true;
    for c in &columns {
        let name = c.qualified();
        let line = match states.get(&name) {
            None => {
                ready = false;
                format!(
                    "plaintext (never migrated; refused through tokengate until `tokengate migrate --column {name}`)"
                )
            }
            Some(s) if s.label != c.label || s.token_format != c.format => {
                ready = false;
                format!(
                    "{}, but made under label {} (token format {}) where the policy says {} ({}): refused",
                    s.describe(),
                    s.label,
                    s.token_format,
                    c.label,
                    c.format
                )
            }
            Some(s) => {
                if s.phase != crate::catalog::Phase::Tokenized {
                    ready = false;
                }
                s.describe()
            }
        };
        println!("at rest: {name}: {line}");
    }
    Ok(ready)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, DirectError> {
    let (client, _driver) = crate::net::direct::connect(url, "tokengate-policy").await?;
    Ok(client)
}

/// Every user column, with up to [`SAMPLE_ROWS`] non-null values of the text-like ones.
async fn fetch_catalog(url: &str) -> Result<Vec<CatalogColumn>, DirectError> {
    let client = connect(url).await?;
    let rows = client
        .query(
            "SELECT c.table_schema::text, c.table_name::text, c.column_name::text, c.data_type::text
               FROM information_schema.columns c
               JOIN information_schema.tables t
                 ON t.table_schema = c.table_schema AND t.table_name = c.table_name
              WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema', 'tokengate')
                AND c.table_schema NOT LIKE 'pg\\_toast%'
                AND t.table_type IN ('BASE TABLE', 'VIEW')
              ORDER BY 1, 2, c.ordinal_position",
            &[],
        )
        .await?;
    let mut catalog = Vec::with_capacity(rows.len());
    for row in rows {
        let mut col = CatalogColumn {
            schema: row.try_get(0)?,
            table: row.try_get(1)?,
            column: row.try_get(2)?,
            data_type: row.try_get(3)?,
            samples: Vec::new(),
        };
        if is_text_type(&col.data_type) {
            // Identifiers always quoted: names come from the catalog, not from the user.
            let sql = format!(
                "SELECT {c}::text FROM {s}.{t} WHERE {c} IS NOT NULL LIMIT {SAMPLE_ROWS}",
                c = quote_ident(&col.column),
                s = quote_ident(&col.schema),
                t = quote_ident(&col.table),
            );
            match client.query(sql.as_str(), &[]).await {
                Ok(sample_rows) => {
                    col.samples = sample_rows
                        .iter()
                        .filter_map(|r| r.try_get::<_, String>(0).ok())
                        .collect();
                }
                // No SELECT privilege on one table should not stop the whole check.
                Err(e) => eprintln!(
                    "warning: cannot sample {}.{}.{}: {e}",
                    col.schema, col.table, col.column
                ),
            }
        }
        catalog.push(col);
    }
    Ok(catalog)
}

/// The `(child, parent)` tables of `pg_inherits` (inheritance and partitions).
async fn fetch_inheritance(
    url: &str,
) -> Result<Vec<crate::policy::detect::InheritEdge>, DirectError> {
    let client = connect(url).await?;
    let rows = client
        .query(
            "SELECT cn.nspname::text, c.relname::text, pn.nspname::text, p.relname::text
               FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_namespace cn ON cn.oid = c.relnamespace
               JOIN pg_class p ON p.oid = i.inhparent
               JOIN pg_namespace pn ON pn.oid = p.relnamespace",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                (r.try_get(0)?, r.try_get(1)?),
                (r.try_get(2)?, r.try_get(3)?),
            ))
        })
        .collect()
}

/// The groups `role` belongs to, directly or through other groups.
async fn fetch_groups(url: &str, role: &str) -> Result<Vec<String>, DirectError> {
    let client = connect(url).await?;
    let rows = client
        .query(
            "WITH RECURSIVE m(roleid) AS (
                 SELECT oid FROM pg_roles WHERE rolname = $1
               UNION
                 SELECT a.roleid FROM pg_auth_members a JOIN m ON a.member = m.roleid)
             SELECT r.rolname::text FROM m JOIN pg_roles r ON r.oid = m.roleid
              WHERE r.rolname <> $1 ORDER BY 1",
            &[&role],
        )
        .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

fn explain(args: ExplainArgs) -> ExitCode {
    let Some(policy) = load_or_print(&args.policy) else {
        return ExitCode::FAILURE;
    };
    let mut groups = args.groups.clone();
    let mut snapshot = None;
    if let Some(url) = &args.upstream {
        let Some(rt) = runtime() else {
            return ExitCode::FAILURE;
        };
        let loaded = rt.block_on(async {
            let found = fetch_groups(url, &args.role).await?;
            let client = connect(url).await?;
            let snap = crate::catalog::load_snapshot(&client, 1).await?;
            Ok::<_, DirectError>((found, snap))
        });
        match loaded {
            Ok((found, snap)) => {
                groups.extend(found);
                snapshot = Some(snap);
            }
            Err(e) => {
                eprintln!(
                    "cannot read the catalog from the upstream {}: {e}",
                    crate::net::pg_error::address_of(url)
                );
                return ExitCode::FAILURE;
            }
        }
    }
    groups.retain(|g| !g.is_empty());
    let view = policy.for_role(&args.role, &groups);
    print!("{}", role_table(&policy, &args.role, &groups, &view));
    if let Some(sql) = &args.sql {
        println!();
        match &snapshot {
            Some(snap) => {
                let (text, refused) = explain_statement(sql, &view, snap);
                print!("{text}");
                // Scripts and CI can test a statement: refused is a failure.
                if refused {
                    return ExitCode::FAILURE;
                }
            }
            None => {
                println!(
                    "statement: {sql}\nnote: per-statement analysis needs --upstream: the live catalog \
                     expands * and resolves every column and view."
                );
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

/// What tokengate would do with `sql` for this role: the same planning the proxy runs. The
/// flag says whether any statement is refused.
pub fn explain_statement(
    sql: &str,
    view: &RoleView,
    catalog: &crate::catalog::Snapshot,
) -> (String, bool) {
    use crate::plan::{NamedPlans, plan_statement};
    let mut out = String::new();
    let mut refused = false;
    let mut named = NamedPlans::default();
    for (i, a) in crate::sql::analyze(sql, catalog).iter().enumerate() {
        out.push_str(&format!("statement {}: {:?}\n", i + 1, a.kind));
        match plan_statement(a, view, catalog, &named) {
            Err(r) => {
                refused = true;
                out.push_str(&format!(
                    "  REFUSED {} (SQLSTATE {}): {}\n  hint: {}\n",
                    r.code.id(),
                    r.code.sqlstate(),
                    r.message,
                    r.code.hint()
                ));
            }
            Ok(plan) => {
                if let Some((_, name)) = &plan.names {
                    named.cursors.insert(name.clone(), plan.result.clone());
                    named.prepared.insert(name.clone(), plan.result.clone());
                }
                for (idx, o) in a.outputs.iter().enumerate() {
                    let protected = plan.result.as_ref().and_then(|r| r.protected_at(idx));
                    let allowed_by = o.sources.iter().find_map(|s| {
                        let d = view.column(&s.column)?;
                        let a = s
                            .allowance
                            .filter(|_| !s.passthrough && d.action != Action::Clear)?;
                        Some(format!("{} allowed ({})", a.as_str(), d.derived_rule))
                    });
                    let decision = match (protected, allowed_by) {
                        (Some(p), _) => format!("{} ({})", p.decision.action, p.decision.rule),
                        (None, Some(why)) => why,
                        (None, None) => "clear".to_string(),
                    };
                    let sources: Vec<String> = o
                        .sources
                        .iter()
                        .map(|s| {
                            if s.passthrough {
                                s.column.clone()
                            } else {
                                format!("{} via {}", s.column, s.via.as_deref().unwrap_or("?"))
                            }
                        })
                        .collect();
                    out.push_str(&format!(
                        "  column {} {:?} <- [{}]: {decision}\n",
                        idx + 1,
                        o.name,
                        sources.join(", ")
                    ));
                }
                for u in &a.uses {
                    let verdict = match view.column(&u.column) {
                        Some(d) if d.action != Action::Clear => match u.allowance {
                            Some(a) if d.allows(a) => {
                                format!("{} allowed ({})", a.as_str(), d.derived_rule)
                            }
                            _ => format!("allowed ({})", d.filter_rule),
                        },
                        _ => "unprotected".to_string(),
                    };
                    let how = if u.direct {
                        ""
                    } else {
                        " (an expression over it)"
                    };
                    out.push_str(&format!(
                        "  use {}{how} in {:?}: {verdict}\n",
                        u.column, u.clause
                    ));
                }
                if let Some((rows, rule)) = plan.result.as_ref().and_then(|r| r.row_limit.clone()) {
                    out.push_str(&format!("  row limit {rows} ({rule})\n"));
                }
                out.push_str("  ALLOWED\n");
            }
        }
    }
    (out, refused)
}

/// The role's decisions as text: header lines, then one row per labelled column.
pub fn role_table(policy: &Policy, role: &str, groups: &[String], view: &RoleView) -> String {
    let mut out = String::new();
    let groups_text = if groups.is_empty() {
        "none".to_string()
    } else {
        groups.join(", ")
    };
    let matched = if view.matched_rules().is_empty() {
        "none (every labelled column is denied)".to_string()
    } else {
        view.matched_rules().join(", ")
    };
    out.push_str(&format!("policy:     {}\n", policy.source()));
    out.push_str(&format!("role:       {role} (groups: {groups_text})\n"));
    out.push_str(&format!("rules:      {matched}\n"));
    out.push_str(&format!(
        "enforce:    {} ({})\n",
        if view.enforce() {
            "yes"
        } else {
            "no, monitor-only"
        },
        view.enforce_rule()
    ));
    out.push_str(&format!(
        "row limit:  {}\n",
        view.row_limit_rule()
            .map(|l| format!("{} ({})", l.rows, l.rule))
            .unwrap_or_else(|| "none".into())
    ));
    let denied: Vec<String> = StatementKind::ALL
        .into_iter()
        .filter_map(|k| view.statement_rule(k).map(|r| format!("{k} ({r})")))
        .collect();
    out.push_str(&format!(
        "statements: {}\n",
        if denied.is_empty() {
            "all allowed".to_string()
        } else {
            format!("denied: {}", denied.join(", "))
        }
    ));
    out.push_str(&format!(
        "fully clear: {}\n\n",
        if view.fully_clear() {
            "yes (SQL analysis can be skipped)"
        } else {
            "no"
        }
    ));

    let mut rows: Vec<[String; 6]> = view
        .columns()
        .map(|d| {
            let how = match d.action {
                Action::Token => d.token.as_ref().map(|t| t.to_string()).unwrap_or_default(),
                Action::Mask => d.mask.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                _ => String::new(),
            };
            let filter = if d.may_filter { "yes" } else { "no" };
            [
                d.column.to_string(),
                format!("{} ({})", d.label, d.class),
                d.action.to_string(),
                how,
                filter.to_string(),
                d.rule.to_string(),
            ]
        })
        .collect();
    rows.sort();
    let header = ["COLUMN", "LABEL", "ACTION", "FORMAT", "FILTER", "RULE"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no labelled columns)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_table_lists_every_labelled_column_with_its_rule() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.yaml");
        let policy = Policy::load(&path).unwrap();
        let view = policy.for_role("auditor", &[]);
        let table = role_table(&policy, "auditor", &[], &view);
        assert!(
            table.contains("row limit:  1000 (roles.auditor.row_limit (demo.yaml:"),
            "{table}"
        );
        assert!(
            table.contains("denied: insert (roles.auditor.statements"),
            "{table}"
        );
        assert!(table.contains("copy (roles.auditor.statements"), "{table}");
        let email = table
            .lines()
            .find(|l| l.starts_with("public.customers.email"))
            .unwrap();
        assert!(email.contains("token"), "{email}");
        assert!(
            email.contains("roles.auditor.default (demo.yaml:"),
            "{email}"
        );
        assert_eq!(
            table.lines().filter(|l| l.starts_with("public.")).count(),
            8
        );
    }
}
