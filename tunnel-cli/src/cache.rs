//! The token cache: `$XDG_CONFIG_HOME/sekisho/tokens.json` (else `~/.config/sekisho/`), the
//! directory `0700`, the file `0600`, replaced whole on every write (a temporary file in the
//! same directory, then a rename), so a reader never sees half a file.
//!
//! It holds, per auth origin, the tokens of one login and how its proxy was reached (the CA
//! file trusted and the address dialed, when the login was given them); which auth origin each
//! proxy host belongs to; and the proxy used last. A cache that cannot be read or parsed is not fatal:
//! the caller warns and starts an empty one, which the next write replaces.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::grant::Tokens;
use crate::net::Origin;

/// The cache file's name in its directory.
pub const FILE_NAME: &str = "tokens.json";
/// A larger file is not a cache this program wrote.
const MAX_FILE: u64 = 1024 * 1024;
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("neither XDG_CONFIG_HOME nor HOME is set to an absolute path")]
    NoHome,
    #[error("cannot create the directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an existing cache file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheWarning {
    #[error("cannot read the token cache {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token cache {path} is larger than {MAX_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("the token cache {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the token cache {path} has version {version}, which this sekisho does not know")]
    Version { path: PathBuf, version: u32 },
}

/// The directory of the cache: `$XDG_CONFIG_HOME/sekisho`, else `$HOME/.config/sekisho`
/// (relative values are ignored, as the XDG spec says).
pub fn default_dir(
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, CacheError> {
    let absolute = |name: &str| {
        env(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    if let Some(config) = absolute("XDG_CONFIG_HOME") {
        return Ok(config.join("sekisho"));
    }
    absolute("HOME")
        .map(|home| home.join(".config").join("sekisho"))
        .ok_or(CacheError::NoHome)
}

/// How a login reached its proxy, for the commands that follow it to reach the proxy's hosts
/// the same way without being told again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reach {
    /// The CA certificate file trusted (an absolute path), besides the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The address dialed for every host of the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_to: Option<SocketAddr>,
}

impl Reach {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.connect_to.is_none()
    }
}

/// What the file holds. Keys are origins as URLs (`https://host[:port]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    version: u32,
    /// The proxy `login` used last: the default for commands that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_proxy: Option<String>,
    /// Proxy host origin → auth origin.
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    /// Auth origin → the tokens of its login.
    #[serde(default)]
    logins: BTreeMap<String, Tokens>,
    /// Auth origin → how its login reached the proxy (only when it was told something).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    reach: BTreeMap<String, Reach>,
}

impl Cache {
    pub fn new() -> Self {
        Self {
            version: VERSION,
            ..Self::default()
        }
    }

    /// Reads the cache in `dir`. A missing file is an empty cache; one that cannot be used is
    /// an empty cache and a warning.
    pub fn load(dir: &Path) -> (Self, Option<CacheWarning>) {
        let path = dir.join(FILE_NAME);
        match Self::read(&path) {
            Ok(Some(cache)) => (cache, None),
            Ok(None) => (Self::new(), None),
            Err(warning) => (Self::new(), Some(warning)),
        }
    }

