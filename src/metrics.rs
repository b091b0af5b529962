//! The Prometheus metrics of SPEC §7, one registry per gateway (so two gateways in one process,
//! as in tests, never share counters), rendered on the admin listener's `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::route::Operation;

/// The `op` label of a request that was refused before it was routed.
const UNROUTED: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpStatus {
    op: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpCode {
    op: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientClass {
    client: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientRule {
    client: String,
    rule: &'static str,
}

/// The worker thread that accepted a caller connection (`server.workers`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Worker {
    worker: u32,
}

type Latency = Family<Op, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.25 ms to about 8 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<OpStatus, Counter>,
    request_duration: Latency,
    upstream_duration: Latency,
    patch_window: Histogram,
    upstream_auth_failures: Counter,
    validation_refusals: Family<OpCode, Counter>,
    rate_limited: Family<ClientClass, Counter>,
    rate_limited_dry_run: Family<ClientClass, Counter>,
    rate_limit_buckets: Gauge,
    cluster_up: Gauge,
    cluster_errors: Counter,
    cluster_lock_wait: Histogram,
    unauthenticated_addresses: Gauge,
    policy_refusals: Family<ClientRule, Counter>,
    audit_records: Counter,
    audit_failures: Counter,
    audit_fsync: Histogram,
    audit_queue_depth: Gauge,
    audit_queue_bytes: Gauge,
    audit_records_dropped: Counter,
    audit_free_bytes: Gauge,
    audit_min_free_bytes: Gauge,
    audit_shipped: Counter,
    audit_ship_lag: Gauge,
    audit_ship_failures: Counter,
    ready: Gauge,
    open_connections: Gauge,
    connection_cap_reached: Counter,
    worker_connections: Family<Worker, Counter>,
    /// What `ready` is made of; the gauge is 1 only when all three hold, so no one source can
    /// overwrite another's "not ready" (the audit writer's next batch, say, during shutdown).
    readiness: Readiness,
}

/// The parts of readiness, each set by its own source. The upstream is presumed reachable until
/// a `/readyz` check says otherwise; the others start false.
#[derive(Debug)]
struct Readiness {
    serving: AtomicBool,
    audit: AtomicBool,
    upstream: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            serving: AtomicBool::new(false),
            audit: AtomicBool::new(false),
            upstream: AtomicBool::new(true),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<OpStatus, Counter>::default();
        let request_duration = Latency::new_with_constructor(latency);
        let upstream_duration = Latency::new_with_constructor(latency);
        // From 10 µs: the window is the gateway's own work plus one fsync'd intent record.
        let patch_window = Histogram::new(exponential_buckets(0.000_010, 2.0, 20));
        let upstream_auth_failures = Counter::default();
        let ready = Gauge::default();
        let validation_refusals = Family::<OpCode, Counter>::default();
        let rate_limited = Family::<ClientClass, Counter>::default();
        let rate_limited_dry_run = Family::<ClientClass, Counter>::default();
        let rate_limit_buckets = Gauge::default();
        let cluster_up = Gauge::default();
        let cluster_errors = Counter::default();
        let cluster_lock_wait = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let unauthenticated_addresses = Gauge::default();
        let policy_refusals = Family::<ClientRule, Counter>::default();
        let audit_records = Counter::default();
        let audit_failures = Counter::default();
        let audit_fsync = Histogram::new(exponential_buckets(0.000_025, 2.0, 16));
        let audit_queue_depth = Gauge::default();
        let audit_queue_bytes = Gauge::default();
        let audit_records_dropped = Counter::default();
        let audit_free_bytes = Gauge::default();
        let audit_min_free_bytes = Gauge::default();
        // Registered with or without `[audit.postgres]` (at 0 without), so dashboards and alerts
        // can name them everywhere.
        let audit_shipped = Counter::default();
        let audit_ship_lag = Gauge::default();
        let audit_ship_failures = Counter::default();
        registry.register(
            "tokengate_audit_shipped",
            "Audit records copied to the central store ([audit.postgres]), rows already there included",
            audit_shipped.clone(),
        );
        registry.register(
            "tokengate_audit_ship_lag_records",
            "Durable audit records not yet in the central store ([audit.postgres])",
            audit_ship_lag.clone(),
        );
        registry.register(
            "tokengate_audit_ship_failures",
            "Failed attempts to ship audit records (PostgreSQL unreachable or refusing), and conflicting rows, which stop shipping",
            audit_ship_failures.clone(),
        );
        let open_connections = Gauge::default();
        let connection_cap_reached = Counter::default();
        let worker_connections = Family::<Worker, Counter>::default();
        registry.register(
            "tokengate_worker_connections",
            "Caller connections accepted, by the worker thread that accepted and served them",
            worker_connections.clone(),
        );
        registry.register(
            "tokengate_open_connections",
            "Open caller connections (from accept until closed, TLS handshake included)",
            open_connections.clone(),
        );
        registry.register(
            "tokengate_connection_cap_reached",
            "Times the caller listener stopped accepting at server.max_connections (once per episode)",
            connection_cap_reached.clone(),
        );
        registry.register(
            "tokengate_audit_records",
            "Audit records written (and synced, with fsync = \"always\")",
            audit_records.clone(),
        );
        registry.register(
            "tokengate_audit_failures",
            "Audited requests refused because their record could not be written",
            audit_failures.clone(),
        );
        registry.register(
            "tokengate_audit_fsync_seconds",
            "Time one fdatasync of the audit trail took (one per batch of records)",
            audit_fsync.clone(),
        );
        registry.register(
            "tokengate_audit_queue_depth",
            "Audit records waiting for the writer",
            audit_queue_depth.clone(),
        );
        registry.register(
            "tokengate_audit_queue_bytes",
            "Bytes of audit records waiting for the disk (at most audit.queue_bytes)",
            audit_queue_bytes.clone(),
        );
        registry.register(
            "tokengate_audit_records_dropped",
            "Outcome records of refusals never written: the audit queue was full when they were made",
            audit_records_dropped.clone(),
        );
        registry.register(
            "tokengate_audit_free_bytes",
            "Bytes free on the audit trail's file system (looked at every second); below tokengate_audit_min_free_bytes the gateway is not ready",
            audit_free_bytes.clone(),
        );
        registry.register(
            "tokengate_audit_min_free_bytes",
            "audit.min_free_bytes: the free space below which the gateway reports not ready",
            audit_min_free_bytes.clone(),
        );
        registry.register(
            "tokengate_requests",
            "Requests answered, by operation and HTTP status",
            requests.clone(),
        );
        registry.register(
            "tokengate_request_duration_seconds",
            "Time from request to response, by operation",
            request_duration.clone(),
        );
        registry.register(
            "tokengate_upstream_duration_seconds",
            "Time the upstream took to answer, by operation",
            upstream_duration.clone(),
        );
        registry.register(
            "tokengate_upstream_auth_failures",
            "Upstream answers that refused the gateway's own credential (401/403)",
            upstream_auth_failures.clone(),
        );
        registry.register(
            "tokengate_validation_refusals",
            "Request bodies refused before the upstream saw them, by operation and SPEC code",
            validation_refusals.clone(),
        );
        registry.register(
            "tokengate_rate_limited",
            "Requests refused by a rate limit, by client and class (reads, writes, upstream)",
            rate_limited.clone(),
        );
        registry.register(
            "tokengate_rate_limited_dry_run",
            "Requests a rate limit would have refused with rate_limit.dry_run off, by client and class",
            rate_limited_dry_run.clone(),
        );
        registry.register(
            "tokengate_rate_limit_buckets",
            "Rate-limit buckets held (two per configured client or tracked pass-through identity, and one for the upstream)",
            rate_limit_buckets.clone(),
        );
        registry.register(
            "tokengate_cluster_up",
            "1 while the shared Redis answers (or no [cluster] is configured), 0 while it cannot be reached",
            cluster_up.clone(),
        );
        registry.register(
            "tokengate_cluster_errors",
            "Calls to the shared Redis that failed or timed out",
            cluster_errors.clone(),
        );
        registry.register(
            "tokengate_cluster_lock_wait_seconds",
            "Time a change waited for its tokens' shared locks",
            cluster_lock_wait.clone(),
        );
        registry.register(
            "tokengate_patch_window_seconds",
            "Time from a PATCH's read of the token being answered to its full PUT being sent (usage in between is undone by the PUT)",
            patch_window.clone(),
        );
        registry.register(
            "tokengate_unauthenticated_addresses",
            "Source addresses whose refusals before authentication are being counted (at most rate_limit.max_identities)",
            unauthenticated_addresses.clone(),
        );
        registry.register(
            "tokengate_policy_refusals",
            "Requests refused by a client policy rule, by client and rule",
            policy_refusals.clone(),
        );
        registry.register(
            "tokengate_ready",
            "1 when the gateway is ready to serve, else 0",
            ready.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            request_duration,
            upstream_duration,
            patch_window,
            upstream_auth_failures,
            validation_refusals,
            rate_limited,
            rate_limited_dry_run,
            rate_limit_buckets,
            cluster_up,
            cluster_errors,
            cluster_lock_wait,
            unauthenticated_addresses,
            policy_refusals,
            audit_records,
            audit_failures,
            audit_fsync,
            audit_queue_depth,
            audit_queue_bytes,
            audit_records_dropped,
            audit_free_bytes,
            audit_min_free_bytes,
            audit_shipped,
            audit_ship_lag,
            audit_ship_failures,
            ready,
            open_connections,
            connection_cap_reached,
            worker_connections,
            readiness: Readiness::default(),
        }
    }

    /// Counts one answered request.
    pub fn request(&self, op: Option<Operation>, status: u16, elapsed: Duration) {
        let op = op.map_or(UNROUTED, Operation::as_str);
        self.requests.get_or_create(&OpStatus { op, status }).inc();
        self.request_duration
            .get_or_create(&Op { op })
            .observe(elapsed.as_secs_f64());
    }

    /// Records how long one upstream exchange took.
    pub fn upstream_duration(&self, op: Operation, elapsed: Duration) {
        self.upstream_duration
            .get_or_create(&Op { op: op.as_str() })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the read-to-write window of one PATCH (or fan-out id).
    pub fn patch_window(&self, elapsed: Duration) {
        self.patch_window.observe(elapsed.as_secs_f64());
    }

    /// Counts an upstream refusal of the gateway's credential.
    pub fn upstream_auth_failure(&self) {
        self.upstream_auth_failures.inc();
    }

    /// Counts a refused request body.
    pub fn validation_refusal(&self, op: Operation, code: &'static str) {
        self.validation_refusals
            .get_or_create(&OpCode {
                op: op.as_str(),
                code,
            })
            .inc();
    }

    /// Counts a request refused by a rate limit (`dry_run`: one that would have been).
    pub fn rate_limited(&self, client: &str, class: &'static str, dry_run: bool) {
        let family = if dry_run {
            &self.rate_limited_dry_run
        } else {
            &self.rate_limited
        };
        family
            .get_or_create(&ClientClass {
                client: client.into(),
                class,
            })
            .inc();
    }

    /// Sets how many rate-limit buckets the gateway holds.
    pub fn set_rate_limit_buckets(&self, buckets: usize) {
        self.rate_limit_buckets
            .set(i64::try_from(buckets).unwrap_or(i64::MAX));
    }

    /// Whether the shared Redis answers (SPEC §11).
    pub fn set_cluster_up(&self, up: bool) {
        self.cluster_up.set(i64::from(up));
    }

    /// Counts a failed or timed-out call to the shared Redis.
    pub fn cluster_error(&self) {
        self.cluster_errors.inc();
    }

    /// Records how long a change waited for its tokens' shared locks.
    pub fn cluster_lock_wait(&self, waited: Duration) {
        self.cluster_lock_wait.observe(waited.as_secs_f64());
    }

    /// Sets how many source addresses the unauthenticated limit tracks.
    pub fn set_unauthenticated_addresses(&self, addresses: usize) {
        self.unauthenticated_addresses
            .set(i64::try_from(addresses).unwrap_or(i64::MAX));
    }

    /// Counts a policy refusal by one rule.
    pub fn policy_refusal(&self, client: &str, rule: &'static str) {
        self.policy_refusals
            .get_or_create(&ClientRule {
                client: client.into(),
                rule,
            })
            .inc();
    }

    /// Counts records written by the audit writer.
    pub fn audit_records(&self, n: u64) {
        self.audit_records.inc_by(n);
    }

    /// Counts an audited request refused because its record could not be written.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// Records one fsync of the trail.
    pub fn audit_fsync(&self, elapsed: Duration) {
        self.audit_fsync.observe(elapsed.as_secs_f64());
    }

    /// Sets the bytes of audit records waiting for the disk.
    pub fn set_audit_queue_bytes(&self, bytes: u64) {
        self.audit_queue_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets the free space of the trail's file system.
    pub fn set_audit_free_bytes(&self, bytes: u64) {
        self.audit_free_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets `audit.min_free_bytes` as in force.
    pub fn set_audit_min_free_bytes(&self, bytes: u64) {
        self.audit_min_free_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts an outcome record of a refusal that could not even be queued.
    pub fn audit_record_dropped(&self) {
        self.audit_records_dropped.inc();
    }

    /// Sets the audit queue depth.
    pub fn set_audit_queue_depth(&self, depth: i64) {
        self.audit_queue_depth.set(depth);
    }

    /// Counts records shipped to the central store.
    pub fn audit_shipped(&self, n: u64) {
        self.audit_shipped.inc_by(n);
    }

    /// Sets the number of durable records not yet shipped.
    pub fn set_audit_ship_lag(&self, records: u64) {
        self.audit_ship_lag
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// Counts a failed shipping attempt, or a conflicting row.
    pub fn audit_ship_failure(&self) {
        self.audit_ship_failures.inc();
    }

    /// Counts a caller connection opened (accepted).
    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    /// Counts a caller connection closed (its task ended).
    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// The counter of connections accepted by worker `worker`: looked up once per worker, so
    /// each accept costs one atomic add.
    pub fn worker_connections(&self, worker: usize) -> Counter {
        let worker = u32::try_from(worker).unwrap_or(u32::MAX);
        self.worker_connections
            .get_or_create(&Worker { worker })
            .clone()
    }

    /// Counts one episode of the caller listener waiting at `server.max_connections`.
    pub fn connection_cap_reached(&self) {
        self.connection_cap_reached.inc();
    }

    /// Whether the audit trail can be written (the writer after each batch, and `/readyz`).
    pub fn set_audit_ready(&self, ready: bool) {
        self.readiness.audit.store(ready, Ordering::Relaxed);
        self.update_ready();
    }

    /// Whether the upstream answered the last `/readyz` check.
    pub fn set_upstream_ready(&self, ready: bool) {
        self.readiness.upstream.store(ready, Ordering::Relaxed);
        self.update_ready();
    }

    /// Whether the caller-facing listener is serving (false from the start of shutdown).
    pub fn set_serving(&self, serving: bool) {
        self.readiness.serving.store(serving, Ordering::Relaxed);
        self.update_ready();
    }

    fn update_ready(&self) {
        let Readiness {
            serving,
            audit,
            upstream,
        } = &self.readiness;
        let ready = [serving, audit, upstream]
            .iter()
            .all(|flag| flag.load(Ordering::Relaxed));
        self.ready.set(i64::from(ready));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_by_op_and_status() {
        let metrics = Metrics::new();
        metrics.request(Some(Operation::List), 200, Duration::from_millis(3));
        metrics.request(None, 404, Duration::from_millis(1));
        metrics.set_serving(true);
        metrics.set_audit_ready(true);
        metrics.validation_refusal(Operation::Create, "invalid_json");
        let text = metrics.render();
        assert!(
            text.contains("tokengate_requests_total{op=\"list\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tokengate_requests_total{op=\"none\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tokengate_request_duration_seconds_count{op=\"list\"} 1"),
            "{text}"
        );
        assert!(text.contains("tokengate_ready 1"), "{text}");
        // One source's "ready" does not hide another's "not ready".
        metrics.set_serving(false);
        metrics.set_audit_ready(true);
        metrics.set_upstream_ready(true);
        assert!(metrics.render().contains("tokengate_ready 0"));
        metrics.set_serving(true);
        metrics.set_upstream_ready(false);
        metrics.set_audit_ready(true);
        assert!(metrics.render().contains("tokengate_ready 0"));
        metrics.set_upstream_ready(true);
        assert!(metrics.render().contains("tokengate_ready 1"));
        assert!(
            text.contains(
                "tokengate_validation_refusals_total{op=\"create\",code=\"invalid_json\"} 1"
            ),
            "{text}"
        );
    }
}
