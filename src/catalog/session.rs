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
        assert!(unknown.relation(Some("public"), "customers").is_none());
    }
}
