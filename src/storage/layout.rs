//! Where a replica keeps each database's files: the object keys of LTX
//! files (Litestream 0.5's layouts, S3 and file) and of walsync's own
//! full-image markers, and the parsing of keys back into what they name.
//!
//! Every key is relative to the replica root (the S3 prefix or the folder
//! of a `file://` URL). A database's objects live under `<name>/`; the name
//! may contain `/`. Parsing is strict: only the canonical spelling of a key
//! parses, so two spellings never name the same file.

/// Where LTX files of a database live under the replica root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Litestream's S3 layout: `<name>/<level %04x>/<min %016x>-<max %016x>.ltx`.
    S3,
    /// Litestream's file layout: `<name>/ltx/<level>/<min %016x>-<max %016x>.ltx`.
    File,
}

/// The identity of one LTX object in a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LtxId {
    pub level: u32,
    pub min_txid: u64,
    pub max_txid: u64,
}

/// Level of full snapshots.
pub const SNAPSHOT_LEVEL: u32 = 9;

/// Folder under a database's prefix that holds walsync's full-image
/// markers: one empty object per level-0 file that holds every page of the
/// database (a full copy), named `<level %04x>-<min %016x>-<max %016x>`.
/// A restore can start from such a file instead of the snapshot before it.
/// Litestream reads only its level folders, so it never sees them.
pub const IMAGE_MARKER_DIR: &str = ".walsync-images";

/// What a key under the replica root names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An LTX file.
    Ltx(LtxId),
    /// walsync's marker saying that LTX file is a full image.
    ImageMarker(LtxId),
}

impl Layout {
    /// The folder (with trailing slash) holding one level of a database.
    pub fn level_prefix(self, name: &str, level: u32) -> String {
        match self {
            Layout::S3 => format!("{}{level:04x}/", db_prefix(name)),
            Layout::File => format!("{}ltx/{level}/", db_prefix(name)),
        }
    }

    /// The key of an LTX file.
    pub fn ltx_key(self, name: &str, id: LtxId) -> String {
        format!(
            "{}{:016x}-{:016x}.ltx",
            self.level_prefix(name, id.level),
            id.min_txid,
            id.max_txid
        )
    }

    /// A key that sorts just before every file of `level` whose min TXID is
    /// at least `min_txid` (for [`crate::storage::Storage::list_after`]).
    pub fn level_start_after(self, name: &str, level: u32, min_txid: u64) -> String {
        format!("{}{min_txid:016x}", self.level_prefix(name, level))
    }

    /// The key of the marker saying LTX file `id` is a full image.
    pub fn image_marker_key(self, name: &str, id: LtxId) -> String {
        format!(
            "{}{IMAGE_MARKER_DIR}/{:04x}-{:016x}-{:016x}",
            db_prefix(name),
            id.level,
            id.min_txid,
            id.max_txid
        )
    }

    /// Parses a key below `db_prefix(name)` back into an LTX id; `None` for
    /// anything that is not an LTX file of this layout.
    pub fn parse_ltx_key(self, name: &str, key: &str) -> Option<LtxId> {
        match self.parse_db_key(name, key)? {
            KeyKind::Ltx(id) => Some(id),
            KeyKind::ImageMarker(_) => None,
        }
    }

    /// What a key below `db_prefix(name)` names, if anything walsync reads.
    pub fn parse_db_key(self, name: &str, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&db_prefix(name))?;
        let kind = match rest
            .strip_prefix(IMAGE_MARKER_DIR)
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(marker) => KeyKind::ImageMarker(parse_marker_name(marker)?),
            None => KeyKind::Ltx(self.parse_level_and_file(rest)?),
        };
        // Only canonical spellings (e.g. no "00A0" vs "00a0" duplicates).
        let canonical = match kind {
            KeyKind::Ltx(id) => self.ltx_key(name, id),
            KeyKind::ImageMarker(id) => self.image_marker_key(name, id),
        };
        (canonical == key).then_some(kind)
    }

    fn parse_level_and_file(self, rest: &str) -> Option<LtxId> {
        let (level, file) = match self {
            Layout::S3 => {
                let (lvl, file) = rest.split_once('/')?;
                if lvl.len() != 4 {
                    return None;
                }
                (u32::from_str_radix(lvl, 16).ok()?, file)
            }
            Layout::File => {
                let (lvl, file) = rest.strip_prefix("ltx/")?.split_once('/')?;
                (lvl.parse::<u32>().ok()?, file)
            }
        };
        let (min_txid, max_txid) = parse_ltx_filename(file)?;
        Some(LtxId {
            level,
            min_txid,
            max_txid,
        })
    }

    /// Splits a key relative to the replica root into (database name, what
    /// it names); `None` for anything walsync does not read.
    pub fn parse_key(self, key: &str) -> Option<(String, KeyKind)> {
        let (rest, file) = key.rsplit_once('/').unwrap_or(("", key));
        // A marker: `<name>/.walsync-images/<file>`.
        let marker_parent = rest
            .strip_suffix(IMAGE_MARKER_DIR)
            .filter(|n| n.is_empty() || n.ends_with('/'));
        let name = match marker_parent {
            Some(n) => n.trim_end_matches('/'),
            None => {
                parse_ltx_filename(file)?;
                // `rest` ends with the level folder; before it is the name.
                let name = rest.rsplit_once('/').map_or("", |(n, _)| n);
                match self {
                    Layout::S3 => name,
                    Layout::File => match name.rsplit_once('/') {
                        Some((n, "ltx")) => n,
                        None if name == "ltx" => "",
                        _ => return None,
                    },
                }
            }
        };
        let kind = self.parse_db_key(name, key)?;
        Some((name.to_string(), kind))
    }
}

