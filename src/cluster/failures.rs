//! What a client says when work sent to a cluster fails. Ballista hands
//! reasons back inside other messages' debug text: a scheduler's refusal in
//! a gRPC status, a task's error in the job's failure. Each is given alone
//! where it can be read out; otherwise the error says where to look.

/// How errors of work sent to the cluster at `url` begin when no reason
/// can be read out of what came back (a task rejected before it ran, an
/// error that is not one message): the executor's log says why.
fn failed(what: &str, url: &str) -> String {
    format!("{what} on the cluster at {url} (a failed task's reason is in its executor's log)")
}

/// The error of work sent to the cluster at `url`: a failed task's own
/// error, else the scheduler's reason for a plan it could not make, else
/// the whole error after [`failed`].
pub fn failure(what: &str, url: &str, e: impl Into<anyhow::Error>) -> anyhow::Error {
    let e = e.into();
    let text = format!("{e:#}");
    if let Some(reason) = task_error(&text) {
        anyhow::anyhow!("{what} on the cluster at {url}: a task failed: {reason}")
    } else if let Some(reason) = scheduler_refusal(&text) {
        anyhow::anyhow!("{what} on the cluster at {url}: the scheduler could not plan it: {reason}")
    } else if let Some((address, reason)) = not_connected(&text) {
        match address {
            Some(a) if !is_scheduler(&a, url) => anyhow::anyhow!(
                "{what} on the cluster at {url}: no connection to the executor at {a}: {reason} \
                 (results are fetched from executors; `uqcast executor --external-host` names \
                 an address this machine can reach)"
            ),
            _ => anyhow::anyhow!(
                "{what}: no connection to the scheduler at {url}: {reason} (is `uqcast \
                 scheduler` running there, and reachable from here?)"
            ),
        }
    } else {
        e.context(failed(what, url))
    }
}

/// The scheduler's reason, if `text` holds one: a "Could not parse plan"
/// status (a plan it could not rebuild), or a job that failed as the
/// scheduler planned its stages (a Parquet object it could not read).
fn scheduler_refusal(text: &str) -> Option<String> {
    const MARK: &str = "Could not parse plan: ";
    const PLANNING: &str = " failed: DataFusion error: ";
    let reason = if let Some(at) = text.find(MARK) {
        let rest = &text[at + MARK.len()..];
        let reason = rest.split("\", metadata:").next().unwrap_or(rest);
        reason.replace("\\\"", "\"")
    } else {
        let at = text.find("Job ")?;
        let rest = &text[at..];
        rest[rest.find(PLANNING)? + PLANNING.len()..]
            .trim_end()
            .to_string()
    };
    let reason = reason.trim_start_matches("DataFusion error: ");
    Some(reason.trim_start_matches("Execution error: ").to_string())
}

/// Whether `address` (IP and port) is where the scheduler at `url`
/// resolves to; a name that does not resolve is taken to be it.
fn is_scheduler(address: &str, url: &str) -> bool {
    use std::net::ToSocketAddrs;
    let host_port = url.strip_prefix("df://").unwrap_or(url);
    match host_port.to_socket_addrs() {
        Ok(mut resolved) => resolved.any(|a| a.to_string() == address),
        Err(_) => true,
    }
}

/// A connection that was not made, if `text` tells of one (tonic's debug
/// form): the address it was to, where one is given (a name that did not
/// resolve has none), and why, as the OS or the name lookup said.
fn not_connected(text: &str) -> Option<(Option<String>, String)> {
    const MARK: &str = "ConnectError(\"";
    let rest = &text[text.find(MARK)? + MARK.len()..];
    let (kind, rest) = rest.split_once('"')?;
    let address = rest
        .strip_prefix(", ")
        .and_then(|r| r.split_once(", "))
        .map(|(a, _)| a.to_string())
        .filter(|a| a.parse::<std::net::SocketAddr>().is_ok());
    let reason = ["message: \"", "error: \""]
        .iter()
        .find_map(|m| {
            let at = rest.find(m)? + m.len();
            rest[at..].split('"').next().map(str::to_string)
        })
        .unwrap_or_else(|| kind.to_string());
    Some((address, reason))
}

/// A task's error message, if `text` holds a job failure whose task error
/// is one message in wrappers: `Kind(Kind(…("message")…))`, the debug form
/// Ballista sends. uqcast's executors pass their scans' errors on as
/// messages so that they read this way (`uqcast_netcdf::FileNames`).
fn task_error(text: &str) -> Option<String> {
    const MARK: &str = "Task failed due to runtime execution error: ";
    let mut rest = &text[text.find(MARK)? + MARK.len()..];
    let mut depth = 0;
    while !rest.starts_with('"') {
        let name = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_alphanumeric() || c == '_')
                .len();
        rest = rest[name..].strip_prefix('(')?;
        depth += 1;
    }
    let (message, after) = string_literal(rest)?;
    let closing = after.len() - after.trim_start_matches(')').len();
    (closing == depth && after[closing..].trim().is_empty()).then_some(message)
}

