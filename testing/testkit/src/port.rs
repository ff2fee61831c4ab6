use std::net::{Ipv4Addr, TcpListener};

use crate::Error;

/// A free TCP port on 127.0.0.1, for a program that must be told its port up front (such as
/// chromedriver). The port is released before the caller binds it, so another process could
/// take it in between; the kernel hands out ephemeral ports in turn, which makes that rare.
/// A server the test starts itself should bind `127.0.0.1:0` instead.
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::FreePort)?;
    Ok(listener.local_addr().map_err(Error::FreePort)?.port())
}
