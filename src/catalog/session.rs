//! A catalog snapshot seen through one session's name-resolution state: what the analyser
//! resolves against in the proxy. With no known search path (not read yet, or a statement may
//! have changed it), unqualified names resolve to nothing, so the statement is refused.
use super::snapshot::Snapshot;
use crate::plan::PlanCatalog;
use crate::policy::RoleView;
use crate::sql::{Catalog, SearchPath};

pub struct SessionCatalog<'a> {
    pub snapshot: &'a Snapshot,
    pub path: Option<&'a SearchPath>,
}

impl SessionCatalog<'_> {
    /// An unqualified name in `sql` that may resolve to a function, operator or type a user
    /// defined in a schema of the session's search path (other than pg_catalog): overload
    /// resolution can prefer it over a built-in of the same name, and a path that lists it
    /// before pg_catalog shadows the built-in outright. Conservative: any identifier or
    /// operator spelling in the text counts (a false hit refuses; a miss could run user code).
    pub fn shadowing_name(&self, sql: &str) -> Option<(String, String)> {
        let path = self.path?;
        for schema in path.relations().filter(|s| *s != "pg_catalog") {
            let Some(names) = self.snapshot.routines_in(schema) else {
                continue;
            };
            if let Some(name) = names.iter().find(|n| mentions(sql, n)) {
                return Some((schema.to_string(), name.clone()));
            }
        }
        None
    }
}

/// Whether `sql` spells `name`: as a whole identifier (any case) for word-like names, as a
/// substring for operators.
fn mentions(sql: &str, name: &str) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let (s, n) = (sql.as_bytes(), name.as_bytes());
    if n.is_empty() || n.len() > s.len() {
        return false;
    }
    if !n.iter().all(|&c| ident(c)) {
        return sql.contains(name);
    }
    (0..=s.len() - n.len()).any(|i| {
        s[i..i + n.len()].eq_ignore_ascii_case(n)
            && (i == 0 || !ident(s[i - 1]))
            && s.get(i + n.len()).is_none_or(|&c| !ident(c))
    })
}

impl Catalog for SessionCatalog<'_> {
    fn relation(&self, schema: Option<&str>, name: &str) -> Option<crate::sql::Relation> {
        let path = self.path?;
        match schema {
            Some(schema) => {
                let schema = path.qualifier(schema)?;
                Catalog::relation(self.snapshot, Some(schema), name)
            }
            None => path
                .relations()
                .find_map(|schema| Catalog::relation(self.snapshot, Some(schema), name)),
        }
    }

    fn search_path(&self) -> Option<&SearchPath> {
        self.path
    }
}

impl PlanCatalog for SessionCatalog<'_> {
    fn column_type(&self, qualified: &str) -> Option<u32> {
        self.snapshot.column_type(qualified)
    }
    fn has_protected_column(&self, table: &str, view: &RoleView) -> bool {
        self.snapshot.has_protected_column(table, view)
    }
    fn differently_labelled_relative(&self, qualified: &str, view: &RoleView) -> Option<String> {
        self.snapshot.differently_labelled_relative(qualified, view)
    }
    fn table_columns(&self, table: &str) -> Vec<String> {
        self.snapshot.table_columns(table)
    }
    fn relative_column(&self, qualified: &str) -> Option<String> {
        self.snapshot.relative_column(qualified)
    }
    fn has_inheritance(&self) -> bool {
        self.snapshot.has_inheritance()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Relation, RelationKind};

    fn rel(oid: u32, schema: &str, name: &str, kind: RelationKind) -> Relation {
        Relation {
            oid,
            schema: schema.into(),
            name: name.into(),
            kind,
            columns: vec![Column {
                attnum: 1,
                name: "email".into(),
                type_oid: 25,
            }],
            definition: (kind == RelationKind::View)
                .then(|| "SELECT ssn AS email FROM public.customers".to_string()),
        }
    }

    #[test]
    fn relations_resolve_through_the_sessions_path() {
        let s = Snapshot::build(
            1,
            vec![
                rel(1, "public", "customers", RelationKind::Table),
                rel(2, "pg_temp_3", "customers", RelationKind::View),
                rel(3, "bob", "customers", RelationKind::View),
            ],
            vec![],
        );
        let temp = SearchPath::new(
            vec!["pg_temp_3".into(), "pg_catalog".into(), "public".into()],
            Some("pg_temp_3".into()),
        );
        let c = SessionCatalog {
            snapshot: &s,
            path: Some(&temp),
        };
        assert_eq!(c.relation(None, "customers").unwrap().schema, "pg_temp_3");
        assert_eq!(
            c.relation(Some("pg_temp"), "customers").unwrap().schema,
            "pg_temp_3"
        );
        assert_eq!(
            c.relation(Some("public"), "customers").unwrap().schema,
            "public"
        );
        let user = SearchPath::new(
            vec!["pg_catalog".into(), "bob".into(), "public".into()],
            None,
        );
        let c = SessionCatalog {
            snapshot: &s,
            path: Some(&user),
        };
        assert_eq!(c.relation(None, "customers").unwrap().schema, "bob");
        assert!(c.relation(Some("pg_temp"), "customers").is_none());
        let unknown = SessionCatalog {
            snapshot: &s,
            path: None,
        };
        assert!(unknown.relation(None, "customers").is_none());
        assert!(unknown.shadowing_name("SELECT lower(x)").is_none());
        assert!(unknown.relation(Some("public"), "customers").is_none());
    }
}

#[cfg(test)]
mod shadow_tests {
    use super::*;

    #[test]
    fn user_routines_on_the_path_are_found_in_the_text() {
        let mut s = Snapshot::build(1, vec![], vec![]);
        s.add_routines(
            [
                ("attack".to_string(), "lower".to_string()),
                ("attack".to_string(), "===".to_string()),
                ("elsewhere".to_string(), "upper".to_string()),
            ]
            .into_iter(),
        );
        let path = SearchPath::new(vec!["pg_catalog".into(), "attack".into()], None);
        let c = SessionCatalog {
            snapshot: &s,
            path: Some(&path),
        };
        assert_eq!(
            c.shadowing_name("SELECT LOWER(city) FROM t"),
            Some(("attack".into(), "lower".into()))
        );
        assert!(c.shadowing_name("SELECT a === b").is_some());
        assert!(
            c.shadowing_name("SELECT upper(city), lowered FROM t")
                .is_none()
        );
        let clean = SearchPath::new(vec!["pg_catalog".into(), "public".into()], None);
        let c = SessionCatalog {
            snapshot: &s,
            path: Some(&clean),
        };
        assert!(c.shadowing_name("SELECT lower(city)").is_none());
    }
}