/// The value of the Rust debug-form string literal that `text` begins
/// with, and what follows it.
fn string_literal(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.strip_prefix('"')?.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 2..])),
            '\\' => value.push(match chars.next()?.1 {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '0' => '\0',
                other @ ('"' | '\\' | '\'') => other,
                _ => return None, // \u{…}: not in the messages this reads
            }),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "df://h:50050";

    #[test]
    fn a_scheduler_refusal_is_given_as_its_reason() {
        // As a client saw it from Ballista 55 (headers shortened).
        let seen = "Execution error: Status { code: InvalidArgument, message: \"Could not parse \
                    plan: DataFusion error: Execution error: s3://b/era5/a.nc: no S3 \
                    credentials: set \\\"AWS_ACCESS_KEY_ID\\\"\", metadata: MetadataMap { \
                    headers: {\"server\": \"ballista/55.0.0\"} }, source: None }";
        let e = failure("query", URL, anyhow::anyhow!("{seen}"));
        assert_eq!(
            e.to_string(),
            "query on the cluster at df://h:50050: the scheduler could not plan it: \
             s3://b/era5/a.nc: no S3 credentials: set \"AWS_ACCESS_KEY_ID\""
        );
        // A job the scheduler accepted and failed to plan stages for.
        let seen = "Execution error: Job 038J11AXPJ000 failed: DataFusion error: Execution \
                    error: s3://b: no S3 credentials: set AWS_ACCESS_KEY_ID\n";
        let e = failure("query", URL, anyhow::anyhow!("{seen}"));
        assert_eq!(
            e.to_string(),
            "query on the cluster at df://h:50050: the scheduler could not plan it: \
             s3://b: no S3 credentials: set AWS_ACCESS_KEY_ID"
        );
    }

    #[test]
    fn a_task_error_is_given_as_its_message() {
        // As a client saw it from Ballista 55, a scan's error on an executor.
        let seen = "Execution error: Job 038J0YEJA2000 failed: Job failed due to stage 0 \
                    failed: Task failed due to runtime execution error: \
                    DataFusionError(Shared(External(DataFusionError(External(\"s3://b/bad/c.nc: \
                    t2m at 2020-01-01T00:00:00Z, latitude 0, longitude 0 is 7.5 K, outside the \
                    150…350 K a 2 m temperature can be (values in °C or °F under units \
                    \\\"K\\\"?)\")))))\n";
        let e = failure("query", URL, anyhow::anyhow!("{seen}"));
        assert_eq!(
            e.to_string(),
            "query on the cluster at df://h:50050: a task failed: s3://b/bad/c.nc: t2m at \
             2020-01-01T00:00:00Z, latitude 0, longitude 0 is 7.5 K, outside the 150…350 K a \
             2 m temperature can be (values in °C or °F under units \"K\"?)"
        );
    }

    #[test]
    fn failures_without_a_readable_reason_point_to_the_executor_log() {
        let unprepared = "Execution error: Job 038J0YFYJT000 failed: task could not be prepared \
                          or was rejected by executor";
        // A structured error's debug form is not one message: not guessed at.
        let structured = "Job 1 failed: Task failed due to runtime execution error: \
                          DataFusionError(External(Implausible { path: \"/d/a.nc\", value: 7.5 }))";
        let unbalanced = "Task failed due to runtime execution error: External(\"a.nc: bad\"";
        for seen in [unprepared, structured, unbalanced] {
            let e = failure("forecast", URL, anyhow::anyhow!("{seen}"));
            assert_eq!(e.to_string(), failed("forecast", URL));
            assert_eq!(format!("{:#}", e.root_cause()), seen);
        }
    }

    #[test]
    fn a_connection_not_made_says_to_what_and_why() {
        // As a client saw them from Ballista 55 (tonic 0.14).
        let refused = "Execution error: tonic::transport::Error(Transport, \
                       ConnectError(ConnectError(\"tcp connect error\", 127.0.0.1:50050, Os { \
                       code: 111, kind: ConnectionRefused, message: \"Connection refused\" })))";
        let e = failure(
            "query",
            "df://127.0.0.1:50050",
            anyhow::anyhow!("{refused}"),
        );
        assert_eq!(
            e.to_string(),
            "query: no connection to the scheduler at df://127.0.0.1:50050: Connection refused \
             (is `uqcast scheduler` running there, and reachable from here?)"
        );
        let unresolved = "Execution error: tonic::transport::Error(Transport, \
                          ConnectError(ConnectError(\"dns error\", Custom { kind: \
                          Uncategorized, error: \"failed to lookup address information: Name \
                          or service not known\" })))";
        let e = failure(
            "query",
            "df://nowhere:50050",
            anyhow::anyhow!("{unresolved}"),
        );
        assert_eq!(
            e.to_string(),
            "query: no connection to the scheduler at df://nowhere:50050: failed to lookup \
             address information: Name or service not known (is `uqcast scheduler` running \
             there, and reachable from here?)"
        );
        // A scheduler named by a name that resolves to the address.
        let e = failure(
            "query",
            "df://localhost:50050",
            anyhow::anyhow!("{refused}"),
        );
        assert!(
            e.to_string()
                .starts_with("query: no connection to the scheduler at df://localhost:50050"),
            "{e}"
        );
        // The scheduler answered; an executor it named did not.
        let e = failure(
            "forecast",
            "df://10.0.0.1:50050",
            anyhow::anyhow!("{}", refused.replace("127.0.0.1:50050", "10.0.0.7:50051")),
        );
        assert_eq!(
            e.to_string(),
            "forecast on the cluster at df://10.0.0.1:50050: no connection to the executor at \
             10.0.0.7:50051: Connection refused (results are fetched from executors; `uqcast \
             executor --external-host` names an address this machine can reach)"
        );
    }

    #[test]
    fn string_literals_read_as_rust_writes_them() {
        let written = format!("{:?} tail", "a \"b\" \\ c\nd…");
        assert_eq!(
            string_literal(&written),
            Some(("a \"b\" \\ c\nd…".to_string(), " tail"))
        );
        assert_eq!(string_literal("\"unterminated"), None);
        assert_eq!(string_literal("no quote"), None);
    }
}
