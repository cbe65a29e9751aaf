//! Latency recording and the report.
//!
//! Each client records into its own [`Recorder`] (no sharing on the hot
//! path); the recorders are merged when the run ends. Latencies of
//! successful requests go into an HDR histogram with microsecond units and
//! three significant digits; failed requests are counted by gRPC code and
//! kept out of the latencies, as etcd's benchmark does. Requests per second
//! counts successful requests only, also as etcd's benchmark does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The largest latency the histogram tells apart; longer ones are recorded
/// as this value.
pub const LATENCY_MAX_US: u64 = 60_000_000;

/// The name etcd's tooling and grpc-go give a status code (`Unavailable`,
/// `DeadlineExceeded`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Latencies and errors of one kind of request, from one or more clients.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    errors: BTreeMap<&'static str, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("constant histogram bounds are valid"),
            errors: BTreeMap::new(),
        }
    }

    /// A successful request that took `latency`.
    pub fn record_ok(&mut self, latency: Duration) {
        self.record_ok_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// A successful request that took `us` microseconds.
    pub fn record_ok_us(&mut self, us: u64) {
        // Sub-microsecond latencies count as 1 us: the histogram starts at 1.
        self.latency_us
            .saturating_record(us.clamp(1, LATENCY_MAX_US));
    }

    /// A failed request.
    pub fn record_error(&mut self, code: tonic::Code) {
        *self.errors.entry(code_name(code)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("recorders share bounds");
        for (code, n) in &other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    /// Successful requests.
    pub fn ok(&self) -> u64 {
        self.latency_us.len()
    }

    /// Failed requests, all codes together.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Summarises the recorded requests of a run that lasted `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let h = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let empty = h.is_empty();
        let q = |quantile: f64| {
            if empty {
                0.0
            } else {
                ms(h.value_at_quantile(quantile))
            }
        };
        let secs = elapsed.as_secs_f64();
        Summary {
            ok: h.len(),
            errors: self
                .errors
                .iter()
                .map(|(code, n)| ((*code).to_owned(), *n))
                .collect(),
            requests_per_sec: if secs > 0.0 {
                h.len() as f64 / secs
            } else {
                0.0
            },
            min_ms: if empty { 0.0 } else { ms(h.min()) },
            avg_ms: if empty { 0.0 } else { h.mean() / 1000.0 },
            stddev_ms: if empty { 0.0 } else { h.stdev() / 1000.0 },
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if empty { 0.0 } else { ms(h.max()) },
        }
    }
}

/// What a [`Recorder`] measured, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub requests_per_sec: f64,
    pub min_ms: f64,
    pub avg_ms: f64,
    pub stddev_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn to_json(&self) -> Value {
        json!({
            "ok": self.ok,
            "errors_total": self.error_count(),
            "errors": self.errors,
            "requests_per_sec": round3(self.requests_per_sec),
            "latency_ms": {
                "min": self.min_ms,
                "avg": round3(self.avg_ms),
                "stddev": round3(self.stddev_ms),
                "p50": self.p50_ms,
                "p90": self.p90_ms,
                "p99": self.p99_ms,
                "p99.9": self.p999_ms,
                "max": self.max_ms,
            },
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One kind of request in a report: `put`, or `grant` inside `lease`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub elapsed: Duration,
    pub summary: Summary,
}

impl Series {
    pub fn new(name: &str, recorder: &Recorder, elapsed: Duration) -> Self {
        Series {
            name: name.to_owned(),
            elapsed,
            summary: recorder.summary(elapsed),
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub command: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub total: u64,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// The headline series first (for `watch`, event delivery), then any
    /// per-step series.
    pub series: Vec<Series>,
    /// Workload facts: keys returned, transactions that succeeded, events
    /// delivered, leases kept alive.
    pub counters: Vec<(String, u64)>,
}

impl Report {
    /// The headline series.
    pub fn main(&self) -> &Summary {
        &self.series[0].summary
    }

    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Failed requests over every series.
    pub fn error_count(&self) -> u64 {
        self.series.iter().map(|s| s.summary.error_count()).sum()
    }

    /// One JSON object: the headline series' fields at the top level, every
    /// series under `series`, and the counters.
    pub fn to_json(&self) -> Value {
        let mut top = self.main().to_json();
        let obj = top.as_object_mut().expect("summary is an object");
        obj.insert("command".into(), json!(self.command));
        obj.insert("endpoints".into(), json!(self.endpoints));
        obj.insert("conns".into(), json!(self.conns));
        obj.insert("clients".into(), json!(self.clients));
        obj.insert("total".into(), json!(self.total));
        obj.insert(
            "elapsed_secs".into(),
            json!(round6(self.elapsed.as_secs_f64())),
        );
        let series: serde_json::Map<String, Value> = self
            .series
            .iter()
            .map(|s| {
                let mut v = s.summary.to_json();
                v.as_object_mut().expect("object").insert(
                    "elapsed_secs".into(),
                    json!(round6(s.elapsed.as_secs_f64())),
                );
                (s.name.clone(), v)
            })
            .collect();
        obj.insert("series".into(), Value::Object(series));
        let counters: serde_json::Map<String, Value> = self
            .counters
            .iter()
            .map(|(n, v)| (n.clone(), json!(v)))
            .collect();
        obj.insert("counters".into(), Value::Object(counters));
        top
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let main = self.main();
        let _ = writeln!(
            out,
            "{}: {} ok, {} errors, {} conns, {} clients, endpoints {}",
            self.command,
            main.ok,
            main.error_count(),
            self.conns,
            self.clients,
            self.endpoints.join(",")
        );
        for (i, s) in self.series.iter().enumerate() {
            let m = &s.summary;
            let label = if i == 0 { "" } else { "  " };
            let _ = writeln!(
                out,
                "{label}[{}] total {:.4} s, {:.1} req/s, {} ok",
                s.name,
                s.elapsed.as_secs_f64(),
                m.requests_per_sec,
                m.ok
            );
            let _ = writeln!(
                out,
                "{label}  latency ms: min {:.3} avg {:.3} stddev {:.3} p50 {:.3} p90 {:.3} \
                 p99 {:.3} p99.9 {:.3} max {:.3}",
                m.min_ms, m.avg_ms, m.stddev_ms, m.p50_ms, m.p90_ms, m.p99_ms, m.p999_ms, m.max_ms
            );
            let errors = if m.errors.is_empty() {
                "none".to_owned()
            } else {
                m.errors
                    .iter()
                    .map(|(c, n)| format!("{c}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(out, "{label}  errors: {errors}");
        }
        if !self.counters.is_empty() {
            let counters: Vec<String> = self
                .counters
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let _ = writeln!(out, "counters: {}", counters.join(" "));
        }
        out
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        // Three significant digits: relative error below 0.1%.
        (actual - expected).abs() <= expected.abs() * 1e-3 + 1e-9
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut r = Recorder::new();
        for us in 1..=10_000u64 {
            r.record_ok(Duration::from_micros(us));
        }
        let s = r.summary(Duration::from_secs(2));
        assert_eq!(s.ok, 10_000);
        assert_eq!(s.requests_per_sec, 5_000.0);
        assert!(close(s.min_ms, 0.001), "min {}", s.min_ms);
        assert!(close(s.max_ms, 10.0), "max {}", s.max_ms);
        assert!(close(s.avg_ms, 5.0005), "avg {}", s.avg_ms);
        assert!(close(s.p50_ms, 5.0), "p50 {}", s.p50_ms);
        assert!(close(s.p90_ms, 9.0), "p90 {}", s.p90_ms);
        assert!(close(s.p99_ms, 9.9), "p99 {}", s.p99_ms);
        assert!(close(s.p999_ms, 9.99), "p99.9 {}", s.p999_ms);
        // The standard deviation of 1..=n is sqrt((n^2 - 1) / 12).
        assert!(close(s.stddev_ms, 2.886_751), "stddev {}", s.stddev_ms);
    }

    #[test]
    fn percentiles_see_the_tail() {
        let mut r = Recorder::new();
        for _ in 0..990 {
            r.record_ok(Duration::from_micros(100));
        }
        for _ in 0..10 {
            r.record_ok(Duration::from_millis(50));
        }
        let s = r.summary(Duration::from_secs(1));
        assert!(close(s.p50_ms, 0.1) && close(s.p90_ms, 0.1) && close(s.p99_ms, 0.1));
        assert!(close(s.p999_ms, 50.0), "p99.9 {}", s.p999_ms);
        assert!(close(s.max_ms, 50.0));
    }

    #[test]
    fn merging_equals_recording_in_one_place() {
        let (mut a, mut b, mut all) = (Recorder::new(), Recorder::new(), Recorder::new());
        for us in 1..=1000u64 {
            let d = Duration::from_micros(us * 7);
            if us % 3 == 0 { &mut a } else { &mut b }.record_ok(d);
            all.record_ok(d);
        }
        a.record_error(tonic::Code::Unavailable);
        b.record_error(tonic::Code::Unavailable);
        b.record_error(tonic::Code::DeadlineExceeded);
        all.record_error(tonic::Code::Unavailable);
        all.record_error(tonic::Code::Unavailable);
        all.record_error(tonic::Code::DeadlineExceeded);
        a.merge(&b);
        let one_second = Duration::from_secs(1);
        assert_eq!(a.summary(one_second), all.summary(one_second));
        assert_eq!(a.error_count(), 3);
        assert_eq!(a.summary(one_second).errors["Unavailable"], 2);
    }

    #[test]
    fn errors_are_kept_out_of_latencies_and_rate() {
        let mut r = Recorder::new();
        r.record_ok(Duration::from_millis(2));
        r.record_error(tonic::Code::Unavailable);
        let s = r.summary(Duration::from_secs(1));
        assert_eq!((s.ok, s.error_count()), (1, 1));
        assert_eq!(s.requests_per_sec, 1.0);
        assert!(close(s.p50_ms, 2.0) && close(s.max_ms, 2.0));
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let mut r = Recorder::new();
        r.record_ok(Duration::from_nanos(10));
        r.record_ok(Duration::from_secs(3600));
        assert_eq!(r.ok(), 2);
        let s = r.summary(Duration::ZERO);
        assert_eq!(s.requests_per_sec, 0.0);
        assert!(close(s.min_ms, 0.001));
        assert!(close(s.max_ms, LATENCY_MAX_US as f64 / 1000.0));
    }

    #[test]
    fn an_empty_recorder_summarises_to_zeros() {
        let s = Recorder::new().summary(Duration::from_secs(1));
        assert_eq!((s.ok, s.p50_ms, s.max_ms, s.avg_ms), (0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn report_renders_json_and_text() {
        let mut r = Recorder::new();
        r.record_ok(Duration::from_millis(1));
        r.record_error(tonic::Code::Unavailable);
        let report = Report {
            command: "put".into(),
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 1,
            clients: 2,
            total: 2,
            elapsed: Duration::from_millis(500),
            series: vec![Series::new("put", &r, Duration::from_millis(500))],
            counters: vec![("keys".into(), 1)],
        };
        let v = report.to_json();
        assert_eq!(v["command"], "put");
        assert_eq!(v["ok"], 1);
        assert_eq!(v["errors_total"], 1);
        assert_eq!(v["errors"]["Unavailable"], 1);
        assert_eq!(v["requests_per_sec"], 2.0);
        assert_eq!(v["elapsed_secs"], 0.5);
        assert!(v["latency_ms"]["p99.9"].as_f64().unwrap() > 0.99);
        assert_eq!(v["series"]["put"]["ok"], 1);
        assert_eq!(v["counters"]["keys"], 1);
        let text = report.to_text();
        assert!(text.contains("put: 1 ok, 1 errors"), "{text}");
        assert!(text.contains("errors: Unavailable=1"), "{text}");
        assert!(text.contains("counters: keys=1"), "{text}");
        assert_eq!(report.error_count(), 1);
        assert_eq!(report.counter("keys"), Some(1));
    }

    #[test]
    fn code_names_match_grpc_go() {
        assert_eq!(code_name(tonic::Code::Unavailable), "Unavailable");
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DeadlineExceeded");
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
    }
}
