//! A [`Storage`] that counts every request it passes on, by kind and
//! outcome, and times uploads: `watch` wraps its storage in one, so the
//! shipper, the compactor and the validator are all counted in one place
//! whatever the backend. A request is one call of the trait; a backend's
//! own retries of it are inside it and count once.

use super::metrics::{Metrics, Op};
use crate::error::Result;
use crate::storage::{Download, Layout, ListedObject, ObjectHead, ObjectMeta, ReadSeek, Storage};
use std::sync::Arc;
use std::time::Instant;

pub struct Metered {
    inner: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Storage>, metrics: Arc<Metrics>) -> Metered {
        Metered { inner, metrics }
    }

    fn count<T>(&self, op: Op, result: Result<T>) -> Result<T> {
        self.metrics.request(op, result.is_ok());
        result
    }
}

impl Storage for Metered {
    fn put(&self, key: &str, body: &mut dyn ReadSeek, len: u64, meta: &ObjectMeta) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.put(key, body, len, meta);
        self.metrics.upload_took(started.elapsed());
        self.count(Op::Put, result)
    }

    fn get(&self, key: &str) -> Result<Option<Download>> {
        self.count(Op::Get, self.inner.get(key))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        self.count(Op::GetRange, self.inner.get_range(key, offset, len))
    }

    fn list_after(&self, prefix: &str, start_after: &str) -> Result<Vec<ListedObject>> {
        self.count(Op::List, self.inner.list_after(prefix, start_after))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectHead>> {
        self.count(Op::Head, self.inner.head(key))
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.count(Op::Delete, self.inner.delete(key))
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.count(Op::DeleteMany, self.inner.delete_many(keys))
    }

    fn layout(&self) -> Layout {
        self.inner.layout()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
