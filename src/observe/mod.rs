//! Observability: the Prometheus metrics registry and logging setup.
pub mod metrics;
