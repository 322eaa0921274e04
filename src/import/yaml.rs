//! The part of YAML that Litestream configs use, read into a tree: block
//! mappings and sequences by indentation, `- key: value` items, plain,
//! 'single' and "double" quoted scalars, `[a, b]` flow lists of scalars,
//! and `#` comments. Anything else (anchors, block scalars, flow maps,
//! several documents) is an error naming the line, never a guess.
//!
//! Why not a YAML crate: walsync's static binary must stay within 6 MB,
//! and this is all `import-litestream` needs.

/// A YAML node.
#[derive(Clone, PartialEq)]
#[cfg_attr(test, derive(Debug))]
pub enum Node {
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
    Scalar(String),
    Null,
}

impl Node {
    /// The value of `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar.
    pub fn text(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }
}

/// One significant line: its number (from 1), indentation and content
/// without the comment.
#[derive(Clone)]
struct Line {
    number: usize,
    indent: usize,
    content: String,
}

/// Parses `text`; an error names the line.
pub fn parse(text: &str) -> Result<Node, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines: Vec<Line> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let content = strip_comment(raw);
        let trimmed = content.trim_end();
        if trimmed.trim() == "---" && !lines.is_empty() {
            return Err(format!(
                "line {number}: a second YAML document; give import-litestream one config"
            ));
        }
        if trimmed.trim().is_empty() || trimmed.trim() == "---" {
            continue;
        }
        let indent = trimmed.len() - trimmed.trim_start().len();
        if trimmed[..indent].contains('\t') {
            return Err(format!(
                "line {number}: tabs are not allowed for indentation"
            ));
        }
        lines.push(Line {
            number,
            indent,
            content: trimmed.trim_start().to_string(),
        });
    }
    if lines.is_empty() {
        return Ok(Node::Null);
    }
    let mut at = 0;
    let indent = lines[0].indent;
    let node = block(&mut lines, &mut at, indent)?;
    match lines.get(at) {
        Some(l) => Err(format!("line {}: unexpected indentation", l.number)),
        None => Ok(node),
    }
}

/// The line without its comment (a `#` at the start or after a blank,
/// outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') if previous.is_whitespace() || previous == ':' || i == 0 => {
                quote = Some(c)
            }
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

/// The block starting at `lines[*at]`, whose lines are at `indent`.
fn block(lines: &mut [Line], at: &mut usize, indent: usize) -> Result<Node, String> {
    if is_item(&lines[*at].content) {
        list(lines, at, indent)
    } else {
        map(lines, at, indent)
    }
}

fn is_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

fn list(lines: &mut [Line], at: &mut usize, indent: usize) -> Result<Node, String> {
    let mut items = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent && is_item(&lines[*at].content) {
        let rest = lines[*at].content[1..].trim_start().to_string();
        if rest.is_empty() {
            *at += 1;
            items.push(nested(lines, at, indent)?);
            continue;
        }
        // `- key: value` (or `- scalar`): the rest is a line of its own,
        // indented where it starts.
        let offset = lines[*at].content.len() - rest.len();
        lines[*at].indent = indent + offset;
        lines[*at].content = rest;
        if key_value(&lines[*at].content).is_some() {
            let inner = lines[*at].indent;
            items.push(map(lines, at, inner)?);
        } else {
            items.push(scalar(&lines[*at].content, lines[*at].number)?);
            *at += 1;
        }
    }
    Ok(Node::List(items))
}

fn map(lines: &mut [Line], at: &mut usize, indent: usize) -> Result<Node, String> {
    let mut entries: Vec<(String, Node)> = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent {
        let line = lines[*at].clone();
        if is_item(&line.content) {
            break;
        }
        let (key, value) = key_value(&line.content)
            .ok_or_else(|| format!("line {}: expected `key: value`", line.number))?;
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(format!("line {}: `{key}` is given twice", line.number));
        }
        *at += 1;
        let node = if value.is_empty() {
            match lines.get(*at) {
                // A list may sit at its key's indentation.
                Some(next) if next.indent == indent && is_item(&next.content) => {
                    list(lines, at, indent)?
                }
                _ => nested(lines, at, indent)?,
            }
        } else {
            scalar(&value, line.number)?
        };
        entries.push((key, node));
    }
    Ok(Node::Map(entries))
}

