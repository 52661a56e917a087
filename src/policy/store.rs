//! Hot reload (filled in next).
pub struct PolicyStore;
pub struct WatchHandle;
