//! `google.api.http` path templates: parsing and matching.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{name}` is `{name=*}`: one segment. A `**` matches the rest of the path
//! and must come last. Matching percent-decodes what a variable captured;
//! a multi-segment capture keeps `%2F` encoded, as the rule's documentation
//! says, so it cannot invent a `/`.

use std::fmt;

/// One piece of a template, after variables are flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    /// A fixed segment.
    Literal(String),
    /// One segment of any text.
    Any,
    /// The rest of the path (zero or more segments).
    Rest,
}

/// A variable: the field it sets and the pieces it spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// The field path (`task_id`, `parent.name`).
    pub field: String,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    pieces: Vec<Piece>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// Why a template in a contract is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template `{template}`: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let error = |reason| TemplateError {
            template: text.to_owned(),
            reason,
        };
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| error("must start with `/`"))?;
        // The verb follows the last `:` outside braces after the last `/`.
        let (path, verb) = split_verb(rest);
        if verb.is_some_and(|v| v.is_empty() || v.contains(['/', '{', '}'])) {
            return Err(error("the verb after `:` must be a literal"));
        }
        let mut pieces = Vec::new();
        let mut variables = Vec::new();
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(after) = chars.strip_prefix('{') {
                let close = after.find('}').ok_or_else(|| error("unclosed `{`"))?;
                let inner = &after[..close];
                let (field, sub) = match inner.split_once('=') {
                    Some((field, sub)) => (field, sub),
                    None => (inner, "*"),
                };
                if field.is_empty()
                    || !field.split('.').all(|p| {
                        !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    })
                {
                    return Err(error("a variable names a field path"));
                }
                if sub.contains(['{', '}']) {
                    return Err(error("variables cannot nest"));
                }
                let start = pieces.len();
                for segment in sub.split('/') {
                    pieces.push(piece(segment).ok_or_else(|| error("empty segment"))?);
                }
                variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end: pieces.len(),
                });
                chars = &after[close + 1..];
            } else {
                let end = chars.find(['/', '{']).unwrap_or(chars.len());
                if end == 0 {
                    return Err(error("empty segment"));
                }
                pieces.push(piece(&chars[..end]).ok_or_else(|| error("empty segment"))?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some("") => return Err(error("trailing `/`")),
                Some(next) => chars = next,
                None if chars.is_empty() => {}
                None => return Err(error("a variable must be a whole segment")),
            }
        }
        if pieces.is_empty() {
            return Err(error("no segments"));
        }
        if let Some(i) = pieces.iter().position(|p| *p == Piece::Rest)
            && i + 1 != pieces.len()
        {
            return Err(error("`**` must be the last segment"));
        }
        Ok(Self {
            text: text.to_owned(),
            pieces,
            variables,
            verb: verb.map(str::to_owned),
        })
    }

    /// The variables, in order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The verb, if any.
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// How specific the template is, for trying the more specific first:
    /// a verb, then more literal segments, then fewer wildcards.
    pub fn specificity(&self) -> (bool, usize, usize) {
        let literals = self
            .pieces
            .iter()
            .filter(|p| matches!(p, Piece::Literal(_)))
            .count();
        (
            self.verb.is_some(),
            literals,
            usize::MAX - self.pieces.len(),
        )
    }

    /// The template as an OpenAPI path: `/v1/tasks/{task_id}:cancel`
    /// (a multi-segment variable becomes one parameter).
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.pieces.len() {
            out.push('/');
            if let Some(v) = self.variables.iter().find(|v| v.start == i) {
                out.push('{');
                out.push_str(&v.field);
                out.push('}');
                i = v.end.max(i + 1);
                continue;
            }
            match &self.pieces[i] {
                Piece::Literal(l) => out.push_str(l),
                Piece::Any => out.push('*'),
                Piece::Rest => out.push_str("**"),
            }
            i += 1;
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    /// Matches a request path (without its query); on success, the
    /// variables' values (percent-decoded), in template order.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let segments: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        // Which request segments each piece took: [from, to).
        let mut spans = Vec::with_capacity(self.pieces.len());
        let mut at = 0;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(literal) => {
                    if segments.get(at) != Some(&literal.as_str()) {
                        return None;
                    }
                    spans.push((at, at + 1));
                    at += 1;
                }
                Piece::Any => {
                    let segment = segments.get(at)?;
                    if segment.is_empty() {
                        return None;
                    }
                    spans.push((at, at + 1));
                    at += 1;
                }
                Piece::Rest => {
                    spans.push((at, segments.len()));
                    at = segments.len();
                }
            }
        }
        if at != segments.len() {
            return None;
        }
        let mut values = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let from = spans[variable.start].0;
            let to = spans[variable.end - 1].1;
            let raw = &segments[from..to];
            let value = if raw.len() == 1 && variable.end - variable.start == 1 {
                let only = &self.pieces[variable.start];
                let decoded = decode(raw[0], *only != Piece::Rest)?;
                if decoded.is_empty() {
                    return None;
                }
                decoded
            } else {
                raw.iter()
                    .map(|s| decode(s, false))
                    .collect::<Option<Vec<_>>>()?
                    .join("/")
            };
            values.push((variable.field.clone(), value));
        }
        Some(values)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn split_verb(path: &str) -> (&str, Option<&str>) {
    let last_slash = path.rfind('/').map_or(0, |i| i + 1);
    let last = &path[last_slash..];
    // A `:` inside a variable (`{x=a:b}`) is not a verb.
    if last.contains('}') {
        let close = path.rfind('}').unwrap_or(0);
        return match path[close..].find(':') {
            Some(colon) => (&path[..close + colon], Some(&path[close + colon + 1..])),
            None => (path, None),
        };
    }
    match last.find(':') {
        Some(colon) => (
            &path[..last_slash + colon],
            Some(&path[last_slash + colon + 1..]),
        ),
        None => (path, None),
    }
}

