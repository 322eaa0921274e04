//! S3 ListObjectsV2 responses, as arbitrary text, through what walsync
//! does with a listing page:
//!
//! 1. `rusty_s3::actions::ListObjectsV2::parse_response`, the exact call in
//!    walsync's `S3Storage::list_after` (src/storage/s3); walsync has no
//!    public function of its own around it, and its error-body parsing
//!    (`xml_element`, `status_failure`) is private, so not fuzzed here.
//! 2. The keys, relative to the replica prefix as `list_after` makes them,
//!    through walsync's public key parsing (`Layout::parse_key` for both
//!    layouts) and, via an in-memory `Storage` answering `list` with those
//!    objects, `Catalog::read_all`, then the restore planner
//!    (`plan::plan_chain`, `plan::commit_points`) on every database found.
//!
//! Several pages can be given in one input, separated by NUL bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rusty_s3::actions::ListObjectsV2;
use walsync::catalog::Catalog;
use walsync::plan;
use walsync::storage::{
    Download, KeyKind, Layout, ListedObject, ObjectHead, ObjectMeta, ReadSeek, Storage,
};

/// The prefix walsync's seeds were listed under (`s3://bkt/walsync`).
const ROOT: &str = "walsync/";

/// A replica whose listing is the fuzzed one; nothing else is stored.
struct Listed {
    objects: Vec<ListedObject>,
    layout: Layout,
}

impl Storage for Listed {
    fn put(&self, _: &str, _: &mut dyn ReadSeek, _: u64, _: &ObjectMeta) -> walsync::Result<()> {
        Err(walsync::Error::Other("read-only".into()))
    }
    fn get(&self, _: &str) -> walsync::Result<Option<Download>> {
        Ok(None)
    }
    fn get_range(&self, _: &str, _: u64, _: u64) -> walsync::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn list_after(&self, prefix: &str, start_after: &str) -> walsync::Result<Vec<ListedObject>> {
        Ok(self
            .objects
            .iter()
            .filter(|o| o.key.starts_with(prefix) && o.key.as_str() > start_after)
            .cloned()
            .collect())
    }
    fn head(&self, _: &str) -> walsync::Result<Option<ObjectHead>> {
        Ok(None)
    }
    fn delete(&self, _: &str) -> walsync::Result<()> {
        Ok(())
    }
    fn layout(&self) -> Layout {
        self.layout
    }
    fn describe(&self) -> String {
        "fuzz listing".into()
    }
}

/// `WALSYNC_FUZZ_VERBOSE=1`: print what each input parses to (for checking
/// seeds with `cargo fuzz run s3_list_xml seeds/s3_list_xml -- -runs=0`).
fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("WALSYNC_FUZZ_VERBOSE").is_some())
}

fuzz_target!(|data: &[u8]| {
    let mut objects = Vec::new();
    for page in data.split(|&b| b == 0).take(8) {
        // walsync reads the body with read_to_string: invalid UTF-8 never
        // reaches the parser.
        let Ok(text) = std::str::from_utf8(page) else {
            continue;
        };
        let listing = match ListObjectsV2::parse_response(text) {
            Ok(listing) => listing,
            Err(e) => {
                if verbose() {
                    eprintln!("listing: error {e:?}");
                }
                continue;
            }
        };
        if verbose() {
            eprintln!(
                "listing: {} objects, {} common prefixes, next token {:?}",
                listing.contents.len(),
                listing.common_prefixes.len(),
                listing.next_continuation_token
            );
        }
        let _ = listing.next_continuation_token.as_deref().map(str::len);
        for p in &listing.common_prefixes {
            let _ = p.prefix.strip_prefix(ROOT);
        }
        // As in S3Storage::list_after: strip the root, keep what is below it.
        for obj in listing.contents {
            if let Some(rel) = obj.key.strip_prefix(ROOT) {
                if !rel.is_empty() {
                    objects.push(ListedObject {
                        key: rel.to_string(),
                        size: obj.size.unwrap_or(0),
                    });
                }
            }
        }
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    objects.dedup_by(|a, b| a.key == b.key);

    for layout in [Layout::S3, Layout::File] {
        // Key parsing is strict: whatever parses spells back to the same key.
        for o in &objects {
            if let Some((name, kind)) = layout.parse_key(&o.key) {
                let again = match kind {
                    KeyKind::Ltx(id) => layout.ltx_key(&name, id),
                    KeyKind::ImageMarker(id) => layout.image_marker_key(&name, id),
                };
                assert_eq!(again, o.key, "parse_key accepted a non-canonical key");
                assert_eq!(layout.parse_db_key(&name, &o.key), Some(kind));
            }
        }

        let storage = Listed {
            objects: objects.clone(),
            layout,
        };
        let catalog = Catalog::read_all(&storage).expect("listing an in-memory replica");
        for (name, files) in catalog.into_databases() {
            if verbose() {
                eprintln!("{layout:?}: database {name:?}: {} files", files.len());
            }
            assert!(!files.is_empty());
            let latest = files.iter().map(|f| f.id.max_txid).max().unwrap();
            let oldest = files.iter().map(|f| f.id.min_txid).min().unwrap();
            for target in [latest, oldest, latest / 2 + 1, latest.saturating_sub(1)] {
                if let Ok(chain) = plan::plan_chain(&files, target) {
                    assert!(chain[0].image);
                    assert_eq!(chain.last().unwrap().id.max_txid, target);
                    for w in chain.windows(2) {
                        assert_eq!(w[1].id.min_txid, w[0].id.max_txid + 1);
                    }
                }
                let _ = plan::plan(&files, target, &name, "s3://fuzz/walsync");
            }
            let _ = plan::commit_points(&files);
        }
    }
});
