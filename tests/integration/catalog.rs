//! The catalog cache against a real PostgreSQL: RowDescription OIDs map to columns, views keep
//! their definitions, group memberships are transitive, DDL invalidation reloads.
use crate::harness::*;
use prometheus_client::metrics::counter::Counter;
use std::time::Duration;
use tokengate::catalog::{CatalogCache, CatalogSettings, RelationKind};
use tokengate::config::Upstream;
use tokengate::net::upstream::Connector;

fn cache(refreshes: Counter) -> CatalogCache {
    let upstream = Upstream::parse(&format!(
        "postgres://127.0.0.1:{}?sslmode=disable",
        cluster().port()
    ))
    .unwrap();
    CatalogCache::new(
        CatalogSettings {
            user: "postgres".into(),
            password: Some(SUPERUSER_PW.into()),
            ttl: Duration::from_secs(600),
            lock_timeout: tokengate::config::DEFAULT_CATALOG_LOCK_TIMEOUT,
            statement_timeout: tokengate::config::DEFAULT_CATALOG_STATEMENT_TIMEOUT,
            at_rest_refresh: tokengate::config::DEFAULT_AT_REST_REFRESH,
            at_rest_max_age: tokengate::config::DEFAULT_AT_REST_MAX_AGE,
        },
        Connector::new(upstream, None, Duration::from_secs(5)),
        refreshes,
    )
}

#[tokio::test]
async fn catalog_maps_oids_views_and_groups() {
    let c = cluster();
    c.pg.execute(
        DB,
        "CREATE VIEW cat_items_view AS SELECT id, name AS label FROM items;
         CREATE ROLE cat_group NOLOGIN; CREATE ROLE cat_team NOLOGIN IN ROLE cat_group;
         CREATE ROLE cat_user LOGIN IN ROLE cat_team;",
    )
    .await
    .unwrap();
    let refreshes = Counter::default();
    let cache = cache(refreshes.clone());
    let snap = cache.snapshot(DB).await.unwrap();
    let items = snap.relation(None, "items").unwrap().clone();
    assert_eq!(items.kind, RelationKind::Table);
    let names: Vec<&str> = items.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "price", "payload", "created", "tags"]);
    assert_eq!(
        snap.column_by_oid(items.oid, 2),
        Some(("public.items.name".to_string(), 25))
    );
    // The same OID RowDescription reports for the column.
    let admin = c.pg.connect_admin(DB).await.unwrap();
    let stmt = admin.prepare("SELECT name FROM items").await.unwrap();
    let server_oid = stmt.columns()[0].table_oid().unwrap();
    assert_eq!(server_oid, items.oid);

    let view = snap.relation(Some("public"), "cat_items_view").unwrap();
    assert_eq!(view.kind, RelationKind::View);
    assert!(
        view.definition
            .as_deref()
            .unwrap()
            .contains("name AS label"),
        "{:?}",
        view.definition
    );
    let mut groups = snap.groups_of("cat_user").to_vec();
    groups.sort();
    assert_eq!(groups, ["cat_group", "cat_team"]);
    assert!(
        snap.relation(None, "pg_stats").is_some(),
        "catalog views resolve via pg_catalog"
    );

    // Cached until invalidated by DDL.
    assert_eq!(refreshes.get(), 1);
    c.pg.execute(DB, "CREATE TABLE cat_new (secret text)")
        .await
        .unwrap();
    assert!(
        cache
            .snapshot(DB)
            .await
            .unwrap()
            .relation(None, "cat_new")
            .is_none()
    );
    cache.invalidate(DB).await;
    let fresh = cache.snapshot(DB).await.unwrap();
    assert!(fresh.relation(None, "cat_new").is_some());
    assert!(fresh.generation > snap.generation);
    assert_eq!(refreshes.get(), 2);
}

#[tokio::test]
async fn catalog_errors_name_the_database() {
    let cache = cache(Counter::default());
    let err = cache.snapshot("no_such_db").await.unwrap_err().to_string();
    assert!(err.contains("no_such_db"), "{err}");
}
