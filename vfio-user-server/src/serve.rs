//! One client's session: the `vfio_user` crate's server loop, then the clean-up that puts
//! the device back as the next client must find it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::backend::Backend;
use crate::host::HostDevice;

/// How a client's session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed the connection.
    Left,
    /// The connection (or the accept) failed.
    Failed(vfio_user::Error),
    /// The crate panicked on a malformed message (its version negotiation unwraps and
    /// subtracts what the client sent); the client is dropped, the server lives on.
    Malformed,
}

/// Serves the next client until it goes away, then takes back what it was given
/// (`Backend::client_gone`), whichever way it ended.
pub fn serve_one<H: HostDevice>(
    server: &vfio_user::Server,
    backend: &mut Backend<H>,
) -> SessionEnd {
    let end = match catch_unwind(AssertUnwindSafe(|| server.run(backend))) {
        Ok(Ok(())) => SessionEnd::Left,
        Ok(Err(e)) => SessionEnd::Failed(e),
        Err(_) => SessionEnd::Malformed,
    };
    backend.client_gone();
    end
}