fn parse_marker_name(marker: &str) -> Option<LtxId> {
    let (level, range) = marker.split_once('-')?;
    if level.len() != 4 {
        return None;
    }
    let level = u32::from_str_radix(level, 16).ok()?;
    let (min_txid, max_txid) = parse_ltx_filename(&format!("{range}.ltx"))?;
    Some(LtxId {
        level,
        min_txid,
        max_txid,
    })
}

/// `<name>/`, the root of one database's objects (empty name: the root itself).
pub fn db_prefix(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("{name}/")
    }
}

/// Parses `<min %016x>-<max %016x>.ltx`.
pub fn parse_ltx_filename(file: &str) -> Option<(u64, u64)> {
    let stem = file.strip_suffix(".ltx")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 || file.contains('/') {
        return None;
    }
    let min = u64::from_str_radix(a, 16).ok()?;
    let max = u64::from_str_radix(b, 16).ok()?;
    (min >= 1 && max >= min).then_some((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(level: u32, min: u64, max: u64) -> LtxId {
        LtxId {
            level,
            min_txid: min,
            max_txid: max,
        }
    }

    #[test]
    fn keys_of_both_layouts() {
        assert_eq!(
            Layout::S3.parse_key("tenants/a/app/0009/0000000000000001-0000000000000010.ltx"),
            Some(("tenants/a/app".into(), KeyKind::Ltx(id(9, 1, 16))))
        );
        assert_eq!(
            Layout::S3.parse_key("0000/0000000000000002-0000000000000002.ltx"),
            Some((String::new(), KeyKind::Ltx(id(0, 2, 2))))
        );
        assert_eq!(
            Layout::File.parse_key("smiths/app/ltx/0/0000000000000002-0000000000000003.ltx"),
            Some(("smiths/app".into(), KeyKind::Ltx(id(0, 2, 3))))
        );
        for (layout, key) in [
            (
                Layout::S3,
                "app/ltx/0/0000000000000002-0000000000000002.ltx",
            ),
            (Layout::S3, "app/000A/0000000000000002-0000000000000002.ltx"),
            (Layout::S3, "app/0000/0000000000000002-0000000000000001.ltx"),
            (
                Layout::File,
                "app/0000/0000000000000002-0000000000000002.ltx",
            ),
            (
                Layout::File,
                "app/ltx/00/0000000000000002-0000000000000002.ltx",
            ),
            (Layout::File, "app/ltx/0/notes.txt"),
            (Layout::S3, "app/.walsync-images/0000-0000000000000002"),
            (
                Layout::S3,
                "app/.walsync-images/0000-0000000000000002-0000000000000002.ltx",
            ),
            (
                Layout::S3,
                "app/.walsync-images/x/0000-0000000000000002-0000000000000002",
            ),
        ] {
            assert_eq!(layout.parse_key(key), None, "{key}");
        }
    }

    #[test]
    fn image_markers_round_trip() {
        for layout in [Layout::S3, Layout::File] {
            for name in ["app", "tenants/acme/app", ""] {
                let f = id(0, 7, 7);
                let key = layout.image_marker_key(name, f);
                assert_eq!(
                    layout.parse_key(&key),
                    Some((name.to_string(), KeyKind::ImageMarker(f))),
                    "{key}"
                );
                assert_eq!(
                    layout.parse_db_key(name, &key),
                    Some(KeyKind::ImageMarker(f))
                );
                assert_eq!(layout.parse_ltx_key(name, &key), None);
                let ltx = layout.ltx_key(name, f);
                assert_eq!(layout.parse_db_key(name, &ltx), Some(KeyKind::Ltx(f)));
            }
        }
    }

    #[test]
    fn start_after_sorts_before_the_files_from_a_txid() {
        let layout = Layout::S3;
        let after = layout.level_start_after("app", 0, 5);
        assert!(layout.ltx_key("app", id(0, 4, 4)) < after);
        assert!(layout.ltx_key("app", id(0, 5, 5)) > after);
        assert!(layout.ltx_key("app", id(0, 6, 9)) > after);
    }
}
