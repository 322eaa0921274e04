//! Replica names of watched databases.
//!
//! A database's objects live under `<prefix>/<name>/`. The default name is
//! the file stem (`app.db` → `app`); when stems collide, each colliding path
//! takes the shortest trailing path (without extension) that no other watched
//! path shares (`romneys/app`, `smiths/app`). Two databases never share a name.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A database to replicate, with the name its replica lives under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDb {
    pub path: PathBuf,
    pub name: String,
}

/// Assigns names to `paths`; `explicit` holds names set in the config file
/// (`None` where the default applies). Paths must be distinct.
pub fn assign(paths: &[(PathBuf, Option<String>)]) -> Result<Vec<NamedDb>> {
    let trails: Vec<Vec<String>> = paths.iter().map(|(p, _)| trailing_parts(p)).collect();
    let mut out = Vec::with_capacity(paths.len());
    for (i, (path, explicit)) in paths.iter().enumerate() {
        let name = match explicit {
            Some(n) => {
                validate(n)?;
                n.clone()
            }
            None => shortest_unique(i, &trails),
        };
        out.push(NamedDb {
            path: path.clone(),
            name,
        });
    }
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for db in &out {
        if let Some(other) = seen.insert(&db.name, &db.path) {
            return Err(Error::Usage(format!(
                "databases {} and {} would both replicate under the name '{}'; give one a distinct `name` in a [[databases]] entry",
                other.display(),
                db.path.display(),
                db.name
            )));
        }
    }
    Ok(out)
}

/// The default name of a single database: its file stem.
pub fn default_name(path: &Path) -> String {
    trailing_parts(path).last().cloned().unwrap_or_default()
}

/// Path components, last one without its extension.
fn trailing_parts(path: &Path) -> Vec<String> {
    let mut parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if let Some(last) = parts.last_mut() {
        let stem = Path::new(last.as_str())
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        *last = stem;
    }
    parts
}

fn tail(parts: &[String], k: usize) -> String {
    parts[parts.len().saturating_sub(k)..].join("/")
}

fn shortest_unique(i: usize, trails: &[Vec<String>]) -> String {
    let mine = &trails[i];
    for k in 1..=mine.len() {
        let candidate = tail(mine, k);
        let shared = trails
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && tail(other, k) == candidate);
        if !shared {
            return candidate;
        }
    }
    tail(mine, mine.len())
}

/// Checks a name given by the user: non-empty, relative, no `.`/`..` parts.
pub fn validate(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.ends_with('/')
        || name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        return Err(Error::Usage(format!(
            "'{name}' is not a usable database name: use letters, digits and single '/' separators, like 'tenants/acme'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[&str]) -> Vec<String> {
        let input: Vec<_> = paths.iter().map(|p| (PathBuf::from(p), None)).collect();
        assign(&input)
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect()
    }

    #[test]
    fn stems_and_collisions() {
        assert_eq!(names(&["/data/app.db", "/data/users.db"]), ["app", "users"]);
        assert_eq!(
            names(&[
                "/var/lib/romneys/app.db",
                "/var/lib/smiths/app.db",
                "/x/other.db"
            ]),
            ["romneys/app", "smiths/app", "other"]
        );
        assert_eq!(
            names(&["/a/x/t/app.db", "/b/x/t/app.db"]),
            ["a/x/t/app", "b/x/t/app"]
        );
    }

    #[test]
    fn explicit_names_must_not_collide() {
        let input = vec![
            (PathBuf::from("/a/app.db"), Some("main".to_string())),
            (PathBuf::from("/b/main.db"), None),
        ];
        let err = assign(&input).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(validate("../x").is_err());
        assert!(validate("tenants/acme").is_ok());
    }
}