    fn read(path: &Path) -> Result<Option<Self>, CacheWarning> {
        let unreadable = |source| CacheWarning::Unreadable {
            path: path.to_owned(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(unreadable(error)),
        };
        let len = file.metadata().map_err(unreadable)?.len();
        if len > MAX_FILE {
            return Err(CacheWarning::TooLarge {
                path: path.to_owned(),
            });
        }
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE), &mut text)
            .map_err(unreadable)?;
        let cache: Self =
            serde_json::from_slice(&text).map_err(|source| CacheWarning::Corrupt {
                path: path.to_owned(),
                source,
            })?;
        if cache.version != VERSION {
            return Err(CacheWarning::Version {
                path: path.to_owned(),
                version: cache.version,
            });
        }
        Ok(Some(cache))
    }

    /// Writes the cache to `dir` (created `0700` if missing, and made `0700` if not), as a new
    /// `0600` file renamed over the old one.
    pub fn save(&self, dir: &Path) -> Result<(), CacheError> {
        let dir_error = |source| CacheError::Dir {
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_error)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
        let path = dir.join(FILE_NAME);
        let write_error = |source| CacheError::Write {
            path: path.clone(),
            source,
        };
        // tempfile creates the file 0600 with a random name, and removes it if we fail.
        let mut file = tempfile::Builder::new()
            .prefix(".tokens.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(write_error)?;
        let json = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .map_err(write_error)?;
        file.write_all(&json).map_err(write_error)?;
        file.write_all(b"\n").map_err(write_error)?;
        file.as_file().sync_all().map_err(write_error)?;
        file.persist(&path).map_err(|e| write_error(e.error))?;
        Ok(())
    }

    /// The tokens of the login at `auth`.
    pub fn login(&self, auth: &Origin) -> Option<&Tokens> {
        self.logins.get(&auth.url())
    }

    pub fn set_login(&mut self, auth: &Origin, tokens: Tokens) {
        self.logins.insert(auth.url(), tokens);
    }

    /// Drops the login at `auth`; the hosts that belong to it stay mapped.
    pub fn remove_login(&mut self, auth: &Origin) -> Option<Tokens> {
        self.logins.remove(&auth.url())
    }

    /// Every login: auth origin and tokens.
    pub fn logins(&self) -> impl Iterator<Item = (Origin, &Tokens)> {
        self.logins
            .iter()
            .filter_map(|(origin, tokens)| Some((Origin::parse(origin).ok()?, tokens)))
    }

    /// The auth origin `proxy` belongs to: itself when it is one, else what was remembered.
    pub fn auth_for(&self, proxy: &Origin) -> Option<Origin> {
        if self.logins.contains_key(&proxy.url()) {
            return Some(proxy.clone());
        }
        self.hosts
            .get(&proxy.url())
            .and_then(|auth| Origin::parse(auth).ok())
    }

    /// Remembers that `proxy` logs in at `auth`.
    pub fn remember_host(&mut self, proxy: &Origin, auth: &Origin) {
        self.hosts.insert(proxy.url(), auth.url());
    }

    /// The proxy hosts that log in at `auth`.
    pub fn hosts_of(&self, auth: &Origin) -> Vec<Origin> {
        self.hosts
            .iter()
            .filter(|(_, a)| **a == auth.url())
            .filter_map(|(host, _)| Origin::parse(host).ok())
            .collect()
    }

    /// Remembers how the login at `auth` reached its proxy (forgets it when `reach` is empty).
    pub fn set_reach(&mut self, auth: &Origin, reach: Reach) {
        if reach.is_empty() {
            self.reach.remove(&auth.url());
        } else {
            self.reach.insert(auth.url(), reach);
        }
    }

    /// How to reach `host`, as the login of its proxy did: the proxy's when `host` is an auth
    /// origin or a host remembered for one; else that of a login whose auth host is in the
    /// domain `host` is in, on the same port (`ssh.example.com:8443` for
    /// `auth.example.com:8443`, `ssh.localhost:8443` for `auth.localhost:8443`), the longest
    /// such domain first.
    pub fn reach_for(&self, host: &Origin) -> Option<&Reach> {
        if let Some(auth) = self.auth_for(host) {
            return self.reach.get(&auth.url());
        }
        self.reach
            .iter()
            .filter_map(|(auth, reach)| {
                let auth = Origin::parse(auth).ok()?;
                let domain = auth.host.split_once('.')?.1;
                let inside = host.host == domain || host.host.ends_with(&format!(".{domain}"));
                (auth.port == host.port && inside).then_some((domain.len(), reach))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, reach)| reach)
    }

    pub fn last_proxy(&self) -> Option<Origin> {
        self.last_proxy
            .as_deref()
            .and_then(|p| Origin::parse(p).ok())
    }

    pub fn set_last_proxy(&mut self, proxy: &Origin) {
        self.last_proxy = Some(proxy.url());
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::secret::Secret;

    fn tokens(user: &str) -> Tokens {
        Tokens {
            access_token: Secret::new("access"),
            access_expires_at: 100,
            refresh_token: Secret::new("refresh"),
            refresh_expires_at: 200,
            user: user.into(),
        }
    }

    fn origin(text: &str) -> Origin {
        Origin::parse(text).unwrap()
    }

    #[test]
    fn the_directory_is_xdg_config_home_else_home_dot_config_and_relative_values_do_not_count() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            default_dir(&env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/x/sekisho")
        );
        assert_eq!(
            default_dir(&env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.config/sekisho")
        );
        assert!(default_dir(&env(&[("HOME", "h")])).is_err());
        assert!(default_dir(&env(&[])).is_err());
    }

    #[test]
    fn a_saved_cache_loads_back_and_is_private_to_its_owner() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("config/sekisho");
        let (mut cache, warning) = Cache::load(&dir);
        assert!(warning.is_none());
        assert_eq!(cache, Cache::new());
        let auth = origin("auth.example.com");
        let app = origin("https://app.example.com:8443/x");
        cache.set_login(&auth, tokens("alice"));
        cache.remember_host(&app, &auth);
        cache.set_last_proxy(&app);
        cache.save(&dir).unwrap();
        let (loaded, warning) = Cache::load(&dir);
        assert!(warning.is_none());
        assert_eq!(loaded, cache);
        assert_eq!(loaded.auth_for(&app), Some(auth.clone()));
        assert_eq!(loaded.auth_for(&auth), Some(auth.clone()));
        assert_eq!(loaded.auth_for(&origin("other.example.com")), None);
        assert_eq!(loaded.hosts_of(&auth), vec![app.clone()]);
        assert_eq!(loaded.last_proxy(), Some(app));
        assert_eq!(loaded.login(&auth).unwrap().user, "alice");

        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
        // Nothing but the file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
    }

    #[test]
    fn a_directory_others_can_read_is_made_private_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sekisho");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Cache::new().save(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_corrupt_or_foreign_cache_is_replaced_with_a_warning() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        for (contents, what) in [
            (&b"{not json"[..], "corrupt"),
            (b"{\"version\":1,\"surprise\":1}", "corrupt"),
            (b"{\"version\":7}", "version 7"),
            (b"\xff\xfe", "corrupt"),
        ] {
            std::fs::write(dir.join(FILE_NAME), contents).unwrap();
            let (mut cache, warning) = Cache::load(dir);
            let warning = warning.expect("a warning");
            assert!(warning.to_string().contains(what), "{warning}");
            assert_eq!(cache, Cache::new());
            cache.set_login(&origin("a.example"), tokens("bob"));
            cache.save(dir).unwrap();
            assert_eq!(Cache::load(dir).0, cache);
        }
        std::fs::write(dir.join(FILE_NAME), vec![b' '; MAX_FILE as usize + 1]).unwrap();
        assert!(matches!(
            Cache::load(dir).1,
            Some(CacheWarning::TooLarge { .. })
        ));
    }

    #[test]
    fn removing_a_login_keeps_its_hosts() {
        let mut cache = Cache::new();
        let auth = origin("auth.example.com");
        cache.set_login(&auth, tokens("alice"));
        cache.remember_host(&origin("app.example.com"), &auth);
        assert!(cache.remove_login(&auth).is_some());
        assert!(cache.login(&auth).is_none());
        assert_eq!(cache.auth_for(&origin("app.example.com")), Some(auth));
        assert_eq!(cache.logins().count(), 0);
    }

    #[test]
    fn a_login_reach_serves_its_hosts_and_its_domain_on_the_same_port() {
        let mut cache = Cache::new();
        let auth = origin("auth.localhost:8443");
        let reach = Reach {
            ca_file: Some(PathBuf::from("/state/dev-ca/ca.pem")),
            connect_to: None,
        };
        cache.set_login(&auth, tokens("alice"));
        cache.set_reach(&auth, reach.clone());
        cache.remember_host(&origin("localhost:8443"), &auth);
        for host in [
            "auth.localhost:8443",
            "localhost:8443",
            "ssh.localhost:8443",
            "a.b.localhost:8443",
        ] {
            assert_eq!(cache.reach_for(&origin(host)), Some(&reach), "{host}");
        }
        for host in [
            "ssh.localhost",
            "ssh.localhost:9443",
            "notlocalhost:8443",
            "x.example:8443",
        ] {
            assert_eq!(cache.reach_for(&origin(host)), None, "{host}");
        }

        // A host remembered for a login without a reach is reached as told, not by its domain.
        let other = origin("auth.example.com:8443");
        cache.set_login(&other, tokens("alice"));
        cache.remember_host(&origin("x.localhost:8443"), &other);
        assert_eq!(cache.reach_for(&origin("x.localhost:8443")), None);

        // The most specific domain wins; an empty reach is forgotten; it survives a save.
        let inner = origin("auth.lab.localhost:8443");
        let lab = Reach {
            ca_file: None,
            connect_to: Some("127.0.0.2:8443".parse().unwrap()),
        };
        cache.set_reach(&inner, lab.clone());
        assert_eq!(
            cache.reach_for(&origin("ssh.lab.localhost:8443")),
            Some(&lab)
        );
        assert_eq!(cache.reach_for(&origin("ssh.localhost:8443")), Some(&reach));
        cache.set_reach(&inner, Reach::default());
        assert_eq!(
            cache.reach_for(&origin("ssh.lab.localhost:8443")),
            Some(&reach)
        );
        let root = tempfile::tempdir().unwrap();
        cache.save(root.path()).unwrap();
        assert_eq!(Cache::load(root.path()).0, cache);
    }

    #[test]
    fn the_debug_form_shows_no_token() {
        let mut cache = Cache::new();
        cache.set_login(&origin("auth.example.com"), tokens("alice"));
        let debug = format!("{cache:?}");
        assert!(
            !debug.contains("\"access\"") && !debug.contains("\"refresh\""),
            "{debug}"
        );
    }
}
