//! JSON output: the server's own JSON, re-indented without reordering its keys.

/// Pretty-prints a JSON document the server sent, keeping its key order; a body that is
/// not valid JSON is returned unchanged. Always ends with a newline.
pub fn pretty(raw: &str) -> String {
    let mut out = if serde_json::from_str::<serde::de::IgnoredAny>(raw).is_ok() {
        reindent(raw)
    } else {
        raw.trim_end().to_owned()
    };
    out.push('\n');
    out
}

/// Two-space indentation in the style of `serde_json::to_string_pretty`; `raw` must be
/// valid JSON.
fn reindent(raw: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    let chars: Vec<char> = raw.chars().collect();
    let mut out = String::with_capacity(raw.len() * 2);
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => {
                // Copy the whole string literal, escapes included.
                out.push(c);
                i += 1;
                while i < chars.len() {
                    let s = chars[i];
                    out.push(s);
                    if s == '\\' {
                        i += 1;
                        out.push(chars[i]);
                    } else if s == '"' {
                        break;
                    }
                    i += 1;
                }
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let next = chars[i + 1..].iter().position(|c| !c.is_whitespace());
                if let Some(off) = next.filter(|&off| chars[i + 1 + off] == close) {
                    out.push(c);
                    out.push(close);
                    i += off + 1;
                } else {
                    out.push(c);
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_compact_object_matches_serde_style_and_keeps_order() {
        let raw =
            r#"{"name":"web-1","id":"x","spec":{"vcpus":2,"tags":[],"m":{}},"a":[1,"b\"c,:{"]}"#;
        assert_eq!(
            pretty(raw),
            "{\n  \"name\": \"web-1\",\n  \"id\": \"x\",\n  \"spec\": {\n    \"vcpus\": 2,\n    \"tags\": [],\n    \"m\": {}\n  },\n  \"a\": [\n    1,\n    \"b\\\"c,:{\"\n  ]\n}\n"
        );
    }

    #[test]
    fn pretty_already_pretty_input_is_stable() {
        let value =
            serde_json::json!({"items": [{"a": 1}, {"b": [true, null]}], "next_cursor": "c"});
        let once = serde_json::to_string_pretty(&value).unwrap();
        assert_eq!(pretty(&once), format!("{once}\n"));
        let compact = serde_json::to_string(&value).unwrap();
        assert_eq!(pretty(&compact), format!("{once}\n"));
    }

    #[test]
    fn pretty_invalid_json_is_returned_unchanged() {
        assert_eq!(pretty("not json\n"), "not json\n");
    }
}
