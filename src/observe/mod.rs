//! Observability: the Prometheus metrics registry and logging setup.
pub mod logging;
pub mod metrics;
