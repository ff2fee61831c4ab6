use std::net::{Ipv4Addr, TcpListener};

use crate::Error;

/// Asks the kernel for a free loopback port. The port is released before the caller's
/// process binds it, so another process could take it in between; the kernel hands out
/// ephemeral ports in turn, which makes that rare enough for tests.
pub(crate) fn free() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::FreePort)?;
    Ok(listener.local_addr().map_err(Error::FreePort)?.port())
}
