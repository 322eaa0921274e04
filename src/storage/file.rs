//! The `file:///path` backend: objects are plain files under a root folder,
//! in the tree Litestream's file replica reads.
//!
//! Object metadata lives in sidecars under `<root>/.walsync-meta/<key>.json`,
//! outside the Litestream-visible tree.
//!
//! Crash consistency of `put`: the object and its sidecar are each written to
//! a temporary file in their final folder, fsynced, and renamed into place,
//! and the folder is fsynced. The sidecar is renamed first and records the
//! object size, so a visible object always has the metadata written with it;
//! a crash between the two renames leaves the previous object (if any) with
//! a sidecar whose size does not match it, and such a sidecar is ignored.
//! `delete` removes the object first, then the sidecar; an orphan sidecar is
//! never read.

use super::{Download, Layout, ListedObject, ObjectHead, ObjectMeta, ReadSeek, Storage};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Folder under the root that holds the metadata sidecars.
pub const META_DIR: &str = ".walsync-meta";

/// Objects stored as files under a root folder.
#[derive(Debug)]
pub struct FileStorage {
    root: PathBuf,
    counter: AtomicU64,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    sha256: Option<String>,
    timestamp: Option<String>,
    #[serde(default)]
    db_checksums: Option<String>,
    size: u64,
}

fn storage_err(what: impl std::fmt::Display, path: &Path, e: &io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

/// Whether a file name is one of our temporary files.
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

impl FileStorage {
    /// Opens the replica folder `path` (an absolute path). The folder need not
    /// exist yet: the first `put` creates it.
    pub fn open(path: &str) -> Result<FileStorage> {
        if path.is_empty() || !path.starts_with('/') {
            return Err(Error::Usage(format!(
                "bad replica path '{path}': use an absolute path, like file:///var/backups/walsync"
            )));
        }
        let root = PathBuf::from(path);
        match fs::metadata(&root) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::Usage(format!(
                    "replica path {} exists and is not a folder",
                    root.display()
                )))
            }
            _ => {}
        }
        Ok(FileStorage {
            root,
            counter: AtomicU64::new(0),
        })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks a key and returns its components.
    fn components<'k>(&self, key: &'k str) -> Result<Vec<&'k str>> {
        let bad = |why: &str| Error::Usage(format!("invalid object key '{key}': {why}"));
        if key.is_empty() {
            return Err(bad("it is empty"));
        }
        if key.starts_with('/') {
            return Err(bad("it must be relative"));
        }
        if key.contains(['\0', '\\']) {
            return Err(bad("it contains a NUL or a backslash"));
        }
        let parts: Vec<&str> = key.split('/').collect();
        for part in &parts {
            match *part {
                "" => return Err(bad("it has an empty path segment")),
                "." | ".." => return Err(bad("'.' and '..' segments are not allowed")),
                p if is_temp_name(p) => return Err(bad("it looks like a temporary file")),
                _ => {}
            }
        }
        if parts[0] == META_DIR {
            return Err(bad("the metadata folder is reserved"));
        }
        Ok(parts)
    }

    fn object_path(&self, key: &str) -> Result<PathBuf> {
        let mut p = self.root.clone();
        p.extend(self.components(key)?);
        Ok(p)
    }

    fn sidecar_path(&self, key: &str) -> Result<PathBuf> {
        let parts = self.components(key)?;
        let mut p = self.root.join(META_DIR);
        let (last, dirs) = parts
            .split_last()
            .ok_or_else(|| Error::Usage(format!("invalid object key '{key}'")))?;
        p.extend(dirs);
        p.push(format!("{last}.json"));
        Ok(p)
    }

    /// Writes `body` to a temporary file next to `dest` and fsyncs it; the
    /// caller renames it into place.
    fn write_temp<R: Read + ?Sized>(&self, dest: &Path, body: &mut R, len: u64) -> Result<PathBuf> {
        let dir = dest
            .parent()
            .ok_or_else(|| Error::Other(format!("{} has no parent folder", dest.display())))?;
        fs::create_dir_all(dir).map_err(|e| storage_err("cannot create folder", dir, &e))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| storage_err("cannot create", &tmp, &e))?;
            let copied = io::copy(&mut (&mut *body).take(len), &mut f)
                .map_err(|e| Error::Storage(format!("writing {}: {e}", tmp.display())))?;
            if copied != len {
                return Err(Error::Other(format!(
                    "upload of {}: the body ended after {copied} of {len} bytes",
                    dest.display()
                )));
            }
            f.flush()
                .and_then(|()| f.sync_all())
                .map_err(|e| storage_err("cannot sync", &tmp, &e))
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn rename_into_place(tmp: &Path, dest: &Path) -> Result<()> {
        if let Err(e) = fs::rename(tmp, dest) {
            let _ = fs::remove_file(tmp);
            return Err(storage_err("cannot rename into place", dest, &e));
        }
        if let Some(dir) = dest.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// The sidecar of `key`, if present and matching an object of `size`.
    fn read_sidecar(&self, key: &str, size: u64) -> Result<Option<Sidecar>> {
        let path = self.sidecar_path(key)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice::<Sidecar>(&bytes)
                .ok()
                .filter(|s| s.size == size)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(storage_err("cannot read", &path, &e)),
        }
    }

    fn head_of(&self, key: &str, file: &File) -> Result<Option<ObjectHead>> {
        let md = file
            .metadata()
            .map_err(|e| Error::Storage(format!("cannot stat object '{key}': {e}")))?;
        if !md.is_file() {
            return Ok(None);
        }
        let size = md.len();
        let meta = match self.read_sidecar(key, size)? {
            Some(s) => ObjectMeta {
                sha256: s.sha256,
                timestamp: s.timestamp,
                db_checksums: s.db_checksums,
            },
            None => ObjectMeta {
                sha256: None,
                db_checksums: None,
                timestamp: md
                    .modified()
                    .ok()
                    .and_then(|t| jiff::Timestamp::try_from(t).ok())
                    .map(|t| t.to_string()),
            },
        };
        Ok(Some(ObjectHead { size, meta }))
    }

    /// Opens the object file, `None` when missing (or a folder).
    fn open_object(&self, key: &str) -> Result<Option<(File, PathBuf)>> {
        let path = self.object_path(key)?;
        match File::open(&path) {
            Ok(f) => Ok(Some((f, path))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(storage_err("cannot open", &path, &e)),
        }
    }

    /// Collects every object under `dir` (whose key prefix is `key_prefix`).
    fn walk(&self, dir: &Path, key_prefix: &str, out: &mut Vec<ListedObject>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(it) => it,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(storage_err("cannot list", dir, &e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| storage_err("cannot list", dir, &e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue; // not a key walsync could have written
            };
            if is_temp_name(&name) || (key_prefix.is_empty() && name == META_DIR) {
                continue;
            }
            let path = entry.path();
            let md = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(storage_err("cannot stat", &path, &e)),
            };
            let key = format!("{key_prefix}{name}");
            if md.is_dir() {
                self.walk(&path, &format!("{key}/"), out)?;
            } else if md.is_file() {
                out.push(ListedObject {
                    key,
                    size: md.len(),
                });
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage_err("cannot sync folder", dir, &e))
}

fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(storage_err("cannot remove", path, &e)),
    }
}

