//! The catalog the analyser resolves relations against, and identifier folding.
//!
//! The session implements [`Catalog`] from `pg_catalog` (live, refreshed on DDL); tests and
//! `policy explain` use the in-memory [`StaticCatalog`]. `*` is always expanded from here, never
//! from the policy file, so a column added to a table is seen as soon as the catalog is.

use sqlparser::ast::Ident;
use std::collections::HashMap;

/// Resolves relation names to their columns, as PostgreSQL would.
pub trait Catalog {
    /// Resolves a relation; when `schema` is `None`, in `pg_catalog` then `public` (a session's
    /// own `search_path` and `"$user"` are not followed). Names arrive already folded (unquoted → lower case). Return `None`
    /// if unknown: the analyser then reports the relation as unresolved and the caller refuses.
    fn relation(&self, schema: Option<&str>, name: &str) -> Option<Relation>;
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
            // Search path: pg_catalog first (PostgreSQL's implicit rule), then public.
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
