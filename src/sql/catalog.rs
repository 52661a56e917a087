//! The catalog the analyser resolves relations against, and identifier folding.
//!
//! The session implements [`Catalog`] from `pg_catalog` (live, refreshed on DDL); tests and
//! `policy explain` use the in-memory [`StaticCatalog`]. `*` is always expanded from here, never
//! from the policy file, so a column added to a table is seen as soon as the catalog is.

use sqlparser::ast::Ident;
use std::collections::HashMap;

/// Resolves relation names to their columns, as PostgreSQL would.
pub trait Catalog {
    /// Resolves a relation as PostgreSQL would in the session: an unqualified name through the
    /// session's effective search path ([`SearchPath`]: its temp schema first unless placed
    /// elsewhere, then the path in order), `pg_temp` as the session's temp schema. Names arrive
    /// already folded (unquoted → lower case). Return `None` if unknown (or the session's state
    /// is unknown): the analyser then reports the relation as unresolved and the caller refuses.
    fn relation(&self, schema: Option<&str>, name: &str) -> Option<Relation>;

    /// The session's search path, for functions, operators and types (`None`: unknown, so
    /// an unqualified user-defined name cannot be proven to be a built-in: refuse).
    fn search_path(&self) -> Option<&SearchPath> {
        None
    }
}

/// A session's effective search path as the server reports it (`current_schemas(true)`) and
/// its temp schema (`pg_my_temp_schema()`), with PostgreSQL's lookup rules (namespace.c):
/// relations and types search the list in order (it already holds pg_temp_N first and
/// pg_catalog next unless the path places them, `"$user"` expanded, schemas without USAGE
/// left out); functions and operators never search the temp schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchPath {
    schemas: Vec<String>,
    temp: Option<String>,
}

impl SearchPath {
    pub fn new(schemas: Vec<String>, temp: Option<String>) -> Self {
        SearchPath { schemas, temp }
    }

    /// What an offline tool assumes: `pg_catalog, public`.
    pub fn offline() -> Self {
        SearchPath::new(vec!["pg_catalog".into(), "public".into()], None)
    }

    /// Schemas searched for an unqualified relation or type name, in order.
    pub fn relations(&self) -> impl Iterator<Item = &str> {
        self.schemas.iter().map(String::as_str)
    }

    /// Schemas searched for an unqualified function or operator name, in order.
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.schemas
            .iter()
            .map(String::as_str)
            .filter(move |s| Some(*s) != self.temp.as_deref())
    }

    /// The session's temp schema (`pg_temp_N`), once it has one.
    pub fn temp(&self) -> Option<&str> {
        self.temp.as_deref()
    }

    /// The schema an explicit qualifier names: `pg_temp` is the session's temp schema.
    pub fn qualifier<'a>(&'a self, schema: &'a str) -> Option<&'a str> {
        if schema == "pg_temp" {
            self.temp.as_deref()
        } else {
            Some(schema)
        }
    }

    /// A key that differs whenever resolution may differ (analysis caches include it).
    pub fn key(&self) -> String {
        let mut k = self.temp.clone().unwrap_or_default();
        for s in &self.schemas {
            k.push('\u{1}');
            k.push_str(s);
        }
        k
    }
}

/// A relation known to the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    /// Column names in attribute order (dropped columns excluded).
    pub columns: Vec<String>,
    pub kind: RelationKind,
}

/// What a relation is; views are analysed through their definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationKind {
    Table,
    /// `definition` is the view's SELECT, e.g. from `pg_get_viewdef(oid)`.
    View {
        definition: String,
    },
    MaterializedView {
        definition: String,
    },
    /// Foreign tables, sequences, composite types...: columns are taken as stored data.
    Other,
}

/// An in-memory catalog for tests and offline tools.
#[derive(Debug, Clone, Default)]
pub struct StaticCatalog {
    relations: HashMap<(String, String), Relation>,
}

impl StaticCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// The demo CRM schema (`tokengate demo`): customers, payments, visits and the
    /// `customer_contacts` view. Used by tests, benchmarks and examples.
    pub fn demo() -> Self {
        Self::new()
            .with_table(
                "public",
                "customers",
                &[
                    "id",
                    "full_name",
                    "email",
                    "phone",
                    "ssn",
                    "birth_date",
                    "city",
                    "created_at",
                ],
            )
            .with_table(
                "public",
                "payments",
                &["id", "customer_id", "card_number", "amount", "paid_at"],
            )
            .with_table(
                "public",
                "visits",
                &["id", "customer_id", "visit_date", "diagnosis", "notes"],
            )
            .with_view(
                "public",
                "customer_contacts",
                &["id", "name", "email"],
                "SELECT id, full_name AS name, email FROM customers",
            )
    }

    /// Adds a table; column names are stored as given (use lower case for unquoted names).
    pub fn with_table(self, schema: &str, name: &str, columns: &[&str]) -> Self {
        self.with_relation(schema, name, columns, RelationKind::Table)
    }

    pub fn with_view(self, schema: &str, name: &str, columns: &[&str], definition: &str) -> Self {
        let kind = RelationKind::View {
            definition: definition.to_owned(),
        };
        self.with_relation(schema, name, columns, kind)
    }

    pub fn with_relation(
        mut self,
        schema: &str,
        name: &str,
        columns: &[&str],
        kind: RelationKind,
    ) -> Self {
        let relation = Relation {
            schema: schema.to_owned(),
            name: name.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            kind,
        };
        self.relations
            .insert((schema.to_owned(), name.to_owned()), relation);
        self
    }
}

impl Catalog for StaticCatalog {
    fn relation(&self, schema: Option<&str>, name: &str) -> Option<Relation> {
        match schema {
            Some(schema) => self
                .relations
                .get(&(schema.to_owned(), name.to_owned()))
                .cloned(),
            // The offline search path: pg_catalog first (PostgreSQL's implicit rule), then public.
            None => ["pg_catalog", "public"].iter().find_map(|schema| {
                self.relations
                    .get(&((*schema).to_owned(), name.to_owned()))
                    .cloned()
            }),
        }
    }
}

/// Folds an identifier as PostgreSQL does: unquoted → lower case, quoted → unchanged.
pub fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_schema_is_searched_for_relations_only() {
        let p = SearchPath::new(
            vec![
                "pg_temp_3".into(),
                "pg_catalog".into(),
                "bob".into(),
                "public".into(),
            ],
            Some("pg_temp_3".into()),
        );
        assert_eq!(
            p.relations().collect::<Vec<_>>(),
            ["pg_temp_3", "pg_catalog", "bob", "public"]
        );
        assert_eq!(
            p.functions().collect::<Vec<_>>(),
            ["pg_catalog", "bob", "public"]
        );
        assert_eq!(p.qualifier("pg_temp"), Some("pg_temp_3"));
        assert_eq!(p.qualifier("public"), Some("public"));
        assert_ne!(p.key(), SearchPath::offline().key());
        assert_eq!(SearchPath::offline().qualifier("pg_temp"), None);
    }
}
