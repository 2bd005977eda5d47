//! The HTTP side: the page at `/`, the JSON API under `/api`, a live tail as server-sent
//! events, the bearer token, and serving on an address.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::error::InspectError;
use crate::inspector::{parse_time, Inspector, Until};

/// The page: one file, no build step.
const PAGE: &str = include_str!("page/index.html");

/// How many ids a page of aggregates holds unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 50;

type Params = Query<BTreeMap<String, String>>;
type Answer<T> = Result<Json<T>, InspectError>;

impl Inspector {
    /// The inspector's routes, to serve as they are or nest in the application's own
    /// router: `/` (the page) and `/api/…` (JSON, and a live tail as server-sent events;
    /// the routes are listed in the crate's README).
    /// With a [`token`](Self::token), every `/api` request needs it.
    pub fn router(self) -> Router {
        let inspector = Arc::new(self);
        let api = Router::new()
            .route("/info", get(info))
            .route("/categories", get(categories))
            .route("/categories/{category}/aggregates", get(aggregates))
            .route("/categories/{category}/events", get(events))
            .route("/categories/{category}/replay", get(replay))
            .route("/categories/{category}/tail", get(tail))
            .route("/projections", get(projections))
            .route("/projections/{name}/dead-letters", get(dead_letters))
            .route("/projections/{name}/redrive", post(redrive))
            .fallback(|| async { InspectError::NotFound("no such API route".to_owned()) })
            .route_layer(middleware::from_fn_with_state(inspector.clone(), authorize))
            .with_state(inspector);
        Router::new().route("/", get(page)).nest("/api", api)
    }

    /// Serves the inspector on `addr` until `shutdown` resolves. Refuses an address that
    /// is not loopback unless a [`token`](Self::token) is set.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), InspectError> {
        self.bind(addr).await?.run(shutdown).await
    }

    /// Binds `addr` (port 0: any free port) without serving yet, so the caller learns the
    /// address first ([`Bound::local_addr`]). Refuses an address that is not loopback
    /// unless a [`token`](Self::token) is set.
    pub async fn bind(self, addr: SocketAddr) -> Result<Bound, InspectError> {
        if !addr.ip().is_loopback() && self.token.is_none() {
            return Err(InspectError::Serve(format!(
                "refusing to serve the inspector on {addr}, which is not a loopback address, \
                 without a bearer token: set one with `Inspector::token`"
            )));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| InspectError::Serve(format!("cannot bind {addr}: {error}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|error| InspectError::Serve(format!("cannot bind {addr}: {error}")))?;
        Ok(Bound {
            listener,
            local_addr,
            router: self.router(),
        })
    }
}

/// An inspector bound to an address, not serving yet.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    router: Router,
}

impl Bound {
    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), InspectError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|error| InspectError::Serve(format!("the inspector stopped: {error}")))
    }
}

/// Lets a request through if no token is set, or if it carries the token.
async fn authorize(
    State(inspector): State<Arc<Inspector>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &inspector.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => {
            next.run(request).await
        }
        Some(_) => InspectError::Unauthorized("wrong bearer token".to_owned()).into_response(),
        None => InspectError::Unauthorized(
            "this inspector needs `Authorization: Bearer <token>`".to_owned(),
        )
        .into_response(),
    }
}

async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn info(State(inspector): State<Arc<Inspector>>) -> Json<serde_json::Value> {
    Json(json!({
        "writable": inspector.writable(),
        "replayable": inspector.replayable(),
    }))
}

async fn categories(State(inspector): State<Arc<Inspector>>) -> Answer<serde_json::Value> {
    Ok(Json(json!({ "categories": inspector.categories().await? })))
}

async fn aggregates(
    State(inspector): State<Arc<Inspector>>,
    Path(category): Path<String>,
    Query(params): Params,
) -> Answer<crate::views::AggregatePage> {
    let limit = number(&params, "limit")?.map_or(Ok(DEFAULT_PAGE), |limit| {
        usize::try_from(limit)
            .map_err(|_| InspectError::BadRequest(format!("a page of {limit} ids is too large")))
    })?;
    let after = params.get("after").map(String::as_str);
    Ok(Json(inspector.aggregates(&category, after, limit).await?))
}

async fn events(
    State(inspector): State<Arc<Inspector>>,
    Path(category): Path<String>,
    Query(params): Params,
) -> Answer<crate::views::StreamEvents> {
    let id = aggregate_id(&params)?;
    let (from, to) = (number(&params, "from")?, number(&params, "to")?);
    Ok(Json(inspector.events(&category, id, from, to).await?))
}

async fn replay(
    State(inspector): State<Arc<Inspector>>,
    Path(category): Path<String>,
    Query(params): Params,
) -> Answer<crate::views::ReplayView> {
    let id = aggregate_id(&params)?;
    let until = match (number(&params, "version")?, params.get("as_of")) {
        (Some(_), Some(_)) => {
            return Err(InspectError::BadRequest(
                "give `version` or `as_of`, not both".to_owned(),
            ))
        }
        (Some(version), None) => Until::Version(version),
        (None, Some(time)) => Until::Time(parse_time(time)?),
        (None, None) => Until::Latest,
    };
    Ok(Json(inspector.replay(&category, id, until).await?))
}

async fn projections(State(inspector): State<Arc<Inspector>>) -> Answer<serde_json::Value> {
    Ok(Json(
        json!({ "projections": inspector.projection_views().await? }),
    ))
}

async fn dead_letters(
    State(inspector): State<Arc<Inspector>>,
    Path(name): Path<String>,
) -> Answer<crate::views::DeadLettersView> {
    Ok(Json(inspector.dead_letters(&name).await?))
}

async fn redrive(
    State(inspector): State<Arc<Inspector>>,
    Path(name): Path<String>,
) -> Answer<crate::views::RedriveView> {
    Ok(Json(inspector.redrive(&name).await?))
}

async fn tail(
    State(inspector): State<Arc<Inspector>>,
    Path(category): Path<String>,
    Query(params): Params,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, InspectError> {
    let after =
        match params.get("after") {
            Some(text) => Some(text.parse().map_err(|_| {
                InspectError::BadRequest(format!("`after` is no position: {text:?}"))
            })?),
            None => None,
        };
    let events = inspector.tail(&category, after).await?;
    let messages = events.map(|event| {
        Ok(match event {
            Ok(event) => Event::default()
                .event("event")
                .json_data(&event)
                .unwrap_or_else(|error| Event::default().event("error").data(error.to_string())),
            Err(error) => Event::default().event("error").data(error.to_string()),
        })
    });
    Ok(Sse::new(messages).keep_alive(KeepAlive::default()))
}

/// The aggregate id, parameter `id`: a query parameter rather than a path segment, since
/// ids are any text (empty, `..`, with slashes), which paths cannot all carry.
fn aggregate_id(params: &BTreeMap<String, String>) -> Result<&str, InspectError> {
    params.get("id").map(String::as_str).ok_or_else(|| {
        InspectError::BadRequest("give the aggregate's id as the query parameter `id`".to_owned())
    })
}

/// Parameter `name` as a whole number, if given.
fn number(params: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, InspectError> {
    params
        .get(name)
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                InspectError::BadRequest(format!("`{name}` must be a whole number, not {text:?}"))
            })
        })
        .transpose()
}
