//! The HTTP side: HTTP/1.1 connections served with hyper, each request logged, matched against
//! the scripted faults, then routed: discovery (`/version`, `/api`, `/apis`, group resource
//! lists), health (`/healthz`, `/livez`, `/readyz`), and the resource paths: GET (one object, a
//! list, or a watch), POST, PUT, PATCH and DELETE of objects and of the `status` subresource,
//! DELETE of collections, `dryRun=All`. Lists carry `kind: XList`, `metadata.resourceVersion`
//! and, with `limit`, `continue`; their items carry no kind (as the real server's do not).
//!
//! Every connection belongs to one listening period: when the test stops the listener, the
//! connections (and their watches) are cut with it.
//!
//! Over 500 lines: one dispatch of every verb on every path form, kept in one place so that the
//! codes and `Status` bodies stay alike across them.

use super::discovery;
use super::faults::{FaultAction, Faults, RequestLog};
use super::patch::PatchFormat;
use super::resources::{parse_path, PathError, ResourceType, Target};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Store, WriteScope};
use super::watch::{self, Filter, Start, WatchRequest};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the server and the test handle share.
pub struct Shared {
    pub store: Mutex<Store>,
    /// The resourceVersion after the last write: watches wake on it.
    pub changed: tokio::sync::watch::Sender<u64>,
    pub faults: Mutex<Faults>,
    pub log: Mutex<RequestLog>,
    pub bookmark_interval: Duration,
    /// Cancelled (and replaced) when the test closes every watch.
    pub watches: Mutex<CancellationToken>,
    /// The port, for discovery's server address.
    pub port: std::sync::atomic::AtomicU16,
}

impl Shared {
    /// Runs `f` on the store, then wakes the watches.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (result, version) = {
            let mut store = self.store.lock().expect("store lock");
            let result = f(&mut store);
            (result, store.resource_version())
        };
        self.changed.send_replace(version);
        result
    }
}

/// A response body: whole, or streamed from a channel (watches).
pub enum ResponseBody {
    Whole(Option<Bytes>),
    Streamed(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Streamed(receiver) => receiver
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResponseBody::Whole(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ResponseBody::Whole(Some(bytes)) => {
                hyper::body::SizeHint::with_exact(bytes.len() as u64)
            }
            ResponseBody::Whole(None) => hyper::body::SizeHint::with_exact(0),
            ResponseBody::Streamed(_) => hyper::body::SizeHint::default(),
        }
    }
}

type Answer = Response<ResponseBody>;

fn json_response(code: u16, value: &Value) -> Answer {
    let body = serde_json::to_vec(value).expect("a JSON value serializes");
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(ResponseBody::Whole(Some(Bytes::from(body))))
        .expect("a valid response")
}

fn text_response(code: u16, text: &str) -> Answer {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(ResponseBody::Whole(Some(Bytes::from(text.to_string()))))
        .expect("a valid response")
}

fn error_response(error: &ApiError) -> Answer {
    let mut response = json_response(error.code, &error.to_status());
    if let Some(seconds) = error.retry_after {
        response.headers_mut().insert(
            "retry-after",
            http::HeaderValue::from_str(&seconds.to_string()).expect("digits are a header value"),
        );
    }
    response
}

/// Serves one connection until it ends or `stop` is cancelled.
pub async fn serve_connection(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    stop: CancellationToken,
) {
    let service_stop = stop.clone();
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        let stop = service_stop.clone();
        async move { handle(shared, request, stop).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = stop.cancelled() => {}
    }
}