impl Storage for FileStorage {
    fn put(&self, key: &str, body: &mut dyn ReadSeek, len: u64, meta: &ObjectMeta) -> Result<()> {
        let dest = self.object_path(key)?;
        let sidecar_dest = self.sidecar_path(key)?;
        let tmp = self.write_temp(&dest, body, len)?;
        let sidecar = Sidecar {
            sha256: meta.sha256.clone(),
            timestamp: meta.timestamp.clone(),
            db_checksums: meta.db_checksums.clone(),
            size: len,
        };
        let json = serde_json::to_vec(&sidecar)
            .map_err(|e| Error::Other(format!("encoding metadata of '{key}': {e}")))?;
        let meta_tmp = match self.write_temp(&sidecar_dest, &mut json.as_slice(), json.len() as u64)
        {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = Self::rename_into_place(&meta_tmp, &sidecar_dest) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Self::rename_into_place(&tmp, &dest)
    }

    fn get(&self, key: &str) -> Result<Option<Download>> {
        let Some((file, _)) = self.open_object(key)? else {
            return Ok(None);
        };
        let Some(head) = self.head_of(key, &file)? else {
            return Ok(None);
        };
        Ok(Some(Download {
            head,
            body: Box::new(file),
        }))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let Some((mut file, path)) = self.open_object(key)? else {
            return Ok(None);
        };
        if !file
            .metadata()
            .map_err(|e| storage_err("cannot stat", &path, &e))?
            .is_file()
        {
            return Ok(None);
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| storage_err("cannot seek in", &path, &e))?;
        let mut buf = Vec::new();
        file.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| storage_err("cannot read", &path, &e))?;
        Ok(Some(buf))
    }

    fn list_after(&self, prefix: &str, start_after: &str) -> Result<Vec<ListedObject>> {
        // Walk only the deepest folder the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "",
        };
        let dir_parts: Vec<&str> = dir_part.split('/').filter(|p| !p.is_empty()).collect();
        if dir_parts.iter().any(|p| matches!(*p, "." | "..")) {
            return Err(Error::Usage(format!(
                "invalid listing prefix '{prefix}': '.' and '..' segments are not allowed"
            )));
        }
        let mut dir = self.root.clone();
        dir.extend(&dir_parts);
        let mut key_prefix = dir_parts.join("/");
        if !key_prefix.is_empty() {
            key_prefix.push('/');
        }
        let mut out = Vec::new();
        self.walk(&dir, &key_prefix, &mut out)?;
        out.retain(|o| o.key.starts_with(prefix) && o.key.as_str() > start_after);
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectHead>> {
        match self.open_object(key)? {
            Some((file, _)) => self.head_of(key, &file),
            None => Ok(None),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.object_path(key)?;
        if remove_if_exists(&path)? {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        remove_if_exists(&self.sidecar_path(key)?)?;
        Ok(())
    }

    /// Removes the files, then fsyncs each folder they were in once.
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        let mut folders = std::collections::BTreeSet::new();
        for key in keys {
            let path = self.object_path(key)?;
            if remove_if_exists(&path)? {
                if let Some(dir) = path.parent() {
                    folders.insert(dir.to_path_buf());
                }
            }
            remove_if_exists(&self.sidecar_path(key)?)?;
        }
        folders.iter().try_for_each(|dir| sync_dir(dir))
    }

    fn layout(&self) -> Layout {
        Layout::File
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}
