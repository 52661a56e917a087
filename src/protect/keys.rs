//! Token keys: named, versioned AES-256 keys loaded from a key file (the only I/O of the protect
//! layer). Key bytes are zeroized on drop and never printed (`Debug` shows `[redacted]`).
//!
//! File format (JSON, keys as 64 hex digits, one active version per name):
//! ```json
//! { "keys": { "default": { "active": 2, "versions": { "1": "00ab…", "2": "9f3c…" } } } }
//! ```
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// The key name used when a spec does not name one.
pub const DEFAULT_KEY_NAME: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} does not exist")]
    Missing { path: PathBuf },
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} already exists (use --force to overwrite)")]
    Exists { path: PathBuf },
    #[error("no key named {name:?} in the key file")]
    UnknownKey { name: String },
    #[error("key {name:?} has no version {version}")]
    UnknownVersion { name: String, version: u32 },
}

/// One AES-256 key.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Key(Zeroizing::new(bytes))
    }

    /// A fresh key from the operating system's CSPRNG (via `rand`'s thread RNG).
    pub fn generate() -> Self {
        Key(Zeroizing::new(rand::random::<[u8; 32]>()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key([redacted])")
    }
}

/// The versions of one named key.
#[derive(Clone, Debug)]
pub struct NamedKey {
    pub active: u32,
    versions: BTreeMap<u32, Key>,
}

/// All keys of a key file.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    names: BTreeMap<String, NamedKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    keys: BTreeMap<String, FileKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    active: u32,
    versions: BTreeMap<u32, String>,
}

impl KeyRing {
    /// A ring holding one freshly generated key, version 1.
    pub fn generate(name: &str) -> Self {
        let mut ring = KeyRing::default();
        ring.insert(name, 1, Key::generate());
        ring
    }

    /// Adds (or replaces) a version and makes it the active one.
    /// The version a new key named `name` would get: 1, or one past the newest.
    pub fn next_version(&self, name: &str) -> u32 {
        self.names
            .get(name)
            .and_then(|n| n.versions.keys().max())
            .map_or(1, |v| v + 1)
    }

    pub fn insert(&mut self, name: &str, version: u32, key: Key) {
        let entry = self
            .names
            .entry(name.to_owned())
            .or_insert_with(|| NamedKey {
                active: version,
                versions: BTreeMap::new(),
            });
        entry.versions.insert(version, key);
        entry.active = version;
    }

    /// The active version of key `name`.
    pub fn active_version(&self, name: &str) -> Result<u32, KeyError> {
        self.names
            .get(name)
            .map(|n| n.active)
            .ok_or_else(|| KeyError::UnknownKey {
                name: name.to_owned(),
            })
    }

    /// How many versions key `name` has (0 when there is no such key).
    pub fn version_count(&self, name: &str) -> usize {
        self.names.get(name).map_or(0, |n| n.versions.len())
    }

    /// The key `name` at `version`, or at its active version when `version` is `None`.
    pub fn get(&self, name: &str, version: Option<u32>) -> Result<&Key, KeyError> {
        let named = self.names.get(name).ok_or_else(|| KeyError::UnknownKey {
            name: name.to_owned(),
        })?;
        let version = version.unwrap_or(named.active);
        named
            .versions
            .get(&version)
            .ok_or_else(|| KeyError::UnknownVersion {
                name: name.to_owned(),
                version,
            })
    }