/// The block indented under a line at `indent`, or null when none is.
fn nested(lines: &mut [Line], at: &mut usize, indent: usize) -> Result<Node, String> {
    match lines.get(*at) {
        Some(next) if next.indent > indent => {
            let inner = next.indent;
            block(lines, at, inner)
        }
        _ => Ok(Node::Null),
    }
}

/// `key: value` split at the first `: ` (or a trailing `:`) outside
/// quotes; the key unquoted.
fn key_value(content: &str) -> Option<(String, String)> {
    let mut quote = None;
    let chars: Vec<(usize, char)> = content.char_indices().collect();
    for (n, &(i, c)) in chars.iter().enumerate() {
        match (quote, c) {
            (None, '\'' | '"') if i == 0 => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ':') => {
                let next = chars.get(n + 1).map(|&(_, c)| c);
                if next.is_none() || next.is_some_and(char::is_whitespace) {
                    let key = unquote(content[..i].trim()).ok()?;
                    return Some((key, content[i + 1..].trim().to_string()));
                }
            }
            _ => {}
        }
    }
    None
}

fn scalar(text: &str, number: usize) -> Result<Node, String> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("line {number}: a flow list must close on its line"))?;
        let items = inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| unquote(s).map(Node::Scalar))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("line {number}: {e}"))?;
        return Ok(Node::List(items));
    }
    if text.starts_with(['{', '&', '*', '|', '>', '!']) {
        return Err(format!(
            "line {number}: this YAML feature (flow maps, anchors, block scalars, tags) is not read by import-litestream"
        ));
    }
    if matches!(text, "~" | "null") {
        return Ok(Node::Null);
    }
    unquote(text)
        .map(Node::Scalar)
        .map_err(|e| format!("line {number}: {e}"))
}

/// A scalar's text: quotes removed and escapes applied.
fn unquote(text: &str) -> Result<String, String> {
    if let Some(inner) = text.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or("unclosed single quote")?;
        return Ok(inner.replace("''", "'"));
    }
    if let Some(inner) = text.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or("unclosed double quote")?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c) => out.push(c),
                None => return Err("a backslash ends a double-quoted string".into()),
            }
        }
        return Ok(out);
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Node {
        Node::Scalar(v.into())
    }

    #[test]
    fn reads_what_litestream_configs_use() {
        let text = "\
# comment
addr: \":9090\"
dbs:
  - path: /data/app.db   # trailing comment
    replica:
      url: 's3://bucket/app'
  - path: \"/data/b.db\"
    replicas:
    - type: file
      path: /backups/b
levels: [5m, 1h]
empty:
";
        let node = parse(text).unwrap();
        assert_eq!(node.get("addr"), Some(&s(":9090")));
        let Some(Node::List(dbs)) = node.get("dbs") else {
            panic!("{node:?}")
        };
        assert_eq!(dbs[0].get("path"), Some(&s("/data/app.db")));
        assert_eq!(
            dbs[0].get("replica").and_then(|r| r.get("url")),
            Some(&s("s3://bucket/app"))
        );
        let Some(Node::List(replicas)) = dbs[1].get("replicas") else {
            panic!()
        };
        assert_eq!(replicas[0].get("path"), Some(&s("/backups/b")));
        assert_eq!(
            node.get("levels"),
            Some(&Node::List(vec![s("5m"), s("1h")]))
        );
        assert_eq!(node.get("empty"), Some(&Node::Null));
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        assert!(parse("a: &x 1\n").unwrap_err().contains("line 1"));
        assert!(parse("exec: |\n  run\n").is_err());
        assert!(parse("a: 1\na: 2\n").unwrap_err().contains("twice"));
        assert!(parse("a:\n  b: 1\n c: 2\n").is_err());
        assert!(parse("a: 1\n---\nb: 2\n").unwrap_err().contains("second"));
        assert_eq!(parse("\u{feff}a: 1\n").unwrap().get("a"), Some(&s("1")));
    }
}
