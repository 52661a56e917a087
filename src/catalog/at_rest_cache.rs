//! Keeping the at-rest column states ([`super::at_rest`]) fresh in the proxy, independent of
//! the catalog TTL: per database, a task re-reads `tokengate.at_rest_columns` every
//! `at_rest_refresh` over one kept connection (application_name `tokengate-atrest`).
//! Sessions take the latest read; one older than `at_rest_max_age` is never used: a session
//! then waits (at most `at_rest_max_age`) for a fresh one, and refuses statements touching
//! columns stored as tokens (TG186) when none comes. This is the proxy's half of the
//! handshake with `tokengate migrate`/`rekey`: once a state change has committed, no proxy
//! starts a statement under the old state later than `at_rest_max_age` after it.
//!
//! A poller stops after [`IDLE_STOP`] without a lookup; the next lookup starts another.
use super::at_rest::{AtRestStates, load_states};
use super::cache::{CatalogCache, Inner};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A poller with no lookup for this long stops.
pub const IDLE_STOP: Duration = Duration::from_secs(60);

/// The latest read, and the last error since it.
#[derive(Clone, Default)]
struct Polled {
    states: Option<Arc<AtRestStates>>,
    error: Option<String>,
}

struct Poller {
    rx: watch::Receiver<Polled>,
    used: Instant,
}

/// The pollers of one cache, per database.
#[derive(Default)]
pub(super) struct Pollers(Mutex<HashMap<String, Poller>>);

impl Pollers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Poller>> {
        // Never held across an await; recover the data if a holder ever panicked.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CatalogCache {
    /// The state of `database`'s columns stored as tokens, read at most `at_rest_max_age`
    /// ago; `Err` (with the reason) when no such read is available within that time.
    pub async fn at_rest_states(&self, database: &str) -> Result<Arc<AtRestStates>, String> {
        let mut rx = self.at_rest_poller(database);
        let usable = |p: &Polled| p.states.as_ref().filter(|s| s.fresh()).cloned();
        let failing = {
            let polled = rx.borrow();
            if let Some(s) = usable(&polled) {
                return Ok(s);
            }
            polled.error.clone()
        };
        // The last read failed: say so at once rather than hold every session's messages
        // (also those not touching such columns) until the next attempt.
        if let Some(e) = failing {
            return Err(format!(
                "the state of the columns stored as tokens in database {database:?} cannot be read: {e}"
            ));
        }
        let bound = self.inner.settings.at_rest_max_age;
        let waited = tokio::time::timeout(bound, rx.wait_for(|p| usable(p).is_some()))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|p| usable(&p)));
        match waited {
            Some(s) => Ok(s),
            None => {
                let last = rx.borrow().error.clone();
                Err(format!(
                    "the state of the columns stored as tokens in database {database:?} was not read within {} ms{}",
                    bound.as_millis(),
                    last.map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ))
            }
        }
    }

    /// The poller of `database`, started if none runs.
    fn at_rest_poller(&self, database: &str) -> watch::Receiver<Polled> {
        let mut pollers = self.inner.at_rest.lock();
        if let Some(p) = pollers.get_mut(database) {
            p.used = Instant::now();
            return p.rx.clone();
        }
        let (tx, rx) = watch::channel(Polled::default());
        pollers.insert(
            database.to_string(),
            Poller {
                rx: rx.clone(),
                used: Instant::now(),
            },
        );
        tokio::spawn(poll(self.inner.clone(), database.to_string(), tx));
        rx
    }
}

/// Re-reads the state table until no session has asked for [`IDLE_STOP`].
async fn poll(inner: Arc<Inner>, database: String, tx: watch::Sender<Polled>) {
    let settings = inner.settings.clone();
    let mut conn: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
    loop {
        {
            let mut pollers = inner.at_rest.lock();
            let idle = pollers
                .get(&database)
                .is_none_or(|p| p.used.elapsed() > IDLE_STOP);
            if idle {
                if pollers
                    .get(&database)
                    .is_some_and(|p| p.rx.same_channel(&tx.subscribe()))
                {
                    pollers.remove(&database);
                }
                return;
            }
        }
        let started = Instant::now();
        let bound = settings.at_rest_max_age.max(settings.statement_timeout);
        let read = tokio::time::timeout(bound, async {
            if conn.is_none() {
                conn = Some(
                    inner
                        .connect(&database, "tokengate-atrest")
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            match &conn {
                Some((client, _)) => load_states(client)
                    .await
                    .map_err(|e| crate::net::pg_error::describe(&e)),
                None => Err("no connection".to_string()),
            }
        })
        .await;
        match read {
            Ok(Ok(columns)) => tx.send_modify(|p| {
                p.states = Some(Arc::new(AtRestStates {
                    columns,
                    read_at: started,
                    max_age: settings.at_rest_max_age,
                }));
                p.error = None;
            }),
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("the read did not finish within {} ms", bound.as_millis()),
                };
                tracing::warn!(database, error = %error, "reading the at-rest column states failed; statements touching them are refused once the last read is too old");
                conn = None;
                tx.send_modify(|p| p.error = Some(error));
            }
        }
        tokio::time::sleep(settings.at_rest_refresh).await;
    }
}
