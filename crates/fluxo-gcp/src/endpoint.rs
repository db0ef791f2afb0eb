//! Where the gRPC connectors (Pub/Sub, Bigtable) send their requests, and every behaviour that
//! differs between Google's service and a local emulator, in one place.
//!
//! The connectors ask an [`Endpoint`] what to do (`paces_unary_pulls`, `default_receive_mode`,
//! `internal_error_is_permanent`, ...) instead of testing for an emulator themselves, so the
//! production path reads the same as on Google and each emulator workaround is written, justified
//! and tested once, here. Cloud Storage and BigQuery speak REST and resolve URLs with their own
//! emulator variables (`storage::resolve_endpoint`, `bigquery::config`); they need no workaround in
//! their request path.

use crate::error::ConfigError;

/// A Google Cloud API with a gRPC endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Cloud Pub/Sub.
    PubSub,
    /// Cloud Bigtable (data API; the admin API's host is the connector's business).
    Bigtable,
}

impl Api {
    /// Google's host of the API (`host:port`).
    pub const fn google_host(self) -> &'static str {
        match self {
            Api::PubSub => "pubsub.googleapis.com:443",
            Api::Bigtable => "bigtable.googleapis.com:443",
        }
    }

    /// The environment variable that names an emulator (`host:port`), honoured when no endpoint is
    /// configured (the names Google's own clients use).
    pub const fn emulator_env(self) -> &'static str {
        match self {
            Api::PubSub => "PUBSUB_EMULATOR_HOST",
            Api::Bigtable => "BIGTABLE_EMULATOR_HOST",
        }
    }

    /// The configuration field of the endpoint, for messages.
    fn field(self) -> &'static str {
        match self {
            Api::PubSub => "pubsub.endpoint",
            Api::Bigtable => "bigtable.endpoint",
        }
    }

    /// An example emulator address, for messages (the emulators' default ports).
    fn example(self) -> &'static str {
        match self {
            Api::PubSub => "127.0.0.1:8085",
            Api::Bigtable => "127.0.0.1:8086",
        }
    }
}

/// Where a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An emulator at `host:port`: plain text, no credentials.
    Emulator(String),
    /// Google's endpoint of the API, over TLS with Application Default Credentials.
    Google(Api),
}

impl Endpoint {
    /// The configured endpoint (`host:port` or `http://host:port`; empty counts as unset), else the
    /// API's emulator variable, else Google's endpoint.
    pub fn resolve(api: Api, configured: Option<&str>) -> Result<Endpoint, ConfigError> {
        Self::resolve_from(
            api,
            configured,
            std::env::var(api.emulator_env()).ok().as_deref(),
        )
    }

    /// [`Endpoint::resolve`] for Pub/Sub (`PUBSUB_EMULATOR_HOST`).
    pub fn pubsub(configured: Option<&str>) -> Result<Endpoint, ConfigError> {
        Self::resolve(Api::PubSub, configured)
    }

    /// [`Endpoint::resolve`] for Bigtable (`BIGTABLE_EMULATOR_HOST`).
    pub fn bigtable(configured: Option<&str>) -> Result<Endpoint, ConfigError> {
        Self::resolve(Api::Bigtable, configured)
    }

    fn resolve_from(
        api: Api,
        configured: Option<&str>,
        env: Option<&str>,
    ) -> Result<Endpoint, ConfigError> {
        let chosen = configured
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .or(env.map(str::trim).filter(|v| !v.is_empty()));
        match chosen {
            None => Ok(Endpoint::Google(api)),
            Some(v) => {
                let host = v.strip_prefix("http://").unwrap_or(v).trim_end_matches('/');
                let valid = !host.is_empty()
                    && !host.contains("://")
                    && !host.contains(char::is_whitespace)
                    && host
                        .rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                    && tonic::transport::Endpoint::from_shared(format!("http://{host}")).is_ok();
                if valid {
                    Ok(Endpoint::Emulator(host.to_string()))
                } else {
                    Err(ConfigError::invalid(
                        api.field(),
                        format!(
                            "'{v}' is not an emulator endpoint of the form host:port (for example {})",
                            api.example()
                        ),
                    ))
                }
            }
        }
    }

    /// True for an emulator.
    pub fn is_emulator(&self) -> bool {
        matches!(self, Endpoint::Emulator(_))
    }

    // --- Pub/Sub ---------------------------------------------------------------------------

