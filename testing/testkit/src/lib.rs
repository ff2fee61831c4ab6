//! Real parts for Sekisho's end-to-end identity tests: the project's dev OpenID provider
//! ([`Idp`], `testing/devidp/server.mjs` under Node.js), a headless Chromium driven over WebDriver
//! ([`Browser`], Debian's `chromium` and `chromium-driver`) and an nginx upstream ([`Nginx`],
//! Debian's `nginx-light`), in-process upstreams ([`EchoUpstream`], [`TcpEcho`]), a throwaway
//! CA ([`Pki`]), plus the small helpers such tests need ([`free_port`], [`eventually`],
//! [`spki_sha256_base64`], [`login_with_browser`], [`pkce`]).
//!
//! Test-only: use it as a dev-dependency; nothing in a shipped binary may depend on it, and it
//! must not depend on Sekisho's own crates, so that any of them can test against it. Every
//! process it starts runs in a process group of its own, watched by a small `sh` process that
//! kills that group and removes its temporary directory as soon as the test process is gone,
//! however it ended; dropping the handle does the same at once.

mod browser;
mod certificate;
mod echo;
mod error;
mod idp;
mod log;
mod login;
mod logout_capture;
mod netns;
mod nginx;
mod pkce;
mod port;
mod process;
mod retry;

pub use browser::{Browser, BrowserOptions, Cookie};
pub use certificate::{Leaf, Pki, spki_sha256_base64};
pub use echo::{EchoUpstream, Received, TcpEcho, echoed};
pub use error::Error;
pub use idp::{Idp, IdpBuilder};
pub use login::login_with_browser;
pub use logout_capture::LogoutCapture;
pub use netns::PodNetwork;
pub use nginx::{Nginx, Seen};
pub use pkce::pkce;
pub use port::free_port;
pub use retry::eventually;
pub use url::Url;
