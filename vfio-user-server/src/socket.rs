//! The listening socket: mode 0600 from the moment it appears (it is bound in a private
//! directory, restricted, then renamed into place, so no other user can connect in between),
//! never in place of something that is not a socket, and removed when the server exits.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0}: another server is listening on it")]
    InUse(PathBuf),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

/// The bound socket; removes its path when dropped, if the path is still this socket.
pub struct Socket {
    path: PathBuf,
    /// (dev, ino) of the socket file, to tell it from one that replaced it.
    id: (u64, u64),
}

impl Socket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Socket {
    /// Removes the path if it is still this socket (not one another server put there
    /// since). Idempotent.
    pub fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Binds a listening socket at `path`. A socket already there that nobody listens on (left
/// by a server that was killed) is replaced.
pub fn bind(path: &Path) -> Result<(UnixListener, Socket), SocketError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |error| SocketError::Io { path: p, error }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(SocketError::NotASocket(path.into())),
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.into()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let name = path
        .file_name()
        .ok_or_else(|| io_err(path)(io::ErrorKind::InvalidInput.into()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(
        ".{}.{}.staging",
        name.to_string_lossy(),
        std::process::id()
    ));
    // 0700, in a parent nobody else can swap it in.
    vfio::fresh_private_dir(&staging).map_err(io_err(&staging))?;
    let result = (|| {
        let temp = staging.join("s");
        let listener = UnixListener::bind(&temp).map_err(io_err(&temp))?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&temp))?;
        let m = std::fs::symlink_metadata(&temp).map_err(io_err(&temp))?;
        std::fs::rename(&temp, path).map_err(io_err(path))?;
        Ok((
            listener,
            Socket {
                path: path.into(),
                id: (m.dev(), m.ino()),
            },
        ))
    })();
    let _ = std::fs::remove_file(staging.join("s"));
    let _ = std::fs::remove_dir(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn the_socket_is_private_and_removed_on_drop() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.as_path().join("gpu.sock");
        let (listener, socket) = bind(&path).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        UnixStream::connect(&path).unwrap();
        // A second server is refused while this one listens.
        assert!(matches!(bind(&path), Err(SocketError::InUse(_))));
        drop(socket);
        drop(listener);
        assert!(!path.exists());
        // Nothing is left of the staging directory either.
        assert_eq!(std::fs::read_dir(tmp.as_path()).unwrap().count(), 0);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_anything_else_refused() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.as_path().join("gpu.sock");
        drop(UnixListener::bind(&path).unwrap());
        let (_l, _s) = bind(&path).unwrap();

        let file = tmp.as_path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        let e = bind(&file).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: exists and is not a socket; refusing to replace it",
                file.display()
            )
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        let dir = tmp.as_path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(bind(&dir), Err(SocketError::NotASocket(_))));
        let link = tmp.as_path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(bind(&link), Err(SocketError::NotASocket(_))));
    }

    #[test]
    fn a_socket_that_was_replaced_is_not_removed() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.as_path().join("gpu.sock");
        let (l, s) = bind(&path).unwrap();
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"other").unwrap();
        drop(s);
        assert_eq!(std::fs::read(&path).unwrap(), b"other");
    }
}
