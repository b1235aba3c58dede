//! Logs: human-readable on a terminal, JSON lines otherwise (or as configured), filtered
//! by `RUST_LOG` syntax.
//!
//! Each line carries the fields of the spans it happened in: in text as
//! `process{flag=.. pipeline_id=..}:stage{..}:step{run_id=..}: message`, in JSON as
//! `span` (the innermost) and `spans` (all, outermost first). So every line of a run
//! names its flag, pipeline, pipeline execution and run. The OpenTelemetry-only fields of
//! those spans (`otel.*`, `messaging.*`) are left out of the lines, and so are the
//! spans only traces show (see [`super::traces::SPAN_ONLY_TARGET`]).
//!
//! Every line goes through [`super::redact::installed`] secrets before it reaches
//! stderr, whatever produced it (our code, librdkafka, a library error).
//!
//! One event, one line: in text lines every field value and message has its line breaks
//! and other control characters escaped ([`one_line`]: `\n`, `\r`, `\u{1b}`...), so a
//! value from outside (a flag name, a library error quoting its input) cannot start a
//! line that looks like another event. JSON lines escape them by JSON's own rules.

use std::fmt;
use std::io::{IsTerminal, Write};

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::fmt::format::{DefaultVisitor, JsonVisitor, Writer};
use tracing_subscriber::fmt::{FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::{LogFormat, TelemetryConfig, redact, traces};

/// The log filter: `RUST_LOG` when set, else the configured one, else `info`.
///
/// Unless the filter names `rdkafka` itself, `rdkafka::client` logs warnings and errors
/// only: at `info` it prints every client's full statistics each
/// `statistics.interval.ms` (the worker reads them for metrics; they are not log lines).
pub(crate) fn filter(telemetry: &TelemetryConfig) -> EnvFilter {
    let mut filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| telemetry.log_filter.clone())
        .unwrap_or_else(|| "info".to_string());
    if !filter.contains("rdkafka") {
        filter.push_str(",rdkafka::client=warn");
    }
    EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Whether lines are JSON: as configured, or when stderr is not a terminal.
pub(crate) fn is_json(telemetry: &TelemetryConfig) -> bool {
    match telemetry.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    }
}

/// The log layer on stderr, with its own filter, for a subscriber that may carry other
/// layers (traces).
pub(crate) fn layer<S>(telemetry: &TelemetryConfig) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Colours only on a terminal: text logs redirected to a file stay greppable.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(ScrubbedStderr)
        .with_ansi(std::io::stderr().is_terminal());
    let filter = filter(telemetry).and(tracing_subscriber::filter::filter_fn(|metadata| {
        !traces::is_span_only(metadata)
    }));
    if is_json(telemetry) {
        fmt.json()
            .flatten_event(true)
            .fmt_fields(JsonLogFields)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.fmt_fields(TextLogFields).with_filter(filter).boxed()
    }
}

/// Installs the global log subscriber, logs only (once; later calls do nothing).
/// `RUST_LOG`, when set, wins over the configured filter. For logs and traces together
/// use [`super::init`].
pub fn init(telemetry: &TelemetryConfig) {
    // An already installed subscriber (tests, the demo) is kept.
    let _ = tracing_subscriber::registry()
        .with(layer(telemetry))
        .try_init();
}

/// Whether a span field is for traces only and stays out of log lines.
fn is_trace_field(name: &str) -> bool {
    name.starts_with("otel.") || name.starts_with("messaging.")
}

/// A visitor that passes every field but the trace-only ones on to `V`.
struct LogFieldsOnly<V>(V);

