//! Where `gs://` requests go: an explicit endpoint, the Cloud Storage emulator named by the
//! environment, or Google, and whether that endpoint needs credentials.

/// The environment variable with the Cloud Storage emulator's URL (`http://host:port`).
pub const STORAGE_EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";
const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// The Cloud Storage endpoint to use: the explicit one, else `STORAGE_EMULATOR_HOST` (a bare
/// `host:port` gets `http://`), else Google's. The flag says whether it is an emulator (no credentials).
pub fn resolve_endpoint(explicit: Option<&str>) -> (String, bool) {
    endpoint_from(
        explicit,
        std::env::var(STORAGE_EMULATOR_ENV).ok().as_deref(),
    )
}

fn endpoint_from(explicit: Option<&str>, env: Option<&str>) -> (String, bool) {
    if let Some(e) = explicit {
        let e = e.trim_end_matches('/').to_string();
        let emulator = e != GOOGLE_ENDPOINT;
        return (e, emulator);
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        let e = e.trim_end_matches('/');
        let e = if e.contains("://") {
            e.to_string()
        } else {
            format!("http://{e}")
        };
        return (e, true);
    }
    (GOOGLE_ENDPOINT.to_string(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolution_order() {
        assert_eq!(
            endpoint_from(Some("http://127.0.0.1:1/"), Some("http://x:2")),
            ("http://127.0.0.1:1".to_string(), true)
        );
        assert_eq!(
            endpoint_from(None, Some("localhost:4443")),
            ("http://localhost:4443".to_string(), true)
        );
        assert_eq!(
            endpoint_from(None, Some("")),
            (GOOGLE_ENDPOINT.to_string(), false)
        );
        assert_eq!(
            endpoint_from(None, None),
            (GOOGLE_ENDPOINT.to_string(), false)
        );
        assert_eq!(
            endpoint_from(Some(GOOGLE_ENDPOINT), None),
            (GOOGLE_ENDPOINT.to_string(), false)
        );
    }
}
