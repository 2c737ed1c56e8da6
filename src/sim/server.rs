//! [`ServerSlot`]: a simulator's running server, which a test can stop so clients meet a closed
//! port, and the middleware that refuses requests once it has stopped.

use actix_web::dev::ServerHandle;
use std::sync::{Arc, Mutex};

/// Owns a running server; stopping it closes the listener so clients get "connection refused".
/// Dropping the last owner stops the server too, so tests do not leak listeners.
pub(crate) struct ServerSlot {
    handle: Mutex<Option<ServerHandle>>,
    stopped: StopFlag,
}

/// Set when a simulator stops. A client's kept-alive connection may still reach a worker for a
/// moment after the listener closed; requests arriving that way are refused (see
/// [`refuse_when_stopped`]) so "stopped" never means "answered normally".
pub(crate) type StopFlag = Arc<std::sync::atomic::AtomicBool>;

/// The middleware body for `App::wrap_fn`: refuses every request once `stopped` is set.
pub(crate) fn refuse_when_stopped<S, B>(
    stopped: &StopFlag,
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    let refused = stopped.load(std::sync::atomic::Ordering::SeqCst);
    let answer = srv.call(req);
    async move {
        if refused {
            return Err(actix_web::error::ErrorServiceUnavailable(
                "simulator stopped",
            ));
        }
        answer.await
    }
}

impl ServerSlot {
    /// Spawns `server` on the current runtime and keeps its handle; `stopped` is the flag its
    /// app checks with [`refuse_when_stopped`].
    pub(crate) fn spawn(server: actix_web::dev::Server, stopped: StopFlag) -> ServerSlot {
        let handle = server.handle();
        tokio::spawn(server);
        ServerSlot {
            handle: Mutex::new(Some(handle)),
            stopped,
        }
    }

    /// Stops without waiting for in-flight requests (a hanging Graph answer must not delay it).
    pub(crate) async fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let handle = self.handle.lock().expect("server slot lock").take();
        if let Some(h) = handle {
            h.stop(false).await;
        }
    }
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.handle.lock() {
            if let Some(h) = g.take() {
                // The stop command is sent when `stop` is called; the future only waits.
                drop(h.stop(false));
            }
        }
    }
}
