//! Detectors (filled in later).
