//! Connections: the data API through `bigtable_rs`, the table admin API through the generated
//! `googleapis-tonic-google-bigtable-admin-v2` client on a channel built here, and the connector's error
//! type with its retry classification.

use std::sync::Arc;
use std::time::Duration;

use bigtable_rs::bigtable::{BigTable, BigTableConnection};
use gcp_auth::TokenProvider;
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::bigtable_table_admin_client::BigtableTableAdminClient;
use tonic::transport::{Channel, ClientTlsConfig};

use super::config::{Endpoint, ValidConfig};
use crate::error::{grpc_code_is_retriable, ConfigError};

/// Scope of the table admin API.
const ADMIN_SCOPE: &str = "https://www.googleapis.com/auth/bigtable.admin.table";
/// Google's table admin endpoint.
const ADMIN_HOST: &str = "bigtableadmin.googleapis.com";

/// An error of the Bigtable connector, classified for retries by [`fluxo::ErrorClass`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum BigtableError {
    /// The server answered a request (or one entry of it) with a gRPC status.
    #[error("Bigtable {op}: {code:?}: {message}")]
    Status {
        /// The operation (`MutateRows`, `ReadRows`, `CreateTable`, ...).
        op: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
        /// Whether retrying may help (see [`classify`]).
        retriable: bool,
    },
    /// The element can never be written (bad timestamp, unknown family, oversize key...): rejected
    /// without being sent.
    #[error("Bigtable: element refused: {0}")]
    InvalidElement(String),
    /// The connection failed or the request timed out; retriable.
    #[error("Bigtable {op}: {reason}")]
    Transport {
        /// The operation.
        op: &'static str,
        /// What happened.
        reason: String,
    },
    /// Credentials could not be obtained (not retriable: the configuration must change).
    #[error("Bigtable credentials: {0}")]
    Auth(String),
}

impl fluxo::ErrorClass for BigtableError {
    fn is_retriable(&self) -> bool {
        match self {
            BigtableError::Status { retriable, .. } => *retriable,
            BigtableError::InvalidElement(_) | BigtableError::Auth(_) => false,
            BigtableError::Transport { .. } => true,
        }
    }
}

impl BigtableError {
    /// An error from a gRPC status, classified by its code ([`grpc_code_is_retriable`]).
    pub fn from_status(op: &'static str, status: &tonic::Status) -> Self {
        let code = status.code();
        BigtableError::Status {
            op,
            code,
            message: status.message().to_string(),
            retriable: grpc_code_is_retriable(code),
        }
    }

    /// [`BigtableError::from_status`] for a status from `endpoint`, classified by [`classify`] (what
    /// the sink uses for the answers to its writes).
    pub fn from_status_on(endpoint: &Endpoint, op: &'static str, status: &tonic::Status) -> Self {
        let mut e = Self::from_status(op, status);
        if let BigtableError::Status { retriable, .. } = &mut e {
            *retriable = classify(endpoint, status.code(), status.message());
        }
        e
    }

    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            BigtableError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn from_client(op: &'static str, e: bigtable_rs::bigtable::Error) -> Self {
        use bigtable_rs::bigtable::Error as E;
        match e {
            E::RpcError(s) => BigtableError::from_status(op, &s),
            E::GCPAuthError(e) => BigtableError::Auth(e.to_string()),
            E::AccessTokenError(e) => BigtableError::Auth(e),
            E::TimeoutError(s) => BigtableError::Transport {
                op,
                reason: format!("timed out after {s} s"),
            },
            other => BigtableError::Transport {
                op,
                reason: other.to_string(),
            },
        }
    }
}

/// Retry classification of a status from Bigtable at `endpoint`: [`grpc_code_is_retriable`], except
/// for the `INTERNAL` statuses the endpoint calls permanent
/// ([`Endpoint::internal_error_is_permanent`]: cbtemulator's answer to a missing family or a
/// timestamp that is not a whole millisecond).
pub fn classify(endpoint: &Endpoint, code: tonic::Code, message: &str) -> bool {
    if code == tonic::Code::Internal && endpoint.internal_error_is_permanent(message) {
        return false;
    }
    grpc_code_is_retriable(code)
}