/// One request: logged, faults applied, routed. An `Err` drops the connection.
async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    stop: CancellationToken,
) -> Result<Answer, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let query: HashMap<String, String> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let id = shared.log.lock().expect("log lock").record(
        method.as_str(),
        &path,
        &raw_query,
        content_type.clone(),
        String::from_utf8_lossy(&body).into_owned(),
    );
    let is_watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let fault = shared
        .faults
        .lock()
        .expect("faults lock")
        .take(method.as_str(), &path, is_watch);
    let answer = match fault {
        Some(FaultAction::Respond(error)) => error_response(&error),
        Some(FaultAction::Hang) => {
            stop.cancelled().await;
            return Err(std::io::Error::other("the server stopped listening"));
        }
        Some(FaultAction::Disconnect) => {
            return Err(std::io::Error::other("scripted disconnect"));
        }
        Some(FaultAction::Delay(delay)) => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return Err(std::io::Error::other("the server stopped listening")),
            }
            route(
                &shared,
                &method,
                &path,
                &query,
                content_type.as_deref(),
                &body,
                &stop,
            )
        }
        None => route(
            &shared,
            &method,
            &path,
            &query,
            content_type.as_deref(),
            &body,
            &stop,
        ),
    };
    shared
        .log
        .lock()
        .expect("log lock")
        .set_status(id, answer.status().as_u16());
    Ok(answer)
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
    stop: &CancellationToken,
) -> Answer {
    match (method, path.trim_end_matches('/')) {
        (&Method::GET, "/healthz" | "/livez" | "/readyz") => return text_response(200, "ok"),
        (&Method::GET, "/version") => return json_response(200, &discovery::version()),
        (&Method::GET, "/api") => {
            let port = shared.port.load(std::sync::atomic::Ordering::Relaxed);
            return json_response(200, &discovery::api_versions(port));
        }
        (&Method::GET, "/apis") => return json_response(200, &discovery::api_groups()),
        (&Method::GET, p) => {
            if let Some(list) = discovery::resource_list(p) {
                return json_response(200, &list);
            }
        }
        _ => {}
    }
    let target = match parse_path(path) {
        Ok(target) => target,
        Err(PathError::NotFound) => {
            return error_response(&ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ))
        }
        Err(PathError::BadScope(message)) => {
            return error_response(&ApiError::new(404, "NotFound", message))
        }
    };
    match serve(shared, method, &target, query, content_type, body, stop) {
        Ok(answer) => answer,
        Err(error) => error_response(&error),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
    })
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    matches!(query.get(name).map(String::as_str), Some("true" | "1"))
}

