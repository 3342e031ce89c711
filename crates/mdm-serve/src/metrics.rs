//! What the server counts, in the format every monitoring stack reads: `GET /metrics` answers
//! Prometheus' (OpenMetrics') text exposition, written by the `prometheus-client` crate (the
//! Prometheus project's own Rust client) rather than by hand.
//!
//! One [`Metrics`] is made by the [`Engine`](crate::Engine) and shared with the HTTP side: the
//! worker counts jobs, batches, steps, forward passes and tokens; the routes count requests by
//! endpoint and status, their time, timeouts and open connections. `GET /health`'s `stats` read
//! the same counters.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A request's labels: the route it matched and the status it got.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route (`/v1/completions`, ...), `other` for none.
    pub endpoint: String,
    /// The HTTP status code.
    pub status: u16,
}

/// A route's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// The matched route.
    pub endpoint: String,
}

/// Seconds, from 1 ms to about 9 minutes in 20 doublings.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Every metric the server exposes (names as scraped: counters gain `_total`).
pub struct Metrics {
    registry: Registry,
    /// `mdm_requests_total{endpoint, status}`: HTTP requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// `mdm_request_duration_seconds{endpoint}`: from the request to its response's head (a
    /// stream's head goes out when it starts; its generation is `mdm_generation_seconds`).
    pub request_seconds: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    /// `mdm_queue_depth`: jobs waiting for the worker.
    pub queue_depth: Gauge,
    /// `mdm_jobs_total`: jobs the worker took.
    pub jobs: Counter,
    /// `mdm_batch_rows`: rows of each generation batch, those that joined it included (a job
    /// alone is a batch of one).
    pub batch_rows: Histogram,
    /// `mdm_generated_tokens_total`: tokens returned by generations.
    pub generated_tokens: Counter,
    /// `mdm_forward_passes_total`: the model's forward passes while generating.
    pub forward_passes: Counter,
    /// `mdm_step_seconds`: one decoding step (its forward pass and the sampler's work).
    pub step_seconds: Histogram,
    /// `mdm_generation_seconds`: a generation batch from its first step to its last.
    pub generation_seconds: Histogram,
    /// `mdm_cancelled_total`: jobs dropped or stopped because their client went away.
    pub cancelled: Counter,
    /// `mdm_timeouts_total`: requests that ran past the request timeout.
    pub timeouts: Counter,
    /// `mdm_panics_total`: jobs or handlers that panicked (answered 500).
    pub panics: Counter,
    /// `mdm_open_connections`: TCP connections being served.
    pub open_connections: Gauge,
    /// `mdm_draining_refusals_total`: requests answered 503 while the server drains for shutdown.
    pub draining_refusals: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds_histogram),
            queue_depth: Gauge::default(),
            jobs: Counter::default(),
            batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            generated_tokens: Counter::default(),
            forward_passes: Counter::default(),
            step_seconds: seconds_histogram(),
            generation_seconds: seconds_histogram(),
            cancelled: Counter::default(),
            timeouts: Counter::default(),
            panics: Counter::default(),
            open_connections: Gauge::default(),
            draining_refusals: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "mdm_requests",
            "HTTP requests answered, by endpoint and status",
            m.requests.clone(),
        );
        r.register(
            "mdm_request_duration_seconds",
            "Time from a request to its response's head, by endpoint",
            m.request_seconds.clone(),
        );
        r.register(
            "mdm_queue_depth",
            "Jobs waiting for the model's worker",
            m.queue_depth.clone(),
        );
        r.register("mdm_jobs", "Jobs the worker took", m.jobs.clone());
        r.register(
            "mdm_batch_rows",
            "Rows of each generation batch",
            m.batch_rows.clone(),
        );
        r.register(
            "mdm_generated_tokens",
            "Tokens returned by generations",
            m.generated_tokens.clone(),
        );
        r.register(
            "mdm_forward_passes",
            "Forward passes of the model while generating",
            m.forward_passes.clone(),
        );
        r.register(
            "mdm_step_seconds",
            "One decoding step: its forward pass and the sampler's work",
            m.step_seconds.clone(),
        );
        r.register(
            "mdm_generation_seconds",
            "A generation batch from its start to its end",
            m.generation_seconds.clone(),
        );
        r.register(
            "mdm_cancelled",
            "Jobs dropped or stopped because their client went away",
            m.cancelled.clone(),
        );
        r.register(
            "mdm_timeouts",
            "Requests that ran past the request timeout",
            m.timeouts.clone(),
        );
        r.register(
            "mdm_panics",
            "Jobs or handlers that panicked",
            m.panics.clone(),
        );
        r.register(
            "mdm_open_connections",
            "TCP connections being served",
            m.open_connections.clone(),
        );
        r.register(
            "mdm_draining_refusals",
            "Requests answered 503 while the server drains for shutdown",
            m.draining_refusals.clone(),
        );
        m
    }

    /// Counts an answered request.
    pub fn observe_request(&self, endpoint: &str, status: u16, took: Duration) {
        let endpoint = endpoint.to_string();
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.clone(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&EndpointLabel { endpoint })
            .observe(took.as_secs_f64());
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // writing into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_and_counts() {
        let m = Metrics::new();
        m.observe_request("/v1/completions", 200, Duration::from_millis(30));
        m.observe_request("/v1/completions", 400, Duration::from_millis(1));
        m.forward_passes.inc_by(7);
        m.batch_rows.observe(3.0);
        let text = m.render();
        assert!(text.contains(r#"mdm_requests_total{endpoint="/v1/completions",status="200"} 1"#));
        assert!(text.contains(r#"mdm_requests_total{endpoint="/v1/completions",status="400"} 1"#));
        assert!(text.contains("mdm_forward_passes_total 7"));
        assert!(
            text.contains(r#"mdm_batch_rows_bucket{le="4.0"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mdm_batch_rows_bucket{le="2.0"} 0"#),
            "{text}"
        );
        for name in [
            "mdm_queue_depth",
            "mdm_step_seconds",
            "mdm_generation_seconds",
            "mdm_cancelled_total",
            "mdm_timeouts_total",
            "mdm_panics_total",
            "mdm_open_connections",
            "mdm_generated_tokens_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
