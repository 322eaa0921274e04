//! S3 backend (placeholder).
use crate::error::{Error, Result};
#[derive(Debug, Clone, Default)]
pub struct S3Options {}
pub struct S3Storage;
impl S3Storage {
    pub fn open(_url: &str, _o: &S3Options) -> Result<Self> {
        Err(Error::Other("todo".into()))
    }
}

impl super::Storage for S3Storage {
    fn put(&self, _: &str, _: &mut dyn std::io::Read, _: u64, _: &super::ObjectMeta) -> Result<()> {
        unimplemented!()
    }
    fn get(&self, _: &str) -> Result<Option<super::Download>> {
        unimplemented!()
    }
    fn get_range(&self, _: &str, _: u64, _: u64) -> Result<Option<Vec<u8>>> {
        unimplemented!()
    }
    fn list(&self, _: &str) -> Result<Vec<super::ListedObject>> {
        unimplemented!()
    }
    fn head(&self, _: &str) -> Result<Option<super::ObjectHead>> {
        unimplemented!()
    }
    fn delete(&self, _: &str) -> Result<()> {
        unimplemented!()
    }
    fn layout(&self) -> super::Layout {
        unimplemented!()
    }
    fn describe(&self) -> String {
        unimplemented!()
    }
}
