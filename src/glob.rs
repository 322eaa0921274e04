//! Globs of database paths in the config file (`/var/lib/app/*/app.db`):
//! what they match now, what each match was matched with (for names), and
//! which folders decide the matches (so that a rescan can be skipped, or
//! kept to the entries that appeared, while none of them changes).

use std::path::{Path, PathBuf};

/// A database path from the config file that may hold `*` and `?` in any
/// component (a wildcard never matches `/`, nor a leading `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    parts: Vec<String>,
    absolute: bool,
}

/// What a file matched by a [`Glob`] was matched with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Captures {
    /// The text each wildcard component matched, in order (`{1}`, `{2}`…).
    pub wildcards: Vec<String>,
    /// The path's components from the first wildcard component on.
    pub below_fixed: Vec<String>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_string(),
            parts: pattern
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .map(str::to_string)
                .collect(),
            absolute: pattern.starts_with('/'),
        }
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn has_wildcards(&self) -> bool {
        self.pattern.contains(['*', '?'])
    }

    /// The existing files it matches, sorted. A path without wildcards is
    /// returned as it is, whether or not it exists (the caller reports a
    /// missing file). One directory read per wildcard component and one
    /// `stat` per candidate file.
    pub fn expand(&self) -> Vec<PathBuf> {
        self.expand_known(&|_| None::<()>, Scope::Everywhere, &mut |_| {})
            .into_iter()
            .map(|(path, _)| path)
            .collect()
    }

    /// [`Glob::expand`], taking the files `known` answers for as existing
    /// without a `stat` of their own (a rescan among thousands of
    /// databases walsync already replicates; it notices a deleted one by
    /// itself). Each file comes with `known`'s answer where it was asked
    /// (for a last component without wildcards), so that no caller asks
    /// twice. Only the paths `scope` reaches are looked at.
    ///
    /// `trace` is told of every folder whose entries decide the result (a
    /// folder listed for a wildcard, or one a fixed name is missing from)
    /// before they are read: while none of them changes, neither does the
    /// result, known files aside, and a change after `trace` heard of the
    /// folder is a change the caller can see.
    pub fn expand_known<T>(
        &self,
        known: &dyn Fn(&Path) -> Option<T>,
        scope: Scope,
        trace: &mut dyn FnMut(&Path),
    ) -> Vec<(PathBuf, Option<T>)> {
        if !self.has_wildcards() {
            return vec![(PathBuf::from(&self.pattern), None)];
        }
        let mut current = vec![(PathBuf::from(if self.absolute { "/" } else { "." }), None)];
        for (i, part) in self.parts.iter().enumerate() {
            let last = i + 1 == self.parts.len();
            let mut next = Vec::new();
            for (dir, _) in &current {
                next.extend(matches_in(dir, part, last, known, &scope, trace));
            }
            current = next;
        }
        let mut found = current;
        if !self.absolute {
            for (p, _) in &mut found {
                if let Ok(relative) = p.strip_prefix("./") {
                    *p = relative.to_path_buf();
                }
            }
        }
        // By bytes: the order is stable and far cheaper than by components.
        found.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
        found
    }

    /// What `path` (one of [`Glob::expand`]'s results) was matched with;
    /// `None` when it does not match.
    pub fn captures(&self, path: &Path) -> Option<Captures> {
        let comps: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if comps.len() != self.parts.len() {
            return None;
        }
        let first_wild = self.parts.iter().position(|p| p.contains(['*', '?']))?;
        let mut caps = Captures {
            below_fixed: comps[first_wild..].to_vec(),
            ..Captures::default()
        };
        for (part, comp) in self.parts.iter().zip(&comps) {
            if part.contains(['*', '?']) {
                if !wildcard_match(part, comp) {
                    return None;
                }
                caps.wildcards.push(comp.clone());
            } else if part != comp {
                return None;
            }
        }
        Some(caps)
    }
}

/// Which paths an expansion looks at.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// All it matches.
    Everywhere,
    /// Only those at or below these absolute paths, without `.` components
    /// (the entries that appeared in a folder since the last look).
    Under(&'a [PathBuf]),
}

impl Scope<'_> {
    /// Whether `p` is in scope or leads to a path in scope.
    pub fn reaches(&self, p: &Path) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::Under(roots) => {
                let p = lexically_absolute(p);
                roots.iter().any(|r| p.starts_with(r) || r.starts_with(&p))
            }
        }
    }

    /// The entries of `dir` in scope, when not all of them are: those
    /// leading to a path in scope (`None`: all of them).
    fn entries_of(&self, dir: &Path) -> Option<Vec<PathBuf>> {
        let Scope::Under(roots) = self else {
            return None;
        };
        let absolute_dir = lexically_absolute(dir);
        if roots.iter().any(|r| absolute_dir.starts_with(r)) {
            return None;
        }
        let mut entries: Vec<PathBuf> = roots
            .iter()
            .filter_map(|r| r.strip_prefix(&absolute_dir).ok()?.components().next())
            .map(|c| dir.join(c))
            .collect();
        entries.sort();
        entries.dedup();
        Some(entries)
    }
}

/// `p` from the root, without `.` components, by its text alone (no
/// symbolic link resolved): how a [`Scope`] compares paths.
pub fn lexically_absolute(p: &Path) -> PathBuf {
    let base = if p.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().unwrap_or_default()
    };
    base.join(p)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// The entries of `dir` matching `part` in `scope`: files when `last`,
