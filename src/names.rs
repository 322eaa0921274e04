//! Replica names of databases: the rule, and the checks that keep two
//! databases from ever sharing one.
//!
//! A database's objects live under `<prefix>/<name>/`. Its name never
//! depends on which other databases exist, so adding or removing tenants
//! never moves one. The rule, first match wins:
//!
//! 1. a `name` in its `[[databases]]` entry: as written, or for a glob a
//!    template in which `{1}`, `{2}`… stand for what the first, second…
//!    wildcard component matched and `{stem}` for the file's stem
//!    (`path = "/var/lib/app/*/app.db"`, `name = "tenants/{1}"` →
//!    `tenants/acme`);
//! 2. the name it was given before: walsync keeps it in the database's
//!    local state for this replica, so a database named once keeps its
//!    name;
//! 3. for a glob entry: the path below the glob's fixed part, without the
//!    extension (`/var/lib/app/*/app.db` → `acme/app`; `/data/*.db` →
//!    `orders`);
//! 4. for a path: its file stem (`/data/app.db` → `app`); when several new
//!    databases of one start would share a stem with each other or with a
//!    name in use, each takes the shortest trailing path that tells it
//!    apart (`romneys/app`, `smiths/app`), and keeps it by rule 2.
//!
//! Two databases that end up with one name are an error naming both
//! (exit 2), never a silent rename.

use crate::error::{Error, Result};
use crate::glob::Captures;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A database to replicate, with the name its replica lives under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDb {
    pub path: PathBuf,
    pub name: String,
}

/// How the rule names one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// A `name` (or name template) from the config file.
    Given {
        name: String,
        captures: Option<Captures>,
    },
    /// Matched by a glob entry without a name.
    Glob(Captures),
    /// A path without wildcards and without a name.
    Path,
}

/// One database to name: its path (absolute), how the rule names it, and
/// the name it was given before, if any (rule 2).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub path: PathBuf,
    pub naming: Naming,
    pub kept: Option<String>,
}

/// Names every candidate by the rule (see the module doc), in order.
pub fn assign(candidates: &[Candidate]) -> Result<Vec<String>> {
    assign_among(candidates, &|_| None)
}