fn piece(segment: &str) -> Option<Piece> {
    match segment {
        "" => None,
        "*" => Some(Piece::Any),
        "**" => Some(Piece::Rest),
        literal => Some(Piece::Literal(literal.to_owned())),
    }
}

/// Percent-decodes one segment; `%2F` stays encoded unless `slash` is true.
/// `None` for a bad escape or text that is not UTF-8.
fn decode(segment: &str, slash: bool) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if byte == b'/' && !slash {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(byte);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template).unwrap().matches(path)
    }

    fn pair(field: &str, value: &str) -> (String, String) {
        (field.to_owned(), value.to_owned())
    }

    #[test]
    fn a_field_variable_takes_one_segment() {
        assert_eq!(
            vars("/v1/tasks/{task_id}", "/v1/tasks/abc"),
            Some(vec![pair("task_id", "abc")])
        );
        assert_eq!(vars("/v1/tasks/{task_id}", "/v1/tasks/a/b"), None);
        assert_eq!(vars("/v1/tasks/{task_id}", "/v1/tasks/"), None);
        assert_eq!(vars("/v1/tasks/{task_id}", "/v1/tasks"), None);
    }

    #[test]
    fn a_verb_is_matched_and_stripped() {
        let t = "/v1/tasks/{task_id}:cancel";
        assert_eq!(
            vars(t, "/v1/tasks/x:cancel"),
            Some(vec![pair("task_id", "x")])
        );
        assert_eq!(vars(t, "/v1/tasks/x:watch"), None);
        assert_eq!(vars(t, "/v1/tasks/x"), None);
        assert_eq!(
            vars("/v1/teams:validate", "/v1/teams:validate"),
            Some(vec![])
        );
        assert_eq!(vars("/v1/teams:validate", "/v1/teams"), None);
        assert_eq!(Template::parse(t).unwrap().verb(), Some("cancel"));
    }

    #[test]
    fn a_sub_template_spans_several_segments() {
        let t = "/v1/{name=projects/*/tasks/*}";
        assert_eq!(
            vars(t, "/v1/projects/p/tasks/t"),
            Some(vec![pair("name", "projects/p/tasks/t")])
        );
        assert_eq!(vars(t, "/v1/projects/p/jobs/t"), None);
        let rest = "/v1/files/{path=**}";
        assert_eq!(
            vars(rest, "/v1/files/a/b/c"),
            Some(vec![pair("path", "a/b/c")])
        );
    }

    #[test]
    fn captures_are_percent_decoded_but_never_invent_a_slash() {
        assert_eq!(
            vars("/v1/tools/{tool}:invoke", "/v1/tools/mcp%2Efs%20x:invoke"),
            Some(vec![pair("tool", "mcp.fs x")])
        );
        assert_eq!(
            vars("/v1/{name=a/*}", "/v1/a/x%2Fy"),
            Some(vec![pair("name", "a/x%2Fy")])
        );
        assert_eq!(vars("/v1/tasks/{id}", "/v1/tasks/%zz"), None);
        assert_eq!(vars("/v1/tasks/{id}", "/v1/tasks/%ff"), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "v1/tasks",
            "/v1/{unclosed",
            "/v1/{a={b}}",
            "/v1/**/x",
            "/v1/tasks/",
            "/v1//x",
            "/v1/x:",
            "/v1/{}",
            "/v1/x{y}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn openapi_paths_name_the_variables() {
        let t = Template::parse("/v1/tasks/{task_id}:cancel").unwrap();
        assert_eq!(t.openapi_path(), "/v1/tasks/{task_id}:cancel");
        let t = Template::parse("/v1/{name=projects/*}").unwrap();
        assert_eq!(t.openapi_path(), "/v1/{name}");
    }

    #[test]
    fn verbs_sort_before_plain_templates() {
        let plain = Template::parse("/v1/tasks/{task_id}").unwrap();
        let verb = Template::parse("/v1/tasks/{task_id}:watch").unwrap();
        assert!(verb.specificity() > plain.specificity());
    }
}
