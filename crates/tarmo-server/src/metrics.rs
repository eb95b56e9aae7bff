//! Per-route request counts and latencies.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use tarmo_store::health::{Health, QueueView};
use tarmo_store::metrics::{Histogram, LATENCY_BUCKETS};

use crate::AppState;

type MethodStatusCount = (axum::http::Method, u16, u64);

#[derive(Default)]
pub struct HttpMetrics {
    /// By route: (method, status) and its count.
    requests: Mutex<HashMap<String, Vec<MethodStatusCount>>>,
    latency: Mutex<HashMap<String, Arc<Histogram>>>,
    identifiers_rejected: AtomicU64,
    /// Undecodable CMP strings on ingestion: TC strings, GPP strings.
    signals_invalid: [AtomicU64; 2],
}

impl HttpMetrics {
    pub fn identifiers_rejected(&self, n: u64) {
        self.identifiers_rejected.fetch_add(n, Ordering::Relaxed);
    }

    pub fn signals_invalid(&self, kind: crate::signals::Kind, n: u64) {
        let i = match kind {
            crate::signals::Kind::Tcf => 0,
            crate::signals::Kind::Gpp => 1,
        };
        self.signals_invalid[i].fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP tarmo_http_requests_total HTTP requests by route, method and status.\n# TYPE tarmo_http_requests_total counter"
        );
        let mut reqs: Vec<((String, String, u16), u64)> = self
            .requests
            .lock()
            .expect("metrics")
            .iter()
            .flat_map(|(route, c)| {
                c.iter()
                    .map(move |(m, st, n)| ((route.clone(), m.as_str().to_owned(), *st), *n))
            })
            .collect();
        reqs.sort();
        for ((route, method, status), n) in reqs {
            let _ = writeln!(
                out,
                "tarmo_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP tarmo_http_request_duration_seconds HTTP request latency by route.\n# TYPE tarmo_http_request_duration_seconds histogram"
        );
        let mut lat: Vec<_> = self
            .latency
            .lock()
            .expect("metrics")
            .clone()
            .into_iter()
            .collect();
        lat.sort_by(|a, b| a.0.cmp(&b.0));
        for (route, h) in lat {
            h.render(
                out,
                "tarmo_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        let _ = writeln!(
            out,
            "# HELP tarmo_identifiers_rejected_total Trait values that looked like identifiers but did not parse.\n# TYPE tarmo_identifiers_rejected_total counter"
        );
        let _ = writeln!(
            out,
            "tarmo_identifiers_rejected_total {}",
            self.identifiers_rejected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tarmo_consent_signals_invalid_total CMP strings on ingestion that did not decode (dropped; the events were kept).\n# TYPE tarmo_consent_signals_invalid_total counter"
        );
        for (i, kind) in ["tc_string", "gpp_string"].into_iter().enumerate() {
            let _ = writeln!(
                out,
                "tarmo_consent_signals_invalid_total{{kind=\"{kind}\"}} {}",
                self.signals_invalid[i].load(Ordering::Relaxed)
            );
        }
    }
}

/// Per-route counts and latencies as their own layer (`app()` shows it).
/// A hand-written service whose future wraps the route's without boxing:
/// counting costs no allocation a request.
#[derive(Clone)]
pub struct TrackLayer(pub Arc<AppState>);

impl<S> tower_layer::Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track {
            state: self.0.clone(),
            inner,
        }
    }
}

/// A route's service, counted ([`TrackLayer`]).
#[derive(Clone)]
pub struct Track<S> {
    state: Arc<AppState>,
    inner: S,
}

impl<S> tower_service::Service<Request> for Track<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The matched route template, never the raw path: paths may hold ids.
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        Tracked {
            inner: self.inner.call(req),
            started: Instant::now(),
            route,
            method: Some(method),
            state: self.state.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A route's answer on its way, counted once it is ready.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: Option<Method>,
        state: Arc<AppState>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Tracked<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = ready!(this.inner.poll(cx));
        let route = this.route.as_ref().map_or("unmatched", |m| m.as_str());
        let method = this.method.take().unwrap_or_default();
        count(
            this.state,
            route,
            method,
            resp.status().as_u16(),
            *this.started,
        );
        Poll::Ready(Ok(resp))
    }
}

fn count(s: &AppState, route: &str, method: Method, status: u16, started: Instant) {
    {
        // Counted without allocating once the route, method and status were seen.
        let mut reqs = s.metrics.requests.lock().expect("metrics");
        let counts = match reqs.get_mut(route) {
            Some(c) => c,
            None => reqs.entry(route.to_owned()).or_default(),
        };
        match counts
            .iter_mut()
            .find(|(m, st, _)| *m == method && *st == status)
        {
            Some((_, _, n)) => *n += 1,
            None => counts.push((method, status, 1)),
        }
    }
    let h = {
        let mut lat = s.metrics.latency.lock().expect("metrics");
        match lat.get(route) {
            Some(h) => h.clone(),
            None => lat
                .entry(route.to_owned())
                .or_insert_with(|| Arc::new(Histogram::new(LATENCY_BUCKETS)))
                .clone(),
        }
    };
    h.observe(started.elapsed());
}

/// The parts of this node and its queues, as gauges.
pub fn render_health(out: &mut String, health: &Health, queues: &[QueueView]) {
    let components = health.components();
    let _ = writeln!(
        out,
        "# HELP tarmo_component_up Whether each part of this node (writer, workers) runs (1) or is down and being restarted (0).\n# TYPE tarmo_component_up gauge"
    );
    for c in &components {
        let _ = writeln!(
            out,
            "tarmo_component_up{{component=\"{}\"}} {}",
            c.name,
            u8::from(c.up)
        );
    }
    let _ = writeln!(
        out,
        "# HELP tarmo_component_restarts_total Restarts of each part after a panic.\n# TYPE tarmo_component_restarts_total counter"
    );
    for c in &components {
        let _ = writeln!(
            out,
            "tarmo_component_restarts_total{{component=\"{}\"}} {}",
            c.name, c.restarts
        );
    }
    let _ = writeln!(
        out,
        "# HELP tarmo_storage_full Whether writes fail for want of space now (1) or not (0).\n# TYPE tarmo_storage_full gauge\ntarmo_storage_full {}",
        u8::from(health.storage_full_since().is_some())
    );
    type Gauge = (&'static str, &'static str, fn(&QueueView) -> i64);
    let gauges: [Gauge; 3] = [
        (
            "tarmo_queue_depth",
            "Items waiting or being worked on, by queue.",
            |q| q.depth,
        ),
        (
            "tarmo_queue_oldest_age_seconds",
            "Age of the oldest item waiting, by queue (0 when empty).",
            |q| q.oldest_age_seconds.unwrap_or(0),
        ),
        (
            "tarmo_queue_consumer",
            "Whether something on this node drains the queue (1) or nothing does (0).",
            |q| i64::from(q.consumer),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for q in queues {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", q.name, value(q));
        }
    }
}