/// The data API client for a validated configuration.
pub(crate) async fn data_client(
    cfg: &ValidConfig,
    read_only: bool,
) -> Result<BigTable, ConfigError> {
    let timeout = Some(cfg.timeout);
    let conn = match &cfg.endpoint {
        Endpoint::Emulator(host) => BigTableConnection::new_with_emulator(
            host,
            &cfg.project,
            &cfg.instance,
            read_only,
            cfg.channels,
            timeout,
        ),
        Endpoint::Google(_) => {
            let provider = gcp_auth::provider()
                .await
                .map_err(|e| unreachable(cfg, &e))?;
            BigTableConnection::new_with_token_provider(
                &cfg.project,
                &cfg.instance,
                read_only,
                cfg.channels,
                timeout,
                provider,
            )
        }
    };
    conn.map(|c| c.client()).map_err(|e| unreachable(cfg, &e))
}

fn unreachable(cfg: &ValidConfig, e: &dyn std::fmt::Display) -> ConfigError {
    ConfigError::Unreachable {
        service: "Bigtable",
        endpoint: cfg.endpoint.to_string(),
        reason: e.to_string().replace('\n', " "),
    }
}

/// A client of the table admin API (create tables, add families, read a table's schema).
#[derive(Clone)]
pub struct AdminClient {
    pub(crate) client: BigtableTableAdminClient<Channel>,
    auth: Option<Arc<dyn TokenProvider>>,
    pub(crate) instance_path: String,
    pub(crate) endpoint: String,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("instance", &self.instance_path)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl AdminClient {
    /// Connects (lazily) to the admin API of the configured instance: the emulator without credentials,
    /// or `bigtableadmin.googleapis.com` over TLS with Application Default Credentials.
    pub async fn connect(cfg: &ValidConfig) -> Result<Self, ConfigError> {
        let (channel, auth, endpoint) = match &cfg.endpoint {
            Endpoint::Emulator(host) => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}"))
                    .map_err(|e| unreachable(cfg, &e))?
                    .connect_timeout(cfg.connect_timeout)
                    .timeout(cfg.timeout)
                    .connect_lazy();
                (channel, None, host.clone())
            }
            Endpoint::Google(_) => {
                let channel =
                    tonic::transport::Endpoint::from_static("https://bigtableadmin.googleapis.com")
                        .tls_config(
                            ClientTlsConfig::new()
                                .with_enabled_roots()
                                .domain_name(ADMIN_HOST),
                        )
                        .map_err(|e| unreachable(cfg, &e))?
                        .connect_timeout(cfg.connect_timeout)
                        .timeout(cfg.timeout)
                        .connect_lazy();
                let provider = gcp_auth::provider()
                    .await
                    .map_err(|e| unreachable(cfg, &e))?;
                (channel, Some(provider), ADMIN_HOST.to_string())
            }
        };
        Ok(AdminClient {
            client: BigtableTableAdminClient::new(channel),
            auth,
            instance_path: cfg.instance_path.clone(),
            endpoint,
        })
    }

    /// A request with the credentials and routing header attached.
    pub(crate) async fn request<T>(
        &self,
        op: &'static str,
        msg: T,
        routing: &str,
        timeout: Duration,
    ) -> Result<tonic::Request<T>, BigtableError> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        if let Ok(v) = routing.parse() {
            req.metadata_mut().insert("x-goog-request-params", v);
        }
        if let Some(auth) = &self.auth {
            let token = auth
                .token(&[ADMIN_SCOPE])
                .await
                .map_err(|e| BigtableError::Auth(e.to_string()))?;
            let value = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| BigtableError::Auth(format!("{op}: token is not a valid header")))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

/// Scope of the data API.
const DATA_SCOPE: &str = "https://www.googleapis.com/auth/bigtable.data";

