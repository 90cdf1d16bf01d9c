//! TEMPORARY stand-in until the store branch lands (same signatures).
use std::path::Path;
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;
#[derive(Clone)]
pub struct Store;
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another headgate process is using {path}")]
    Locked { path: String },
}
impl Store {
    pub async fn open_redb(_p: &Path, _c: usize) -> Result<Store, StoreError> { Ok(Store) }
}
