//! Shutdown signalling: one trigger, many cheap listeners.

use tokio::sync::watch;

/// The trigger side: call [`Shutdown::trigger`] to ask the pipeline to stop its sources and drain.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// The listening side handed to sources and to the runner.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: Option<watch::Receiver<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new, untriggered shutdown.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Shutdown { tx }
    }

    /// A listener.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: Some(self.tx.subscribe()),
        }
    }

    /// Asks every listener to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self::never()
    }
}

impl ShutdownSignal {
    /// A signal that never fires (bounded runs that end when their sources are exhausted).
    pub fn never() -> Self {
        ShutdownSignal { rx: None }
    }

    /// A signal fired by SIGTERM or SIGINT (Ctrl-C). Must be called inside a tokio runtime.
    pub fn on_os_signals() -> Self {
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        tokio::spawn(async move {
            wait_for_os_signal().await;
            tracing::info!("shutdown requested by signal: stopping sources and draining");
            shutdown.trigger();
            // Keep the sender alive so listeners never see a closed channel as "no shutdown".
            std::future::pending::<()>().await;
        });
        signal
    }

    /// True once shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        self.rx.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Resolves when shutdown is requested (never, for [`ShutdownSignal::never`]).
    pub async fn wait(&self) {
        match &self.rx {
            None => std::future::pending().await,
            Some(rx) => {
                let mut rx = rx.clone();
                if rx.wait_for(|v| *v).await.is_err() {
                    // The trigger was dropped without firing: treat as "never".
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

async fn wait_for_os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_listeners() {
        let s = Shutdown::new();
        let sig = s.signal();
        assert!(!sig.is_triggered());
        let waiter = tokio::spawn({
            let sig = sig.clone();
            async move { sig.wait().await }
        });
        s.trigger();
        waiter.await.unwrap();
        assert!(sig.is_triggered());
        assert!(!ShutdownSignal::never().is_triggered());
    }
}