    /// Loads a key file, refusing one that is missing, malformed or group/other-readable.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io_error = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KeyError::Missing {
                    path: path.to_owned(),
                }
            } else {
                KeyError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        };
        let metadata = std::fs::metadata(path).map_err(io_error)?;
        check_permissions(path, &metadata)?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io_error)?);
        Self::parse(&text).map_err(|reason| KeyError::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the key file's text; the error is the reason, for the caller to wrap with the path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut file: FileFormat = serde_json::from_str(text).map_err(|e| {
            // serde_json quotes input fragments in some messages: keep only the position.
            format!("invalid JSON at line {} column {}", e.line(), e.column())
        })?;
        let mut ring = KeyRing::default();
        let result = (|| {
            if file.keys.is_empty() {
                return Err("no keys".to_owned());
            }
            for (name, entry) in &file.keys {
                let mut versions = BTreeMap::new();
                for (version, hex) in &entry.versions {
                    let bytes = decode_hex_key(hex).ok_or_else(|| {
                        format!("key {name:?} version {version} is not 64 hex digits")
                    })?;
                    versions.insert(*version, Key::from_bytes(bytes));
                }
                if !versions.contains_key(&entry.active) {
                    return Err(format!(
                        "key {name:?} has active version {} but no such version",
                        entry.active
                    ));
                }
                ring.names.insert(
                    name.clone(),
                    NamedKey {
                        active: entry.active,
                        versions,
                    },
                );
            }
            Ok(())
        })();
        for entry in file.keys.values_mut() {
            for hex in entry.versions.values_mut() {
                hex.zeroize();
            }
        }
        result.map(|()| ring)
    }

    /// The key file text for this ring.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let file = FileFormat {
            keys: self
                .names
                .iter()
                .map(|(name, named)| {
                    let versions = named
                        .versions
                        .iter()
                        .map(|(v, key)| (*v, encode_hex(key.as_bytes())))
                        .collect();
                    (
                        name.clone(),
                        FileKey {
                            active: named.active,
                            versions,
                        },
                    )
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        Zeroizing::new(text)
    }

    /// Writes the ring to a new file with mode 0600; refuses to overwrite unless `force`.
    pub fn write_new(&self, path: &Path, force: bool) -> Result<(), KeyError> {
        use std::io::Write;
        let io_error = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io_error(source)
            }
        })?;
        #[cfg(unix)]
        {
            // An overwritten file keeps its old mode: tighten it before writing the keys.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_error)?;
        }
        file.write_all(self.to_file_text().as_bytes())
            .map_err(io_error)?;
        file.sync_all().map_err(io_error)
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, metadata: &std::fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _metadata: &std::fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

fn decode_hex_key(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut key = [0u8; 32];
    for (slot, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(key)
}

fn encode_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| {
            [
                HEX[usize::from(b >> 4)] as char,
                HEX[usize::from(b & 15)] as char,
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let ring = KeyRing::generate("default");
        let key = ring.get("default", None).unwrap();
        let hex = encode_hex(key.as_bytes());
        let debug = format!("{ring:?} {key:?}");
        assert!(debug.contains("[redacted]"));
        assert!(!debug.contains(&hex));
        assert!(!debug.contains(&format!("{}", key.as_bytes()[0])) || debug.contains("redacted"));
    }

    #[test]
    fn write_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let ring = KeyRing::generate("default");
        ring.write_new(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = KeyRing::load(&path).unwrap();
        assert_eq!(
            loaded.get("default", None).unwrap().as_bytes(),
            ring.get("default", None).unwrap().as_bytes()
        );
        assert!(matches!(
            ring.write_new(&path, false),
            Err(KeyError::Exists { .. })
        ));
        ring.write_new(&path, true).unwrap();
    }

    #[test]
    fn load_refuses_missing_open_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = KeyRing::load(&missing).unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }));
        assert!(err.to_string().contains("nope.json"));

        let open = dir.path().join("open.json");
        KeyRing::generate("default")
            .write_new(&open, false)
            .unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = KeyRing::load(&open).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o640, .. }));
        assert!(err.to_string().contains("open.json"));

        for (name, text) in [
            ("garbage.json", "not json"),
            (
                "short.json",
                r#"{"keys":{"default":{"active":1,"versions":{"1":"abcd"}}}}"#,
            ),
            (
                "noactive.json",
                &format!(
                    r#"{{"keys":{{"a":{{"active":2,"versions":{{"1":"{}"}}}}}}}}"#,
                    "0".repeat(64)
                ),
            ),
            ("empty.json", r#"{"keys":{}}"#),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = KeyRing::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Malformed { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name));
        }
    }

    #[test]
    fn versions_select_keys_and_active_is_default() {
        let mut ring = KeyRing::default();
        ring.insert("default", 1, Key::from_bytes([1; 32]));
        ring.insert("default", 2, Key::from_bytes([2; 32]));
        assert_eq!(ring.get("default", None).unwrap().as_bytes(), &[2; 32]);
        assert_eq!(ring.get("default", Some(1)).unwrap().as_bytes(), &[1; 32]);
        assert!(matches!(
            ring.get("default", Some(3)),
            Err(KeyError::UnknownVersion { .. })
        ));
        assert!(matches!(
            ring.get("other", None),
            Err(KeyError::UnknownKey { .. })
        ));
        let text = ring.to_file_text();
        let parsed = KeyRing::parse(&text).unwrap();
        assert_eq!(parsed.get("default", Some(1)).unwrap().as_bytes(), &[1; 32]);
        assert_eq!(parsed.names["default"].active, 2);
    }
}