impl<V: Visit> Visit for LogFieldsOnly<V> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if !is_trace_field(field.name()) {
            self.0.record_f64(field, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !is_trace_field(field.name()) {
            self.0.record_i64(field, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !is_trace_field(field.name()) {
            self.0.record_u64(field, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !is_trace_field(field.name()) {
            self.0.record_bool(field, value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !is_trace_field(field.name()) {
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !is_trace_field(field.name()) {
            self.0.record_error(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !is_trace_field(field.name()) {
            self.0.record_debug(field, value);
        }
    }
}

/// `text` with every character that could end or rewrite a terminal line escaped: line
/// breaks (`\n`, `\r`, U+0085, U+2028, U+2029) and the other control characters (escape
/// sequences included) but tab, written as Rust escapes (`\n`, `\r`, `\u{1b}`). Borrowed
/// when there is nothing to escape.
pub(crate) fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A visitor that hands `V` every value with [`one_line`] applied: text values stay
/// text (`V` quotes them as it does), formatted values and errors are escaped after
/// formatting.
struct OneLine<V>(V);

impl<V: Visit> Visit for OneLine<V> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.record_f64(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.record_i64(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.record_u64(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.record_bool(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Other text fields are written quoted, with Rust's escapes (`"a\nb"`); the
        // message is written as it is, so it is escaped here.
        if field.name() == "message" {
            self.0.record_str(field, &one_line(value));
        } else {
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // An error with sources is written with them; its text is checked as a whole.
        let text = error_chain(value);
        if matches!(one_line(&text), std::borrow::Cow::Borrowed(_)) {
            self.0.record_error(field, value);
        } else {
            self.0
                .record_debug(field, &format_args!("{}", one_line(&text)));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.0
            .record_debug(field, &format_args!("{}", one_line(&text)));
    }
}

/// An error's text and its sources', as one string (for the control-character check).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Text fields as `tracing-subscriber` writes them by default, minus trace-only fields,
/// each value on one line ([`one_line`]).
struct TextLogFields;

impl<'w> FormatFields<'w> for TextLogFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = LogFieldsOnly(OneLine(DefaultVisitor::new(writer, true)));
        fields.record(&mut visitor);
        visitor.0.0.finish()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let is_empty = current.is_empty();
        let mut visitor =
            LogFieldsOnly(OneLine(DefaultVisitor::new(current.as_writer(), is_empty)));
        fields.record(&mut visitor);
        visitor.0.0.finish()
    }
}

/// Span fields as a JSON object, minus trace-only fields; fields recorded later are
/// merged in.
struct JsonLogFields;

impl<'w> FormatFields<'w> for JsonLogFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = LogFieldsOnly(JsonVisitor::new(&mut writer));
        fields.record(&mut visitor);
        visitor.0.finish()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        let mut visitor = LogFieldsOnly(JsonVisitor::new(&mut added));
        fields.record(&mut visitor);
        visitor.0.finish()?;
        let mut merged: serde_json::Map<String, serde_json::Value> = if current.is_empty() {
            serde_json::Map::new()
        } else {
            serde_json::from_str(current).map_err(|_| fmt::Error)?
        };
        let added: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&added).map_err(|_| fmt::Error)?;
        merged.extend(added);
        current.fields = serde_json::to_string(&merged).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// Stderr, with the installed secrets masked in every line.
struct ScrubbedStderr;

impl<'a> MakeWriter<'a> for ScrubbedStderr {
    type Writer = ScrubbedLine;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedLine
    }
}

/// Writes one formatted log line (the `fmt` layer writes each line in one call).
struct ScrubbedLine;

impl Write for ScrubbedLine {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        match redact::installed() {
            Some(secrets) => {
                let text = String::from_utf8_lossy(line);
                stderr.write_all(secrets.scrub(&text).as_bytes())?;
            }
            None => stderr.write_all(line)?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer into a shared buffer, for reading back what the layer wrote.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines_of(json: bool) -> String {
        let buffer = Buffer::default();
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(buffer.clone())
            .with_ansi(false);
        let filter = tracing_subscriber::filter::filter_fn(|m| !traces::is_span_only(m));
        let layer: Box<dyn Layer<_> + Send + Sync> = if json {
            fmt.json()
                .flatten_event(true)
                .fmt_fields(JsonLogFields)
                .with_filter(filter)
                .boxed()
        } else {
            fmt.fmt_fields(TextLogFields).with_filter(filter).boxed()
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let process = traces::process_span("flag-changes", 0, 9, "group", &[]);
            let change = crate::contract::flag_change::flag_change_example();
            traces::record_change(&process, &change, Some("checkout-release"));
            let _process = process.enter();
            let stage = traces::stage_span("canary", "feature_flag");
            let _stage = stage.enter();
            let step = traces::step_span("latency", "payments-latency", "run-1", 1);
            let _step = step.enter();
            let send = traces::send_span("flag-commands");
            let _send = send.enter();
            tracing::info!(score = 42.5, "step failed");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn execution_id() -> String {
        crate::contract::ids::pipeline_execution_id(
            "0b6f3f0e-4d5c-4c0b-9a51-8d7a6f1f2c11",
            "checkout-release",
        )
    }

    #[test]
    fn text_lines_carry_the_run_fields_and_no_trace_attributes() {
        let text = lines_of(false);
        for field in &[
            "flag=shop/production/checkout-v2",
            "pipeline_id=checkout-release",
            &format!("pipeline_execution_id={}", execution_id()),
            "event_id=0b6f3f0e-4d5c-4c0b-9a51-8d7a6f1f2c11",
            "stage_id=canary",
            "run_id=run-1",
            "step failed score=42.5",
        ] {
            let field: &str = field;
            assert!(text.contains(field), "{field} not in {text}");
        }
        for hidden in ["messaging.", "otel.", "send"] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
    }

    /// What the text layer writes for the events `emit` logs.
    fn text_of(emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .fmt_fields(TextLogFields);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_value_with_line_breaks_stays_on_its_line() {
        let forged = "x\n2026-11-30T00:00:00Z  INFO chaosgate: gate opened\r\u{1b}[2K";
        let error = std::io::Error::other(forged);
        let text = text_of(|| {
            let span = tracing::info_span!("process", flag = %forged);
            let _span = span.enter();
            tracing::warn!(flag = %forged, quoted = forged, %error, "dead-lettered {forged}");
        });
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'), "{text}");
        assert!(!text.contains('\r') && !text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains(r"flag=x\n2026-11-30T00:00:00Z  INFO chaosgate: gate opened\r\u{1b}[2K"),
            "{text}"
        );
        assert!(text.contains(r#"quoted="x\n2026"#), "{text}");
        assert_eq!(one_line("plain\ttext"), "plain\ttext");
        assert_eq!(one_line("a\u{2028}b\u{85}"), r"a\u{2028}b\u{85}");
    }

    #[test]
    fn json_lines_carry_the_run_fields_of_every_span() {
        let text = lines_of(true);
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "step failed");
        assert_eq!(line["span"]["run_id"], "run-1", "{line:#}");
        let spans = line["spans"].as_array().unwrap();
        assert_eq!(spans[0]["name"], "process");
        assert_eq!(spans[0]["flag"], "shop/production/checkout-v2");
        assert_eq!(spans[0]["pipeline_id"], "checkout-release");
        assert_eq!(spans[0]["pipeline_execution_id"], execution_id().as_str());
        assert_eq!(spans[2]["run_id"], "run-1");
        assert_eq!(spans.len(), 3, "the send span is for traces only: {line:#}");
        assert!(!text.contains("messaging."), "{text}");
        assert!(!text.contains("otel."), "{text}");
    }
}
