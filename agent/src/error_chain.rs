//! Renders an error with its sources as one line for task messages and logs, skipping a
//! source whose text its parent already contains (e.g. hyper's repeated causes).

/// `e` and its sources joined with `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct E {
        text: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn e(text: &'static str, source: Option<E>) -> E {
        E {
            text,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn error_chain_joins_sources_and_skips_repeats() {
        let err = e(
            "cannot connect",
            Some(e(
                "tcp connect error",
                Some(e("tcp connect error", Some(e("refused", None)))),
            )),
        );
        assert_eq!(
            error_chain(&err),
            "cannot connect: tcp connect error: refused"
        );
    }
}