    /// Whether the Pub/Sub source receives by `StreamingPull` when its mode is `auto`.
    ///
    /// Google recommends StreamingPull for high-throughput subscribers. The emulator's StreamingPull
    /// delivers about 2,000 messages/s against more than 40,000 for unary `Pull` on the same machine
    /// (`cargo bench --bench gcp_pubsub`), so on an emulator `auto` means unary pull.
    pub fn prefers_streaming_pull(&self) -> bool {
        !self.is_emulator()
    }

    /// Whether unary pulls wait (briefly) for the previous batch's acknowledgements.
    ///
    /// The Pub/Sub emulator (`cloud-pubsub-emulator` 0.8.x, `MessageBacklog.updateExpiredAckDeadlines`)
    /// copies the subscription's whole undelivered backlog on every `Pull` made while any message is
    /// delivered and not yet acked; with 200,000 messages backlogged such a pull costs milliseconds
    /// more. Google's service has no such cost, so there the source never waits.
    pub fn paces_unary_pulls(&self) -> bool {
        self.is_emulator()
    }

    /// gRPC channels of a Pub/Sub client: one suffices for a local emulator; on Google several
    /// spread the streams over connections (each HTTP/2 connection carries at most about 100
    /// concurrent streams).
    pub fn pubsub_channels(&self) -> usize {
        match self {
            Endpoint::Emulator(_) => 1,
            Endpoint::Google(_) => 4,
        }
    }

    // --- Bigtable ----------------------------------------------------------------------------

    /// Whether a Bigtable `INTERNAL` status with this message is permanent rather than transient.
    ///
    /// Google answers a missing column family or a bad timestamp with `NOT_FOUND` /
    /// `INVALID_ARGUMENT` and an `INTERNAL` only for transient server faults. cbtemulator answers
    /// `INTERNAL` for both a missing family and a timestamp that is not a whole millisecond; retrying
    /// those would never succeed. The sink checks both before sending, so this only matters when a
    /// table changes under a running sink.
    pub fn internal_error_is_permanent(&self, message: &str) -> bool {
        match self {
            Endpoint::Google(_) => false,
            Endpoint::Emulator(_) => {
                let m = message.to_ascii_lowercase();
                m.contains("family") || m.contains("timestamp")
            }
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Emulator(h) => f.write_str(h),
            Endpoint::Google(api) => f.write_str(api.google_host()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order_and_validation() {
        let r = |c: Option<&str>, e: Option<&str>| Endpoint::resolve_from(Api::PubSub, c, e);
        assert_eq!(r(None, None).unwrap(), Endpoint::Google(Api::PubSub));
        assert_eq!(
            r(Some(""), Some(" ")).unwrap(),
            Endpoint::Google(Api::PubSub)
        );
        assert_eq!(
            r(None, Some("localhost:8085")).unwrap(),
            Endpoint::Emulator("localhost:8085".into())
        );
        assert_eq!(
            r(Some("http://127.0.0.1:1/"), Some("localhost:8085")).unwrap(),
            Endpoint::Emulator("127.0.0.1:1".into())
        );
        for bad in [
            "localhost",
            "a b:1",
            "https://x:1",
            ":1",
            "host:99999",
            "host:",
        ] {
            let e = r(Some(bad), None).unwrap_err().to_string();
            assert!(
                e.contains("pubsub.endpoint") && e.contains("127.0.0.1:8085"),
                "{e}"
            );
        }
        let e = Endpoint::resolve_from(Api::Bigtable, Some("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bigtable.endpoint"), "{e}");
        assert_eq!(
            Endpoint::Google(Api::Bigtable).to_string(),
            "bigtable.googleapis.com:443"
        );
    }

    #[test]
    fn workarounds_apply_to_emulators_only() {
        let emu = Endpoint::Emulator("127.0.0.1:1".into());
        for api in [Api::PubSub, Api::Bigtable] {
            let google = Endpoint::Google(api);
            assert!(google.prefers_streaming_pull() && !emu.prefers_streaming_pull());
            assert!(!google.paces_unary_pulls() && emu.paces_unary_pulls());
            for m in [
                "unknown family \"gone\"",
                "Timestamp must be ms",
                "server fault",
            ] {
                assert!(!google.internal_error_is_permanent(m), "{m}");
            }
        }
        assert!(emu.internal_error_is_permanent("unknown family \"gone\""));
        assert!(emu.internal_error_is_permanent("Timestamp granularity"));
        assert!(!emu.internal_error_is_permanent("server fault"));
    }
}
