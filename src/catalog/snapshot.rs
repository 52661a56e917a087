//! An immutable picture of one database's catalog, built from rows. Pure: no I/O.
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    Table,
    View,
    MaterializedView,
    /// Partitioned and foreign tables, sequences' relatives: read like tables.
    Other,
}

impl RelationKind {
    /// From `pg_class.relkind`.
    pub fn from_relkind(c: u8) -> Self {
        match c {
            b'r' | b'p' => RelationKind::Table,
            b'v' => RelationKind::View,
            b'm' => RelationKind::MaterializedView,
            _ => RelationKind::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub attnum: i16,
    pub name: String,
    pub type_oid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub kind: RelationKind,
    /// Visible columns in attnum order.
    pub columns: Vec<Column>,
    /// `pg_get_viewdef` for views and materialized views.
    pub definition: Option<String>,
}

impl Relation {
    /// `schema.table.column`, the spelling policies use.
    pub fn qualified(&self, column: &str) -> String {
        format!("{}.{}.{}", self.schema, self.name, column)
    }

    pub fn column(&self, attnum: i16) -> Option<&Column> {
        self.columns.iter().find(|c| c.attnum == attnum)
    }
}

/// One database's catalog plus the cluster's role memberships.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    by_name: HashMap<(String, String), Arc<Relation>>,
    by_oid: HashMap<u32, Arc<Relation>>,
    groups: HashMap<String, Vec<String>>,
    /// Names of functions, operators and types outside pg_catalog, by schema.
    routines: HashMap<String, std::collections::HashSet<String>>,
    /// `pg_inherits` edges, both ways: a relation's parents and children.
    inheritance: HashMap<u32, Vec<u32>>,
}

/// Schemas searched for an unqualified name, in order. tokengate does not follow a session's
/// own `search_path`: a name it cannot resolve here is unknown, and unknown fails closed.
pub const SEARCH_PATH: &[&str] = &["pg_catalog", "public"];

impl Snapshot {
    /// Builds a snapshot. `memberships` are (member, group) pairs, already transitive.
    pub fn build(
        generation: u64,
        relations: Vec<Relation>,
        memberships: Vec<(String, String)>,
    ) -> Self {
        let mut s = Snapshot {
            generation,
            ..Snapshot::default()
        };
        for r in relations {
            let r = Arc::new(r);
            s.by_oid.insert(r.oid, r.clone());
            s.by_name.insert((r.schema.clone(), r.name.clone()), r);
        }
        for (member, group) in memberships {
            let groups = s.groups.entry(member).or_default();
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        s
    }

    /// This snapshot without the relations known under a `hidden` name but with another oid
    /// (`(oid, schema, name)`: the name now belongs to another relation), plus `extra`
    /// relations (each replacing any relation of the same name):
    /// what one session sees inside a transaction that created them (their catalog rows are
    /// not committed, so the metadata connection cannot see them).
    pub fn with_relations(&self, extra: &[Relation], hidden: &[(u32, String, String)]) -> Snapshot {
        let mut s = Snapshot {
            generation: self.generation,
            by_name: self.by_name.clone(),
            by_oid: self.by_oid.clone(),
            groups: self.groups.clone(),
            routines: self.routines.clone(),
            inheritance: self.inheritance.clone(),
        };
        for (oid, schema, name) in hidden {
            let key = (schema.clone(), name.clone());
            if s.by_name.get(&key).is_some_and(|r| r.oid != *oid)
                && let Some(r) = s.by_name.remove(&key)
            {
                s.by_oid.remove(&r.oid);
            }
        }
        for r in extra {
            let r = Arc::new(r.clone());
            s.by_oid.insert(r.oid, r.clone());
            s.by_name.insert((r.schema.clone(), r.name.clone()), r);
        }
        s
    }

    /// Records functions, operators and types defined outside pg_catalog: (schema, name).
    pub fn add_routines(&mut self, routines: impl Iterator<Item = (String, String)>) {
        for (schema, name) in routines {
            self.routines.entry(schema).or_default().insert(name);
        }
    }

    /// Records inheritance and partitioning edges `(child, parent)` from `pg_inherits`.
    pub fn add_inheritance(&mut self, edges: impl Iterator<Item = (u32, u32)>) {
        for (child, parent) in edges {
            self.inheritance.entry(child).or_default().push(parent);
            self.inheritance.entry(parent).or_default().push(child);
        }
    }

    /// The other relations of `oid`'s inheritance family: every relation connected to it by
    /// `pg_inherits` edges (parents, children, their partitions and siblings).
    pub fn family(&self, oid: u32) -> Vec<&Arc<Relation>> {
        let mut seen = std::collections::HashSet::from([oid]);
        let mut todo = vec![oid];
        let mut out = Vec::new();
        while let Some(next) = todo.pop() {
            for &other in self.inheritance.get(&next).into_iter().flatten() {
                if seen.insert(other) {
                    todo.push(other);
                    if let Some(r) = self.by_oid.get(&other) {
                        out.push(r);
                    }
                }
            }
        }
        out
    }

    /// Whether any relation inherits or is inherited.
    pub fn has_inheritance(&self) -> bool {
        !self.inheritance.is_empty()
    }

    /// The user-defined function, operator or type names in `schema`.
    pub fn routines_in(&self, schema: &str) -> Option<&std::collections::HashSet<String>> {
        self.routines.get(schema)
    }

    /// A relation by schema (or the search path) and name, in catalog spelling.
    pub fn relation(&self, schema: Option<&str>, name: &str) -> Option<&Arc<Relation>> {
        match schema {
            Some(schema) => self.by_name.get(&(schema.to_string(), name.to_string())),
            None => SEARCH_PATH
                .iter()
                .find_map(|s| self.by_name.get(&(s.to_string(), name.to_string()))),
        }
    }

    /// The column RowDescription names by `(table_oid, attnum)`: its qualified name and type.
    pub fn column_by_oid(&self, table_oid: u32, attnum: i16) -> Option<(String, u32)> {
        let r = self.by_oid.get(&table_oid)?;
        let c = r.column(attnum)?;
        Some((r.qualified(&c.name), c.type_oid))
    }

    /// The type of `schema.table.column`, if known.
    pub fn column_type(&self, qualified: &str) -> Option<u32> {
        let mut parts = qualified.splitn(3, '.');
        let (schema, table, column) = (parts.next()?, parts.next()?, parts.next()?);
        let r = self.relation(Some(schema), table)?;
        r.columns
            .iter()
            .find(|c| c.name == column)
            .map(|c| c.type_oid)
    }

    /// Every group `role` belongs to, directly or through other groups.
    pub fn groups_of(&self, role: &str) -> &[String] {
        self.groups.get(role).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn relations(&self) -> impl Iterator<Item = &Arc<Relation>> {
        self.by_oid.values()
    }
}

/// The SQL analyser resolves relations against the live catalog.
impl crate::sql::Catalog for Snapshot {
    fn relation(&self, schema: Option<&str>, name: &str) -> Option<crate::sql::Relation> {
        let r = Snapshot::relation(self, schema, name)?;
        let kind = match (r.kind, &r.definition) {
            (RelationKind::View, Some(d)) => crate::sql::RelationKind::View {
                definition: d.clone(),
            },
            (RelationKind::MaterializedView, Some(d)) => {
                crate::sql::RelationKind::MaterializedView {
                    definition: d.clone(),
                }
            }
            (RelationKind::Table, _) => crate::sql::RelationKind::Table,
            _ => crate::sql::RelationKind::Other,
        };
        Some(crate::sql::Relation {
            schema: r.schema.clone(),
            name: r.name.clone(),
            columns: r.columns.iter().map(|c| c.name.clone()).collect(),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customers() -> Relation {
        Relation {
            oid: 16400,
            schema: "public".into(),
            name: "customers".into(),
            kind: RelationKind::Table,
            columns: vec![
                Column {
                    attnum: 1,
                    name: "id".into(),
                    type_oid: 23,
                },
                Column {
                    attnum: 2,
                    name: "email".into(),
                    type_oid: 25,
                },
            ],
            definition: None,
        }
    }

    #[test]
    fn resolves_by_oid_and_name() {
        let s = Snapshot::build(3, vec![customers()], vec![]);
        assert_eq!(
            s.column_by_oid(16400, 2),
            Some(("public.customers.email".into(), 25))
        );
        assert_eq!(s.column_by_oid(16400, 9), None);
        assert_eq!(s.column_by_oid(1, 1), None);
        assert_eq!(s.relation(None, "customers").unwrap().oid, 16400);
        assert!(s.relation(Some("other"), "customers").is_none());
        assert_eq!(s.column_type("public.customers.id"), Some(23));
        assert_eq!(s.generation, 3);
    }

    #[test]
    fn memberships_are_deduplicated() {
        let s = Snapshot::build(
            1,
            vec![],
            vec![
                ("bob".into(), "team".into()),
                ("bob".into(), "analysts".into()),
                ("bob".into(), "team".into()),
            ],
        );
        assert_eq!(s.groups_of("bob"), ["team", "analysts"]);
        assert!(s.groups_of("alice").is_empty());
    }
}
