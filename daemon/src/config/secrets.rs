//! Credentials in the config: `{ env = "VAR" }`, `{ file = "path" }`,
//! `{ credential = "name" }` (systemd's `$CREDENTIALS_DIRECTORY`) or, with a
//! warning, an inline string. Values are read here and never printed.

use std::path::Path;

use toml_edit::{Item, Value};

/// A secret setting after resolution.
pub enum Resolved {
    Value(String),
    /// Read from a file that other users can read: accepted, but `check` warns.
    Exposed {
        value: String,
        path: std::path::PathBuf,
        mode: u32,
        /// The group that may read it, when only that group (not every user) can.
        group: Option<u32>,
    },
    /// An inline secret: accepted, but `check` warns.
    Inline(String),
}

/// The permission bits of `path` when users other than its owner and group
/// may read it.
pub fn world_readable(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Who besides its owner may read the secret file at `path`: its mode, and
/// `Some(gid)` when that is the members of a group other than `trusted`
/// (root's, herald's own, the main config file's), `None` when it is every
/// user. Nothing when only trusted readers can.
pub fn readable_by_others(path: &Path, trusted: &[u32]) -> Option<(u32, Option<u32>)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    if mode & 0o004 != 0 {
        return Some((mode, None));
    }
    (mode & 0o040 != 0 && !trusted.contains(&meta.gid())).then_some((mode, Some(meta.gid())))
}

/// Secrets are short: a token, a key, a password. A file longer than this
/// is not a secret (and `/dev/zero` behind a symlink is refused before).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A systemd credential name: one path component, nothing that leaves
/// `$CREDENTIALS_DIRECTORY`.
fn plain_credential_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Read a secret file: a regular file of at most [`MAX_SECRET_BYTES`], UTF-8.
fn read_secret(path: &Path) -> Result<String, String> {
    let bytes = herald_adapters::files::read_bounded(path, MAX_SECRET_BYTES).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8".to_string())
}

/// Read the secret an account setting points at. Errors say what is missing,
/// never the value.
/// `trusted_groups` may read secret files without a warning.
pub fn resolve(
    key: &str,
    item: &Item,
    config_dir: &Path,
    credentials_dir: Option<&Path>,
    trusted_groups: &[u32],
) -> Result<Resolved, String> {
    let form = "expected { env = \"VAR\" }, { file = \"path\" }, { credential = \"name\" } or a string";
    if let Some(s) = item.as_str() {
        return Ok(Resolved::Inline(s.to_string()));
    }
    let table = item.as_table_like().ok_or_else(|| format!("`{key}` must name where the secret is; {form}"))?;
    let entries: Vec<(&str, &Item)> = table.iter().collect();
    let [(kind, value)] = entries.as_slice() else {
        return Err(format!("`{key}` must have exactly one of env, file or credential; {form}"));
    };
    let name = value.as_str().ok_or_else(|| format!("`{key}.{kind}` must be a string"))?;
    let mut exposed = None;
    let text = match *kind {
        "env" => std::env::var(name)
            .map_err(|_| format!("`{key}` comes from environment variable {name}, which is not set"))?,
        "file" => {
            let path = config_dir.join(name);
            let text = read_secret(&path)
                .map_err(|e| format!("`{key}` comes from file {}, which cannot be read: {e}", path.display()))?;
            exposed = readable_by_others(&path, trusted_groups).map(|(mode, group)| (path, mode, group));
            text
        }
        "credential" => {
            if !plain_credential_name(name) {
                return Err(format!(
                    "`{key}` names systemd credential `{name}`; a credential name is a plain name \
                     (not empty, no `/`, not `.` or `..`), as given to LoadCredential="
                ));
            }
            let dir = credentials_dir.ok_or_else(|| {
                format!(
                    "`{key}` comes from systemd credential `{name}`, but $CREDENTIALS_DIRECTORY is not set \
                     (set LoadCredential={name}:... in the unit; outside systemd, `herald check \
                     --credentials-dir /etc/herald/secrets` reads them from that folder)"
                )
            })?;
            read_secret(&dir.join(name))
                .map_err(|e| format!("`{key}` comes from systemd credential `{name}`, which cannot be read: {e}"))?
        }
        other => return Err(format!("`{key}` has an unknown source `{other}`; {form}")),
    };
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    if text.is_empty() {
        return Err(format!("`{key}` is empty ({kind} `{name}`)"));
    }
    Ok(match exposed {
        Some((path, mode, group)) => Resolved::Exposed { value: text, path, mode, group },
        None => Resolved::Value(text),
    })
}

/// Replace a secret setting's item by its resolved value, so the platform's
/// settings type reads a plain string.
pub fn replace(item: &mut Item, value: String) {
    *item = Item::Value(Value::from(value));
}