/// The sink's `MutateRows` client: plain tonic channels (round robin), pre-encoded requests
/// ([`super::encode`]), credentials and routing header added per request.
#[derive(Clone)]
pub(crate) struct WriteClient {
    channels: Arc<[Channel]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    auth: Option<Arc<dyn TokenProvider>>,
    routing: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl WriteClient {
    pub(crate) async fn connect(cfg: &ValidConfig) -> Result<Self, ConfigError> {
        let (endpoint, auth) = match &cfg.endpoint {
            Endpoint::Emulator(host) => (
                tonic::transport::Endpoint::from_shared(format!("http://{host}"))
                    .map_err(|e| unreachable(cfg, &e))?,
                None,
            ),
            Endpoint::Google(_) => (
                tonic::transport::Endpoint::from_static("https://bigtable.googleapis.com")
                    .tls_config(
                        ClientTlsConfig::new()
                            .with_enabled_roots()
                            .domain_name("bigtable.googleapis.com"),
                    )
                    .map_err(|e| unreachable(cfg, &e))?,
                Some(
                    gcp_auth::provider()
                        .await
                        .map_err(|e| unreachable(cfg, &e))?,
                ),
            ),
        };
        let endpoint = endpoint
            .connect_timeout(cfg.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channels: Arc<[Channel]> = (0..cfg.channels)
            .map(|_| endpoint.clone().connect_lazy())
            .collect();
        let routing = format!(
            "table_name={}&app_profile_id={}",
            crate::text::percent_encode(&cfg.table_path),
            crate::text::percent_encode(&cfg.app_profile_id)
        )
        .parse()
        .map_err(|_| ConfigError::invalid("bigtable.table", "not usable in a request header"))?;
        Ok(WriteClient {
            channels,
            next: Arc::default(),
            auth,
            routing,
        })
    }

    /// Sends one pre-encoded `MutateRowsRequest` and returns the response stream.
    pub(crate) async fn mutate_rows(
        &self,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<
        tonic::codec::Streaming<bigtable_rs::google::bigtable::v2::MutateRowsResponse>,
        BigtableError,
    > {
        const OP: &str = "MutateRows";
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.channels.len();
        let mut grpc = tonic::client::Grpc::new(self.channels[i].clone());
        let mut req = tonic::Request::new(body);
        req.set_timeout(timeout);
        req.metadata_mut()
            .insert("x-goog-request-params", self.routing.clone());
        if let Some(auth) = &self.auth {
            let token = auth
                .token(&[DATA_SCOPE])
                .await
                .map_err(|e| BigtableError::Auth(e.to_string()))?;
            let value = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| BigtableError::Auth(format!("{OP}: token is not a valid header")))?;
            req.metadata_mut().insert("authorization", value);
        }
        grpc.ready().await.map_err(|e| BigtableError::Transport {
            op: OP,
            reason: e.to_string(),
        })?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/google.bigtable.v2.Bigtable/MutateRows",
        );
        grpc.server_streaming(req, path, super::encode::MutateRowsCodec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| BigtableError::from_status(OP, &s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxo::ErrorClass;

    #[test]
    fn internal_errors_naming_a_family_or_timestamp_are_permanent_on_the_emulator_only() {
        let emu = Endpoint::Emulator("127.0.0.1:1".into());
        let google = Endpoint::Google(crate::endpoint::Api::Bigtable);
        let family = tonic::Status::internal("unknown family \"gone\"");
        assert!(!classify(&emu, tonic::Code::Internal, family.message()));
        assert!(!BigtableError::from_status_on(&emu, "MutateRows", &family).is_retriable());
        assert!(classify(&google, tonic::Code::Internal, family.message()));
        assert!(BigtableError::from_status_on(&google, "MutateRows", &family).is_retriable());
        assert!(!classify(
            &emu,
            tonic::Code::Internal,
            "Timestamp not in millisecond granularity"
        ));
        assert!(classify(&emu, tonic::Code::Internal, "server hiccup"));
        assert!(classify(&emu, tonic::Code::Unavailable, "family"));
        assert!(!classify(&google, tonic::Code::InvalidArgument, "bad"));
        let e = BigtableError::from_status("MutateRows", &tonic::Status::not_found("x"));
        assert!(!e.is_retriable());
        assert!(BigtableError::Transport {
            op: "MutateRows",
            reason: "timed out".into()
        }
        .is_retriable());
        assert!(!BigtableError::InvalidElement("bad".into()).is_retriable());
    }
}
