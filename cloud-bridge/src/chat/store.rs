//! `bans.json` in `[chat] state_dir`: read at start, rewritten atomically (a temporary file in
//! the same directory, then a rename) whenever the set of bans changes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use spotter_protocol::chat::{BanFile, StoredBan};
use spotter_protocol::PROTOCOL_VERSION;

/// Why the bans file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing or renaming failed.
    #[error("{path}: {error} (check chat.state_dir: it must be a directory the bridge can write)")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The file is not a valid bans file.
    #[error(
        "{path}: not a valid bans file: {error} (fix or remove it; bans in the broker still apply)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        error: spotter_protocol::DecodeError,
    },
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Reads the bans; a missing file is no bans.
pub fn load(path: &Path) -> Result<Vec<StoredBan>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    BanFile::decode(&bytes)
        .map(|f| f.bans)
        .map_err(|error| StoreError::Invalid {
            path: path.to_owned(),
            error,
        })
}

/// Replaces the file with `bans`, atomically: a reader sees the old file or the new one.
pub fn save(path: &Path, bans: Vec<StoredBan>) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let file = BanFile {
        v: PROTOCOL_VERSION,
        bans,
    };
    let tmp = dir.join(format!(".bans.json.{:08x}.tmp", fastrand::u32(..)));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&file.encode())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotter_protocol::chat::Ban;

    fn ban(user: &str) -> StoredBan {
        StoredBan {
            studio: "demo".into(),
            stream: "main".into(),
            ban: Ban {
                v: 1,
                user: user.into(),
                until_ms: 10,
                reason: Some("spam".into()),
                by: "mod1".into(),
            },
        }
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state").join("bans.json");
        assert!(load(&path).expect("missing is empty").is_empty());
        save(&path, vec![ban("u1"), ban("u2")]).expect("save");
        save(&path, vec![ban("u2")]).expect("save again");
        assert_eq!(load(&path).expect("load"), vec![ban("u2")]);
        let leftovers = std::fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .count();
        assert_eq!(leftovers, 1, "no temporary files left");
        std::fs::write(&path, b"{garbage").expect("write");
        assert!(matches!(load(&path), Err(StoreError::Invalid { .. })));
    }
}
