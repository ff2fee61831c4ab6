//! Which login flow suits this terminal, and opening the person's browser.
//!
//! The browser is `$SEKISHO_BROWSER` (`none`: do not open one, only print the URL), else each
//! entry of `$BROWSER` (colon separated; `%s` stands for the URL, else it is the last argument),
//! else `xdg-open`. A browser that does not start is not an error: the URL is on the terminal.
//! The browser's output never reaches our stdout (ssh's stream when we run as a ProxyCommand).

use std::ffi::OsString;
use std::process::{Command, Stdio};

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// A browser on this machine, with a loopback redirect. `open`: try to start a browser
    /// (else only print the URL).
    Browser { open: bool },
    /// The device flow: approve on any device's browser.
    Device,
}

/// Looks up an environment variable.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn set(env: Env<'_>, name: &str) -> bool {
    env(name).is_some_and(|value| !value.is_empty())
}

/// Whether no browser can run here: no display, or a session over ssh.
pub fn is_headless(env: Env<'_>) -> bool {
    let display = set(env, "DISPLAY") || set(env, "WAYLAND_DISPLAY");
    let ssh = set(env, "SSH_CONNECTION") || set(env, "SSH_TTY");
    !display || ssh
}

/// The flow for the command line's choices (`--no-browser`, `--print-url-only`) and the
/// environment.
pub fn choose_flow(no_browser: bool, print_url_only: bool, env: Env<'_>) -> Flow {
    if no_browser {
        return Flow::Device;
    }
    let never_open = env("SEKISHO_BROWSER").is_some_and(|b| b == "none");
    if print_url_only || never_open {
        return Flow::Browser { open: false };
    }
    if is_headless(env) {
        return Flow::Device;
    }
    Flow::Browser { open: true }
}

/// The commands to try in turn to open `url`, each as program and arguments.
pub fn commands(url: &str, env: Env<'_>) -> Vec<Vec<OsString>> {
    let parse = |entry: &str| -> Option<Vec<OsString>> {
        let mut words: Vec<OsString> = Vec::new();
        let mut has_url = false;
        for word in entry.split_whitespace() {
            if word.contains("%s") {
                has_url = true;
                words.push(word.replace("%s", url).into());
            } else {
                words.push(word.into());
            }
        }
        if words.is_empty() {
            return None;
        }
        if !has_url {
            words.push(url.into());
        }
        Some(words)
    };
    if let Some(choice) = env("SEKISHO_BROWSER").and_then(|b| b.into_string().ok()) {
        if choice == "none" {
            return Vec::new();
        }
        return parse(&choice).into_iter().collect();
    }
    let mut commands: Vec<Vec<OsString>> = env("BROWSER")
        .and_then(|b| b.into_string().ok())
        .map(|list| list.split(':').filter_map(parse).collect())
        .unwrap_or_default();
    commands.push(vec!["xdg-open".into(), url.into()]);
    commands
}

/// Starts the first of [`commands`] that starts; returns whether one did. Its output goes
/// nowhere; it is waited for on a thread of its own so that it leaves no zombie.
pub fn open(url: &str, env: Env<'_>) -> bool {
    for command in commands(url, env) {
        let Some((program, args)) = command.split_first() else {
            continue;
        };
        let spawned = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = spawned {
            std::thread::spawn(move || child.wait());
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn a_box_without_a_display_or_reached_over_ssh_is_headless() {
        assert!(is_headless(&env(&[])));
        assert!(is_headless(&env(&[("DISPLAY", "")])));
        assert!(!is_headless(&env(&[("DISPLAY", ":0")])));
        assert!(!is_headless(&env(&[("WAYLAND_DISPLAY", "wayland-0")])));
        assert!(is_headless(&env(&[
            ("DISPLAY", ":0"),
            ("SSH_CONNECTION", "1 2 3 4")
        ])));
        assert!(is_headless(&env(&[
            ("DISPLAY", ":0"),
            ("SSH_TTY", "/dev/pts/1")
        ])));
    }

    #[test]
    fn the_flow_follows_the_flags_then_the_environment() {
        let desktop = env(&[("DISPLAY", ":0")]);
        let headless = env(&[]);
        let none = env(&[("DISPLAY", ":0"), ("SEKISHO_BROWSER", "none")]);
        assert_eq!(
            choose_flow(false, false, &desktop),
            Flow::Browser { open: true }
        );
        assert_eq!(choose_flow(true, false, &desktop), Flow::Device);
        assert_eq!(choose_flow(true, true, &desktop), Flow::Device);
        assert_eq!(
            choose_flow(false, true, &desktop),
            Flow::Browser { open: false }
        );
        assert_eq!(choose_flow(false, false, &headless), Flow::Device);
        assert_eq!(
            choose_flow(false, true, &headless),
            Flow::Browser { open: false }
        );
        assert_eq!(
            choose_flow(false, false, &none),
            Flow::Browser { open: false }
        );
    }

    #[test]
    fn the_browser_is_sekisho_browser_else_each_browser_entry_then_xdg_open() {
        let url = "https://auth.example.com/x?a=1";
        let words = |c: &[Vec<OsString>]| -> Vec<Vec<String>> {
            c.iter()
                .map(|w| w.iter().map(|s| s.to_string_lossy().into_owned()).collect())
                .collect()
        };
        assert_eq!(
            words(&commands(url, &env(&[]))),
            vec![vec!["xdg-open".to_owned(), url.to_owned()]]
        );
        assert_eq!(
            words(&commands(
                url,
                &env(&[("BROWSER", "firefox --new-tab:w3m %s")])
            )),
            vec![
                vec!["firefox".to_owned(), "--new-tab".to_owned(), url.to_owned()],
                vec!["w3m".to_owned(), url.to_owned()],
                vec!["xdg-open".to_owned(), url.to_owned()],
            ]
        );
        assert_eq!(
            words(&commands(
                url,
                &env(&[("SEKISHO_BROWSER", "chromium"), ("BROWSER", "x")])
            )),
            vec![vec!["chromium".to_owned(), url.to_owned()]]
        );
        assert!(commands(url, &env(&[("SEKISHO_BROWSER", "none")])).is_empty());
    }
}
