//! Errors shared by the connectors.

/// A configuration that cannot run: a bad name or limit, or an endpoint that does not answer. The message
/// is one line that says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value the service or the connector does not accept.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, as written in the configuration (for example `pubsub.subscription`).
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The service did not answer, or refused, a check made before starting.
    #[error("{service} at {endpoint} is not reachable: {reason}")]
    Unreachable {
        /// The service (`Pub/Sub`, `Bigtable`, `BigQuery`, `Cloud Storage`).
        service: &'static str,
        /// The endpoint that was tried.
        endpoint: String,
        /// What happened, and what to check.
        reason: String,
    },
    /// A resource named in the configuration does not exist.
    #[error("{service} {kind} '{name}' does not exist{hint}")]
    NotFound {
        /// The service.
        service: &'static str,
        /// `topic`, `subscription`, `table`, `bucket`, ...
        kind: &'static str,
        /// The resource name.
        name: String,
        /// Text appended to the message, for example `; create it with ...`.
        hint: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Whether a gRPC status code is worth retrying: transient unavailability, deadlines, throttling,
/// aborted transactions and internal errors (which Google APIs document as retriable) are; everything else
/// (bad arguments, missing resources, permissions) is not.
pub fn grpc_code_is_retriable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | Internal
            | Unknown
            | Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_codes() {
        assert!(grpc_code_is_retriable(tonic::Code::Unavailable));
        assert!(grpc_code_is_retriable(tonic::Code::ResourceExhausted));
        assert!(!grpc_code_is_retriable(tonic::Code::InvalidArgument));
        assert!(!grpc_code_is_retriable(tonic::Code::NotFound));
        assert!(!grpc_code_is_retriable(tonic::Code::PermissionDenied));
    }

    #[test]
    fn messages_are_one_line() {
        let e = ConfigError::NotFound {
            service: "Pub/Sub",
            kind: "subscription",
            name: "projects/p/subscriptions/s".into(),
            hint: "; create it first".into(),
        };
        assert_eq!(
            e.to_string(),
            "Pub/Sub subscription 'projects/p/subscriptions/s' does not exist; create it first"
        );
    }
}