/// [`assign`] beside databases already named (`in_use` gives the path of
/// the database a name is taken by), as in a rescan while thousands
/// replicate: the candidates' names must not take theirs.
pub fn assign_among(
    candidates: &[Candidate],
    in_use: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<Vec<String>> {
    let mut names: Vec<Option<String>> =
        candidates.iter().map(settled_name).collect::<Result<_>>()?;
    // Rule 4: stems, made unique among the databases named by a stem.
    let by_stem: Vec<usize> = (0..candidates.len())
        .filter(|&i| names[i].is_none())
        .collect();
    if !by_stem.is_empty() {
        let trails: Vec<Vec<String>> = by_stem
            .iter()
            .map(|&i| trailing_parts(&candidates[i].path))
            .collect();
        let stems: Vec<String> = {
            let taken =
                |name: &str| in_use(name).is_some() || names.iter().flatten().any(|n| n == name);
            (0..by_stem.len())
                .map(|k| shortest_unique(k, &trails, &taken))
                .collect()
        };
        for (&i, stem) in by_stem.iter().zip(stems) {
            names[i] = Some(stem);
        }
    }
    let names: Vec<String> = names.into_iter().flatten().collect();
    check_unique(candidates, &names, in_use)?;
    Ok(names)
}

/// The name of rules 1 to 3, or `None` when rule 4 applies.
fn settled_name(c: &Candidate) -> Result<Option<String>> {
    let name = match (&c.naming, &c.kept) {
        (Naming::Given { name, captures }, _) => {
            let n = fill_template(name, captures.as_ref(), &c.path)?;
            validate(&n)?;
            n
        }
        (_, Some(kept)) => kept.clone(),
        (Naming::Glob(captures), None) => below_fixed_name(captures),
        (Naming::Path, None) => return Ok(None),
    };
    Ok(Some(name))
}

/// A name template with `{1}`… and `{stem}` filled in.
fn fill_template(template: &str, captures: Option<&Captures>, path: &Path) -> Result<String> {
    let mut out = template.replace("{stem}", &default_name(path));
    if let Some(c) = captures {
        for (i, w) in c.wildcards.iter().enumerate() {
            out = out.replace(&format!("{{{}}}", i + 1), w);
        }
    }
    if out.contains(['{', '}']) {
        return Err(Error::Usage(format!(
            "the name template '{template}' has a placeholder this path does not fill ({}): use {{1}}, {{2}}… for the wildcard components of the glob, or {{stem}}",
            path.display()
        )));
    }
    Ok(out)
}

/// Rule 3: the components below the glob's fixed part, the last one
/// without its extension.
fn below_fixed_name(c: &Captures) -> String {
    let mut parts = c.below_fixed.clone();
    if let Some(last) = parts.last_mut() {
        *last = stem_of(last);
    }
    parts.join("/")
}

fn check_unique(
    candidates: &[Candidate],
    names: &[String],
    in_use: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<()> {
    let mut seen: HashMap<&str, PathBuf> = HashMap::new();
    for (c, name) in candidates.iter().zip(names) {
        let other = match in_use(name) {
            Some(other) => Some(other),
            None => seen.insert(name, c.path.clone()),
        };
        if let Some(other) = other {
            return Err(Error::Usage(format!(
                "databases {} and {} would both replicate under the name '{name}'; give one a distinct `name` in its [[databases]] entry",
                other.display(),
                c.path.display(),
            )));
        }
    }
    Ok(())
}

/// The default name of a single database: its file stem.
pub fn default_name(path: &Path) -> String {
    trailing_parts(path).last().cloned().unwrap_or_default()
}

fn stem_of(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
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
        *last = stem_of(last);
    }
    parts
}

fn tail(parts: &[String], k: usize) -> String {
    parts[parts.len().saturating_sub(k)..].join("/")
}

/// The shortest trailing path of `trails[i]` that no other trail ends with
/// and `taken` does not hold.
fn shortest_unique(i: usize, trails: &[Vec<String>], taken: &dyn Fn(&str) -> bool) -> String {
    let mine = &trails[i];
    for k in 1..=mine.len() {
        let candidate = tail(mine, k);
        let shared = trails
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && tail(other, k) == candidate);
        if !shared && !taken(&candidate) {
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
            .any(|p| p.is_empty() || p == "." || p == ".." || p.starts_with(".walsync"));
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
    use crate::glob::Glob;

    fn path(p: &str) -> Candidate {
        Candidate {
            path: PathBuf::from(p),
            naming: Naming::Path,
            kept: None,
        }
    }

    fn globbed(pattern: &str, p: &str, name: Option<&str>) -> Candidate {
        let captures = Glob::new(pattern).captures(Path::new(p)).unwrap();
        let naming = match name {
            Some(n) => Naming::Given {
                name: n.into(),
                captures: Some(captures),
            },
            None => Naming::Glob(captures),
        };
        Candidate {
            path: PathBuf::from(p),
            naming,
            kept: None,
        }
    }

    fn names(c: &[Candidate]) -> Vec<String> {
        assign(c).unwrap()
    }

    #[test]
    fn globs_name_by_the_path_below_their_fixed_part() {
        let g = "/var/lib/app/*/app.db";
        assert_eq!(
            names(&[
                globbed(g, "/var/lib/app/acme/app.db", None),
                globbed(g, "/var/lib/app/globex/app.db", None),
            ]),
            ["acme/app", "globex/app"]
        );
        // Alone, acme is still acme/app: names do not depend on the others.
        assert_eq!(
            names(&[globbed(g, "/var/lib/app/acme/app.db", None)]),
            ["acme/app"]
        );
        assert_eq!(
            names(&[globbed("/data/*.db", "/data/orders.db", None)]),
            ["orders"]
        );
        assert_eq!(
            names(&[globbed(
                g,
                "/var/lib/app/acme/app.db",
                Some("tenants/{1}-{stem}")
            )]),
            ["tenants/acme-app"]
        );
        assert!(assign(&[globbed(g, "/var/lib/app/acme/app.db", Some("t/{2}"))]).is_err());
    }

    #[test]
    fn stems_that_collide_take_the_shortest_telling_path_and_keep_it() {
        assert_eq!(
            names(&[path("/data/app.db"), path("/data/users.db")]),
            ["app", "users"]
        );
        assert_eq!(
            names(&[
                path("/var/lib/romneys/app.db"),
                path("/var/lib/smiths/app.db"),
                path("/x/other.db")
            ]),
            ["romneys/app", "smiths/app", "other"]
        );
        // acme was named `app` alone; with globex added it keeps `app`.
        let mut acme = path("/t/acme/app.db");
        acme.kept = Some("app".into());
        assert_eq!(
            names(&[acme, path("/t/globex/app.db")]),
            ["app", "globex/app"]
        );
    }

    #[test]
    fn one_name_for_two_databases_is_an_error() {
        let given = |p: &str, n: &str| Candidate {
            path: PathBuf::from(p),
            naming: Naming::Given {
                name: n.into(),
                captures: None,
            },
            kept: None,
        };
        let e = assign(&[given("/a/app.db", "main"), given("/b/x.db", "main")]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.message().contains("/a/app.db") && e.message().contains("/b/x.db"),
            "{e}"
        );
        assert!(validate("../x").is_err());
        assert!(validate("a/.walsync-images").is_err());
        assert!(validate("tenants/acme").is_ok());
    }
}
