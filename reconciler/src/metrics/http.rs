//! The request-duration middleware: [`tag_route`] (a route layer) copies the matched route
//! template into the response, [`observe`] (the outermost layer) times the request and
//! records it under that template, so requests refused before routing (401) count too.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::RequestLabels;
use crate::api::AppState;

/// The route label of a request no route matched (404s and requests refused before
/// routing): one value, so unknown URIs cannot grow the label set.
pub const UNMATCHED: &str = "unmatched";

/// The matched route template, carried from the route layer out to [`observe`].
#[derive(Debug, Clone)]
struct RouteTemplate(String);

/// Route layer: tags the response with the matched route template.
pub async fn tag_route(req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| RouteTemplate(m.as_str().to_owned()));
    let mut res = next.run(req).await;
    if let Some(t) = template {
        res.extensions_mut().insert(t);
    }
    res
}

/// Outermost layer: observes the request duration by route template, method and code.
pub async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method().as_str());
    let res = next.run(req).await;
    let route = res
        .extensions()
        .get::<RouteTemplate>()
        .map_or(UNMATCHED, |t| t.0.as_str())
        .to_owned();
    let labels = RequestLabels {
        route,
        method: method.to_owned(),
        code: res.status().as_u16().to_string(),
    };
    s.metrics
        .observe_request(&labels, started.elapsed().as_secs_f64());
    res
}

/// The method label: the methods the API serves, anything else `other` (bounded).
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn method_labels_are_bounded() {
        for (method, label) in [
            ("GET", "GET"),
            ("HEAD", "HEAD"),
            ("POST", "POST"),
            ("PUT", "PUT"),
            ("DELETE", "DELETE"),
            ("PATCH", "other"),
            ("BREW", "other"),
            ("get", "other"),
        ] {
            assert_eq!(method_label(method), label, "{method}");
        }
    }
}
