//! End-to-end checks of the test kit against the real parts: devidp under Node.js, Debian's
//! chromium and chromedriver, and small hyper servers on loopback ports. One binary for all,
//! so the kit and its dependencies are linked once.

mod browser;
mod idp;
mod support;
