//! What users type that argh does not take as is: `-h`, `--version` and
//! `-V`, Litestream's single-dash flags, and unknown commands. Applied to
//! the arguments before argh parses them.

/// The commands, in the order `walsync help` lists them.
pub const COMMANDS: [&str; 13] = [
    "watch",
    "snapshot",
    "restore",
    "replicate",
    "list",
    "verify",
    "compact",
    "delete",
    "status",
    "explain",
    "import-litestream",
    "pragma",
    "version",
];

/// Litestream's single-dash flags whose walsync spelling differs by more
/// than a dash.
const RENAMED: [(&str, &str); 3] = [
    ("-timestamp", "--point-in-time"),
    ("-replica", "-b/--bucket (the replica URL)"),
    (
        "-exec",
        "nothing yet (run the application beside `walsync watch`)",
    ),
];

/// The arguments argh should see, or the message of a usage error.
pub fn preflight(args: &[&str]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    match args.first() {
        None => return Ok(out),
        Some(&("--version" | "-V")) => return Ok(vec!["version".into()]),
        Some(&"-h") => return Ok(vec!["--help".into()]),
        Some(&first)
            if !first.starts_with('-') && first != "help" && !COMMANDS.contains(&first) =>
        {
            return Err(format!(
                "unknown command '{first}'; the commands are: {}",
                COMMANDS.join(", ")
            ))
        }
        Some(_) => {}
    }
    for (i, a) in args.iter().enumerate().skip(1) {
        if *a == "-h" {
            out[i] = "--help".into();
        } else if let Some(hint) = single_dash_hint(a) {
            return Err(hint);
        }
    }
    Ok(out)
}

/// A hint for a Litestream-style `-flag`: one dash, then two letters or
/// more (`-o`, `-b` and negative numbers are left alone).
fn single_dash_hint(arg: &str) -> Option<String> {
    let name = arg.strip_prefix('-')?;
    let word = name.split('=').next().unwrap_or(name);
    if name.starts_with('-')
        || word.len() < 2
        || !word.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return None;
    }
    let flag = format!("-{word}");
    let instead = RENAMED
        .iter()
        .find(|(from, _)| *from == flag)
        .map_or_else(|| format!("--{word}"), |(_, to)| to.to_string());
    Some(format!(
        "'{arg}' is a single-dash flag, as Litestream spells them; walsync's flags take two dashes: use {instead}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_version_and_litestream_habits() {
        assert_eq!(preflight(&["-V"]).unwrap(), vec!["version"]);
        assert_eq!(preflight(&["--version"]).unwrap(), vec!["version"]);
        assert_eq!(preflight(&["-h"]).unwrap(), vec!["--help"]);
        assert_eq!(
            preflight(&["restore", "-h"]).unwrap(),
            vec!["restore", "--help"]
        );
        let e = preflight(&["restore", "app", "-config", "x.toml"]).unwrap_err();
        assert!(e.contains("use --config"), "{e}");
        let e = preflight(&["restore", "app", "-if-db-not-exists"]).unwrap_err();
        assert!(e.contains("use --if-db-not-exists"), "{e}");
        let e = preflight(&["restore", "app", "-timestamp", "x"]).unwrap_err();
        assert!(e.contains("--point-in-time"), "{e}");
        let e = preflight(&["frobnicate"]).unwrap_err();
        assert!(
            e.starts_with("unknown command 'frobnicate'") && e.contains("watch, snapshot"),
            "{e}"
        );
        // Left to argh: short flags, values, help.
        assert!(preflight(&["restore", "app", "-o", "x.db", "-b", "file:///r"]).is_ok());
        assert!(preflight(&["help"]).is_ok());
        assert!(preflight(&["list", "--txid", "-5"]).is_ok());
    }
}
