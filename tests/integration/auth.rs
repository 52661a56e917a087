//! Authentication pass-through: SCRAM-SHA-256, MD5, cleartext and trust; a wrong password gets
//! the server's own error, unchanged.
use crate::harness::*;

#[tokio::test]
async fn every_auth_method_passes_through() {
    let proxy = proxy().await;
    for (user, password, method) in USERS {
        let (_, via) = pair(&proxy, user, password).await;
        let row = via
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), *user, "method {method}");
    }
}

#[tokio::test]
async fn wrong_password_gets_the_servers_error() {
    let proxy = proxy().await;
    for (user, _, method) in USERS.iter().filter(|(_, _, m)| *m != "trust") {
        let direct = pg_config(cluster().port(), user, "wrong")
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .unwrap();
        let via = pg_config(proxy.addr.port(), user, "wrong")
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .unwrap();
        let (d, v) = (direct.as_db_error().unwrap(), via.as_db_error().unwrap());
        assert_eq!(v.code(), d.code(), "{method}");
        assert_eq!(v.message(), d.message(), "{method}");
        assert_eq!(v.code().code(), "28P01");
    }
    let series = "tokengate_connections_total{outcome=\"auth_failed\"}";
    assert!(metric_reaching(&proxy, series, 3.0).await >= 3.0);
}
