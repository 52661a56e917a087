//! A bounded cache of statement analyses keyed by normalised text and catalog generation.
//!
//! Parsing costs tens of microseconds per statement; a hit costs one normalisation pass and a
//! hash lookup. Keys are the full normalised text (not a 64-bit hash), so two different
//! statements can never share an entry, however they were crafted. Entries are tagged with the
//! catalog generation: after DDL the caller bumps the generation and old entries stop matching.
//!
//! Eviction is generational ("two maps"): new entries go to `young`; when `young` holds half the
//! capacity, it becomes `old` and the previous `old` is dropped. A hit in `old` is promoted.
//! O(1) per operation, at most `capacity` entries, and recently used statements survive.

use super::catalog::Catalog;
use super::fingerprint::normalize_into_vec;
use super::lexer::LexSettings;
use super::types::StatementAnalysis;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Analyses = Arc<Vec<StatementAnalysis>>;

struct Generations {
    catalog_generation: u64,
    young: HashMap<Box<[u8]>, Analyses>,
    old: HashMap<Box<[u8]>, Analyses>,
}

/// Thread-safe bounded analysis cache.
pub struct AnalysisCache {
    capacity: usize,
    inner: Mutex<Generations>,
}

impl AnalysisCache {
    /// A cache holding at most `capacity` statements (minimum 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(2),
            inner: Mutex::new(Generations {
                catalog_generation: 0,
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    /// The cached analysis of `sql` under `settings` and `catalog_generation`, if any.
    pub fn get(
        &self,
        sql: &str,
        settings: LexSettings,
        catalog_generation: u64,
    ) -> Option<Analyses> {
        let mut key = Vec::with_capacity(sql.len() + 1);
        normalize_into_vec(sql, settings, &mut key);
        self.get_normalized(&key, catalog_generation)
    }

    fn get_normalized(&self, key: &[u8], catalog_generation: u64) -> Option<Analyses> {
        let mut inner = self.lock();
        if inner.catalog_generation != catalog_generation {
            return None;
        }
        if let Some(found) = inner.young.get(key) {
            return Some(Arc::clone(found));
        }
        let promoted = inner.old.remove(key)?;
        self.insert_locked(&mut inner, key.into(), Arc::clone(&promoted));
        Some(promoted)
    }

    /// Returns the cached analysis, or analyses `sql` with `catalog` and caches it. The key is
    /// the statement as PostgreSQL lexes it under the session's `settings` (see
    /// [`super::fingerprint`]), so `settings` is part of it.
    pub fn get_or_analyze(
        &self,
        sql: &str,
        settings: LexSettings,
        catalog: &dyn Catalog,
        catalog_generation: u64,
    ) -> Analyses {
        let mut key = Vec::with_capacity(sql.len() + 1);
        normalize_into_vec(sql, settings, &mut key);
        if let Some(found) = self.get_normalized(&key, catalog_generation) {
            return found;
        }
        // Analyse outside the lock: parsing is the slow part.
        let analyses = Arc::new(super::analyze_with(sql, catalog, settings));
        let mut inner = self.lock();
        if inner.catalog_generation != catalog_generation {
            if catalog_generation < inner.catalog_generation {
                // Analysed against an older catalog than the cache now holds: don't store.
                return analyses;
            }
            inner.catalog_generation = catalog_generation;
            inner.young.clear();
            inner.old.clear();
        }
        self.insert_locked(&mut inner, key.into_boxed_slice(), Arc::clone(&analyses));
        analyses
    }

    /// Number of cached statements.
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.young.len() + inner.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert_locked(&self, inner: &mut Generations, key: Box<[u8]>, value: Analyses) {
        if inner.young.len() >= self.capacity / 2 {
            inner.old = std::mem::take(&mut inner.young);
        }
        inner.young.insert(key, value);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding the lock cannot leave the maps inconsistent (single inserts),
        // so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::StaticCatalog;

    const ON: LexSettings = LexSettings {
        standard_conforming_strings: true,
    };

    fn catalog() -> StaticCatalog {
        StaticCatalog::new().with_table("public", "t", &["id", "secret"])
    }

    #[test]
    fn literal_variants_hit_the_same_entry() {
        let cache = AnalysisCache::new(16);
        let first = cache.get_or_analyze("SELECT secret FROM t WHERE id = 1", ON, &catalog(), 1);
        let second = cache.get("select secret from t where id = 2", ON, 1);
        assert!(second.is_some_and(|s| Arc::ptr_eq(&s, &first)));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn generation_change_invalidates() {
        let cache = AnalysisCache::new(16);
        cache.get_or_analyze("SELECT secret FROM t", ON, &catalog(), 1);
        assert!(cache.get("SELECT secret FROM t", ON, 2).is_none());
        cache.get_or_analyze("SELECT id FROM t", ON, &catalog(), 2);
        assert!(cache.get("SELECT secret FROM t", ON, 2).is_none());
        assert!(cache.get("SELECT id FROM t", ON, 2).is_some());
    }

    #[test]
    fn bounded_and_recent_entries_survive() {
        let cache = AnalysisCache::new(4);
        for i in 0..20 {
            cache.get_or_analyze(&format!("SELECT id AS c{i} FROM t"), ON, &catalog(), 1);
            // Keep one statement hot.
            cache.get_or_analyze("SELECT secret FROM t", ON, &catalog(), 1);
        }
        assert!(cache.len() <= 4, "{}", cache.len());
        assert!(cache.get("SELECT secret FROM t", ON, 1).is_some());
        assert!(cache.get("SELECT id AS c0 FROM t", ON, 1).is_none());
    }

    #[test]
    fn ordinal_variants_do_not_share_entries() {
        let cache = AnalysisCache::new(16);
        let two = cache.get_or_analyze("SELECT id, secret FROM t ORDER BY 2", ON, &catalog(), 1);
        let one = cache.get_or_analyze("SELECT id, secret FROM t ORDER BY 1", ON, &catalog(), 1);
        assert_ne!(two[0].uses, one[0].uses);
    }

    #[test]
    fn standard_conforming_strings_changes_the_entry() {
        let cache = AnalysisCache::new(16);
        let off = LexSettings {
            standard_conforming_strings: false,
        };
        let plain = "SELECT id FROM t WHERE secret = 'a\\d'";
        assert!(cache.get_or_analyze(plain, ON, &catalog(), 1)[0].is_proven());
        assert!(cache.get(plain, off, 1).is_none());
        assert!(cache.get_or_analyze(plain, off, &catalog(), 1)[0].is_proven());
        // A literal whose end depends on the setting is refused whatever the session says.
        let sql = r"SELECT id FROM t WHERE secret = 'a\' OR id = 1 --'";
        assert!(!cache.get_or_analyze(sql, ON, &catalog(), 1)[0].is_proven());
        assert!(!cache.get_or_analyze(sql, off, &catalog(), 1)[0].is_proven());
    }
}