fn filter_of(target: &Target, query: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").map(String::as_str).unwrap_or(""),
        target.resource,
    )
    .map_err(ApiError::bad_request)?;
    Ok(Filter {
        resource: target.resource,
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

/// Items of a list carry no kind or apiVersion.
fn list_item(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    object
}

#[allow(clippy::too_many_arguments)]
fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
    stop: &CancellationToken,
) -> Result<Answer, ApiError> {
    let resource: &'static ResourceType = target.resource;
    let namespace = target.namespace.clone().unwrap_or_default();
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )))
        }
    };
    let scope = if target.subresource.is_some() {
        WriteScope::Status
    } else {
        WriteScope::Object
    };
    // Writes run on a copy for dryRun=All.
    let write = |f: &dyn Fn(&mut Store) -> Result<Value, ApiError>| -> Result<Value, ApiError> {
        if dry_run {
            let mut copy = shared.store.lock().expect("store lock").clone();
            f(&mut copy)
        } else {
            shared.with_store(|store| f(store))
        }
    };
    if resource.namespaced && target.namespace.is_none() && *method != Method::GET {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    match (&target.name, method) {
        (None, &Method::GET) if flag(query, "watch") => {
            Ok(start_watch(shared, target, query, stop)?)
        }
        (None, &Method::GET) => {
            let filter = filter_of(target, query)?;
            let limit =
                match query.get("limit") {
                    Some(l) => Some(l.parse::<usize>().map_err(|_| {
                        ApiError::bad_request(format!("limit: Invalid value: {l:?}"))
                    })?),
                    None => None,
                };
            let page = shared.store.lock().expect("store lock").list(
                resource,
                target.namespace.as_deref(),
                |o| filter.matches(o),
                limit,
                query
                    .get("continue")
                    .map(String::as_str)
                    .filter(|c| !c.is_empty()),
            )?;
            let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(token) = page.continue_token {
                metadata["continue"] = json!(token);
            }
            if let Some(remaining) = page.remaining {
                metadata["remainingItemCount"] = json!(remaining);
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": resource.list_kind(),
                    "apiVersion": resource.api_version(),
                    "metadata": metadata,
                    "items": page.items.into_iter().map(list_item).collect::<Vec<_>>(),
                }),
            ))
        }
        (None, &Method::POST) => {
            let object = parse_body(body)?;
            let created = write(&|store| store.create(resource, &namespace, object.clone()))?;
            Ok(json_response(201, &created))
        }
        (None, &Method::DELETE) => {
            let filter = filter_of(target, query)?;
            let deleted = write(&|store| {
                let names: Vec<(String, String)> = store
                    .select(resource, target.namespace.as_deref(), |o| filter.matches(o))
                    .iter()
                    .map(|o| {
                        (
                            o["metadata"]["namespace"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            o["metadata"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        )
                    })
                    .collect();
                let mut items = Vec::new();
                for (ns, name) in names {
                    let object = store.get(resource, &ns, &name)?;
                    store.delete(resource, &ns, &name, &Value::Null)?;
                    items.push(list_item(object));
                }
                Ok(json!(items))
            })?;
            let version = shared.store.lock().expect("store lock").resource_version();
            Ok(json_response(
                200,
                &json!({
                    "kind": resource.list_kind(),
                    "apiVersion": resource.api_version(),
                    "metadata": {"resourceVersion": version.to_string()},
                    "items": deleted,
                }),
            ))
        }
        (Some(name), &Method::GET) if !flag(query, "watch") => {
            let object = shared
                .store
                .lock()
                .expect("store lock")
                .get(resource, &namespace, name)?;
            Ok(json_response(200, &object))
        }
        (Some(name), &Method::PUT) => {
            let object = parse_body(body)?;
            let replaced =
                write(&|store| store.replace(resource, &namespace, name, object.clone(), scope))?;
            Ok(json_response(200, &replaced))
        }
        (Some(name), &Method::PATCH) => {
            let content_type = content_type.unwrap_or("");
            let format = PatchFormat::from_content_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            let patch = parse_body(body)?;
            let patched =
                write(&|store| store.patch(resource, &namespace, name, format, &patch, scope))?;
            Ok(json_response(200, &patched))
        }
        (Some(name), &Method::DELETE) if target.subresource.is_none() => {
            let options = if body.is_empty() {
                Value::Null
            } else {
                parse_body(body)?
            };
            let answer = write(&|store| {
                store.delete(resource, &namespace, name, &options["preconditions"])
            })?;
            Ok(json_response(200, &answer))
        }
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

fn start_watch(
    shared: &Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
    stop: &CancellationToken,
) -> Result<Answer, ApiError> {
    let filter = filter_of(target, query)?;
    let start = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => Start::Now,
        Some(version) => Start::After(version.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid resource version: {version:?}"))
        })?),
    };
    let send_initial_events = flag(query, "sendInitialEvents");
    let bookmarks = flag(query, "allowWatchBookmarks");
    if send_initial_events
        && (!bookmarks
            || query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan"))
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            "sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
        ));
    }
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
            ApiError::bad_request(format!("timeoutSeconds: Invalid value: {t:?}"))
        })?)),
        None => None,
    };
    let (sender, receiver) = mpsc::channel(256);
    // Cut when the listener stops or the test closes the watches.
    let cut = CancellationToken::new();
    let closed_by_test = shared.watches.lock().expect("watches lock").clone();
    let request = WatchRequest {
        filter,
        start,
        send_initial_events,
        bookmarks,
        timeout,
    };
    let stream_cut = cut.clone();
    tokio::spawn(watch::stream(shared.clone(), request, sender, stream_cut));
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = closed_by_test.cancelled() => {}
        }
        cut.cancel();
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(ResponseBody::Streamed(receiver))
        .expect("a valid response"))
}