/// else folders.
fn matches_in<T>(
    dir: &Path,
    part: &str,
    last: bool,
    known: &dyn Fn(&Path) -> Option<T>,
    scope: &Scope,
    trace: &mut dyn FnMut(&Path),
) -> Vec<(PathBuf, Option<T>)> {
    if !part.contains(['*', '?']) {
        return fixed_entry(dir.join(part), last, known, scope, trace);
    }
    let kind_wanted = |t: std::fs::FileType| if last { t.is_file() } else { t.is_dir() };
    let name_wanted = |path: &Path| {
        let name = path.file_name().and_then(|n| n.to_str());
        name.is_some_and(|n| !n.starts_with('.') && wildcard_match(part, n))
    };
    if let Some(entries) = scope.entries_of(dir) {
        // A few entries that appeared: no need to list the folder.
        return entries
            .into_iter()
            .filter(|path| name_wanted(path))
            .filter(|path| {
                std::fs::symlink_metadata(path).is_ok_and(|m| kind_wanted(m.file_type()))
            })
            .map(|path| (path, None))
            .collect();
    }
    trace(dir);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // One allocation an entry (its path): this runs over every tenant's
    // folder at each full rescan.
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(kind_wanted))
        .map(|entry| entry.path())
        .filter(|path| name_wanted(path))
        .map(|path| (path, None))
        .collect()
}

/// The entry `p` of a component without wildcards, if it exists (a file
/// when `last`, else a folder) and is in scope.
fn fixed_entry<T>(
    p: PathBuf,
    last: bool,
    known: &dyn Fn(&Path) -> Option<T>,
    scope: &Scope,
    trace: &mut dyn FnMut(&Path),
) -> Vec<(PathBuf, Option<T>)> {
    if !scope.reaches(&p) {
        return Vec::new();
    }
    if last {
        if let Some(answer) = known(&p) {
            return vec![(p, Some(answer))];
        }
    }
    let exists =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| if last { m.is_file() } else { m.is_dir() });
    if exists(&p) {
        return vec![(p, None)];
    }
    // Missing: the result depends on its folder. Looked at once more
    // after `trace` heard of it, so that one created in between is not
    // missed.
    if let Some(dir) = p.parent() {
        trace(dir);
    }
    if exists(&p) {
        vec![(p, None)]
    } else {
        Vec::new()
    }
}

/// Matches one path component against a pattern with `*` and `?`.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.db", "app.db"));
        assert!(wildcard_match("a?p.db", "app.db"));
        assert!(!wildcard_match("*.db", "app.db-wal"));
        assert!(wildcard_match("*", "x"));
    }

    #[test]
    fn globs_expand_to_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        for t in ["a", "b"] {
            std::fs::create_dir(dir.path().join(t)).unwrap();
            std::fs::write(dir.path().join(t).join("app.db"), b"x").unwrap();
        }
        std::fs::write(dir.path().join("a").join("app.db-wal"), b"x").unwrap();
        let pattern = format!("{}/*/app.db", dir.path().display());
        let glob = Glob::new(&pattern);
        let found = glob.expand();
        assert_eq!(found.len(), 2);
        assert!(found[0].ends_with("a/app.db"));
        let caps = glob.captures(&found[1]).unwrap();
        assert_eq!(caps.wildcards, ["b"]);
        assert_eq!(caps.below_fixed, ["b", "app.db"]);
        assert_eq!(
            Glob::new("/x/*.db")
                .captures(Path::new("/x/t.db"))
                .unwrap()
                .below_fixed,
            ["t.db"]
        );
        assert!(Glob::new("/x/*.db")
            .captures(Path::new("/y/t.db"))
            .is_none());
    }

    #[test]
    fn a_scope_looks_only_at_what_appeared() {
        let dir = tempfile::tempdir().unwrap();
        for t in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(t)).unwrap();
            std::fs::write(dir.path().join(t).join("app.db"), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let glob = Glob::new(&format!("{}/*/app.db", dir.path().display()));
        let expand = |scope: Scope| {
            let mut traced = Vec::new();
            let found: Vec<PathBuf> = glob
                .expand_known(&|_| None::<()>, scope, &mut |d| {
                    traced.push(d.to_path_buf())
                })
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            (found, traced)
        };
        let (all, traced) = expand(Scope::Everywhere);
        assert_eq!(all.len(), 3);
        // The folder listed, and `d`, where app.db is missing.
        assert_eq!(traced, [dir.path().to_path_buf(), dir.path().join("d")]);

        let appeared = [dir.path().join("b")];
        let (found, traced) = expand(Scope::Under(&appeared));
        assert_eq!(found, [dir.path().join("b/app.db")]);
        assert!(traced.is_empty(), "nothing listed: {traced:?}");

        let appeared = [dir.path().join("d/app.db"), dir.path().join("zzz")];
        let (found, traced) = expand(Scope::Under(&appeared));
        assert!(found.is_empty());
        assert_eq!(traced, [dir.path().join("d")]);

        let relative = Scope::Under(&appeared);
        assert!(relative.reaches(&dir.path().join("./d")));
        assert!(!relative.reaches(&dir.path().join("c/app.db")));
    }
}
