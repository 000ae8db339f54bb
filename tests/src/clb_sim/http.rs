//! The HTTP face of the simulator: every request goes through one handler that hands it
//! to the model (`state.rs`) under the lock, after the configured delay.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;

use super::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    AxState(shared): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET
        && uri.path().starts_with("/v1.0/")
        && let Some(kind) = shared.lock().take_oversized()
    {
        return oversized(kind);
    }
    let delay = shared.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let token = headers.get("x-auth-token").and_then(|v| v.to_str().ok());
    let reply = shared.lock().handle(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or_default(),
        token,
        &body,
    );
    let mut builder = Response::builder().status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK));
    for (name, value) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            builder = builder.header(name, v);
        }
    }
    let body = match reply.body {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    builder.body(body).unwrap_or_else(|_| Response::new(Body::empty()))
}

/// A `200` whose body starts like a node list and goes on with 64 KiB chunks of nodes.
fn oversized(kind: super::Oversized) -> Response {
    const CHUNK: usize = 64 << 10;
    let node = br#"{"address":"10.0.0.1","port":80,"condition":"ENABLED","id":1,"status":"ONLINE"},"#;
    let head = Bytes::from_static(br#"{"loadBalancer":{"id":1,"status":"ACTIVE","nodes":["#);
    let chunk = Bytes::from(node.repeat(CHUNK / node.len()));
    let head_len = head.len();
    let first = futures::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(head) });
    let rest = futures::stream::repeat(Ok(chunk.clone()));
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json");
    let resp = match kind {
        super::Oversized::Endless => builder.body(Body::from_stream(futures::StreamExt::chain(first, rest))),
        super::Oversized::Declared(len) => {
            // Exactly `len` bytes: the head, whole chunks, then a cut chunk.
            let body_len = usize::try_from(len).unwrap_or(usize::MAX).saturating_sub(head_len);
            let (whole, tail) = (body_len / chunk.len(), body_len % chunk.len());
            let last = chunk.slice(..tail);
            let body = futures::StreamExt::chain(
                futures::StreamExt::chain(first, futures::StreamExt::take(rest, whole)),
                futures::stream::once(async move { Ok(last) }),
            );
            builder
                .header("content-length", len.to_string())
                .body(Body::from_stream(body))
        }
    };
    resp.unwrap_or_else(|_| Response::new(Body::empty()))
}
