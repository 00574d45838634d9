//! The API's listening socket: created at a path with mode 0600, or taken over from an
//! inherited descriptor.
//!
//! A socket file takes its mode from the umask at bind time, and changing it afterwards leaves
//! a moment in which another user could connect. The umask is process-wide, so setting it
//! around bind would also change the mode of anything another thread creates meanwhile.
//! Instead the socket is bound inside a fresh directory of mode 0700 next to the target, where
//! no other user can reach it, set to 0600 there, and then hard-linked to the target path,
//! which fails rather than replaces if something appeared there meanwhile.

use std::fs::{self, Permissions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::ApiSocketConfig;

/// The listening socket for `api::spawn`. With `Fd`, the descriptor becomes the listener's:
/// call this once per descriptor. Errors name the socket and are one line.
pub fn bind(cfg: &ApiSocketConfig) -> io::Result<UnixListener> {
    bind_owned(cfg).map(|(listener, _)| listener)
}

/// The socket file ghvmm made at `--api-socket path=`, to remove at exit.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// (dev, ino) of the socket ghvmm bound: the path may meanwhile name something else (an
    /// operator started another ghvmm on it after removing ours, say), which is not ours to
    /// remove.
    id: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the path if it is still the socket ghvmm bound; says what it did otherwise.
    pub fn remove(&self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!("cannot remove the API socket {}: {e}", self.path.display());
                }
            }
            Ok(_) => log::warn!(
                "{} is no longer ghvmm's API socket; left in place",
                self.path.display()
            ),
            Err(_) => {}
        }
    }
}

/// As `bind`, and for a path, the socket file to remove at exit (an inherited descriptor's
/// file is not ghvmm's).
pub fn bind_owned(cfg: &ApiSocketConfig) -> io::Result<(UnixListener, Option<SocketFile>)> {
    match cfg {
        ApiSocketConfig::Path(path) => bind_path(path).map(|(l, f)| (l, Some(f))).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("--api-socket path={}: {e}", path.display()),
            )
        }),
        ApiSocketConfig::Fd(fd) => from_fd(*fd)
            .map(|l| (l, None))
            .map_err(|e| io::Error::new(e.kind(), format!("--api-socket fd={fd}: {e}"))),
    }
}

/// sun_path's size less its terminating NUL: clients could not connect to a longer path.
const MAX_SOCKET_PATH: usize = 107;

fn bind_path(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("longer than the {MAX_SOCKET_PATH} bytes a socket address holds"),
        ));
    }
    remove_stale(path)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = PrivateDir::create(parent)?;
    let tmp = private.path.join("s");
    // Bound through the directory's descriptor: the address stays short however long the
    // directory's path is, and always names the directory we created.
    let listener = UnixListener::bind(format!("/proc/self/fd/{}/s", private.handle.as_raw_fd()))?;
    fs::set_permissions(&tmp, Permissions::from_mode(0o600))?;
    // The link below shares this inode; read here, nobody else can have changed the name.
    let meta = fs::symlink_metadata(&tmp)?;
    fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => io::Error::new(
            e.kind(),
            format!(
                "{} was created by someone else meanwhile",
                file_name.to_string_lossy()
            ),
        ),
        _ => e,
    })?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    };
    Ok((listener, file))
}

/// Refuses a path that is not a socket or whose socket has a live server; removes a socket
/// nobody listens on (left by a ghvmm that did not exit cleanly).
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a socket",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is serving on this socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot tell whether the socket there is in use: {e}"),
        )),
    }
}

/// A 0700 directory, removed with its content when dropped.
struct PrivateDir {
    path: PathBuf,
    handle: fs::File,
}

impl PrivateDir {
    fn create(parent: &Path) -> io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut tries = 0;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = parent.join(format!(".ghvmm-{}-{n}", std::process::id()));
            // The mode is applied at mkdir (less the umask, which only removes bits); a parent
            // others could swap it in is refused.
            match vfio::fresh_private_dir(&dir) {
                Ok(()) => {
                    return match fs::File::open(&dir) {
                        Ok(handle) => Ok(PrivateDir { path: dir, handle }),
                        Err(e) => {
                            let _ = fs::remove_dir(&dir);
                            Err(e)
                        }
                    }
                }
                // Left over from an earlier process with our pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Takes over an inherited descriptor after checking that it is a listening Unix stream
/// socket, so that a wrong number is an error here rather than a confusing failure later.
fn from_fd(fd: RawFd) -> io::Result<UnixListener> {
    // SAFETY: F_GETFD only reads the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let check = |opt: libc::c_int, want: libc::c_int, what: &str| -> io::Result<()> {
        let got = sockopt(fd, opt)?;
        if got != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                what.to_string(),
            ));
        }
        Ok(())
    };
    check(libc::SO_DOMAIN, libc::AF_UNIX, "not a Unix domain socket")?;
    check(libc::SO_TYPE, libc::SOCK_STREAM, "not a stream socket")?;
    check(libc::SO_ACCEPTCONN, 1, "not a listening socket")?;
    // SAFETY: fd is open (checked above) and the caller hands it over: nothing else in the
    // process uses it from here on.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // Do not leak the API socket into processes ghvmm might start.
    // SAFETY: sets a flag on a descriptor we now own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `val`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTSOCK) => io::Error::new(io::ErrorKind::InvalidInput, "not a socket"),
            _ => e,
        });
    }
    Ok(val)
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    /// A temporary directory, removed even when the test fails.
    struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ghvmm-sock-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        // Not group-writable whatever the umask: the socket's directory must not be.
        fs::set_permissions(&d, Permissions::from_mode(0o755)).unwrap();
        TempDir(d)
    }

    fn bind_at(p: &Path) -> io::Result<UnixListener> {
        bind(&ApiSocketConfig::Path(p.to_path_buf()))
    }

    #[test]
    fn path_socket_is_private_and_stale_ones_go() {
        let d = temp_dir("path");
        let p = d.join("api.sock");
        let l = bind_at(&p).unwrap();
        let meta = fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Reachable through the final path, and the private directory is gone.
        UnixStream::connect(&p).unwrap();
        assert_eq!(fs::read_dir(&*d).unwrap().count(), 1);
        // In use: refused, and left alone.
        let e = bind_at(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().starts_with("--api-socket path="), "{e}");
        drop(l);
        // Stale: replaced.
        let _l = bind_at(&p).unwrap();
        UnixStream::connect(&p).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_socket() {
        let d = temp_dir("notsock");
        let f = d.join("file");
        fs::write(&f, "keep me").unwrap();
        let e = bind_at(&f).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(fs::read_to_string(&f).unwrap(), "keep me");
        assert!(bind_at(&d).is_err());
        assert!(bind_at(&d.join("missing-dir/api.sock")).is_err());
        let long = d.join("x".repeat(120));
        let e = bind_at(&long).unwrap_err().to_string();
        assert!(e.contains("107 bytes"), "{e}");
        // A long directory is fine as long as the whole path fits.
        let deep = d.join("d".repeat(99 - d.as_os_str().len()));
        fs::create_dir(&deep).unwrap();
        fs::set_permissions(&deep, Permissions::from_mode(0o755)).unwrap();
        let p = deep.join("s.sock");
        assert!(p.as_os_str().len() <= MAX_SOCKET_PATH);
        let _l = bind_at(&p).unwrap();
        UnixStream::connect(&p).unwrap();
        fs::remove_dir_all(&deep).unwrap();
        // Nothing was left behind.
        assert_eq!(fs::read_dir(&*d).unwrap().count(), 1);
    }

    #[test]
    fn only_our_own_socket_is_removed_at_exit() {
        let d = temp_dir("owner");
        let p = d.join("api.sock");
        let (l, file) = bind_owned(&ApiSocketConfig::Path(p.clone())).unwrap();
        let file = file.unwrap();
        assert_eq!(file.path(), p);
        // Someone removes ours and serves another socket at the same path.
        fs::remove_file(&p).unwrap();
        let other = UnixListener::bind(&p).unwrap();
        file.remove();
        assert!(fs::symlink_metadata(&p).is_ok(), "the other socket stays");
        UnixStream::connect(&p).unwrap();
        drop(other);
        fs::remove_file(&p).unwrap();
        drop(l);
        // Ours is removed, once; removing again is harmless.
        let (_l, file) = bind_owned(&ApiSocketConfig::Path(p.clone())).unwrap();
        let file = file.unwrap();
        file.remove();
        assert!(fs::symlink_metadata(&p).is_err());
        file.remove();
        let fd = UnixListener::bind(d.join("s")).unwrap().into_raw_fd();
        assert!(bind_owned(&ApiSocketConfig::Fd(fd)).unwrap().1.is_none());
    }

    #[test]
    fn a_directory_others_may_write_to_needs_the_sticky_bit() {
        let d = temp_dir("shared");
        let shared = d.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, Permissions::from_mode(0o777)).unwrap();
        let e = bind_at(&shared.join("api.sock")).unwrap_err().to_string();
        assert!(
            e.contains("writable by other users and has no sticky bit"),
            "{e}"
        );
        assert_eq!(
            fs::read_dir(&shared).unwrap().count(),
            0,
            "nothing made there"
        );
        fs::set_permissions(&shared, Permissions::from_mode(0o1777)).unwrap();
        let _l = bind_at(&shared.join("api.sock")).unwrap();
    }

    #[test]
    fn inherited_fd() {
        let d = temp_dir("fd");
        let l = UnixListener::bind(d.join("s")).unwrap();
        let fd = l.into_raw_fd();
        let l = bind(&ApiSocketConfig::Fd(fd)).unwrap();
        UnixStream::connect(d.join("s")).unwrap();
        drop(l);
        // A connected (not listening) socket, a regular file, a closed descriptor.
        let (a, _b) = UnixStream::pair().unwrap();
        let e = bind(&ApiSocketConfig::Fd(a.as_raw_fd())).unwrap_err();
        assert!(e.to_string().contains("not a listening socket"), "{e}");
        let f = fs::File::open("/proc/self/status").unwrap();
        let e = bind(&ApiSocketConfig::Fd(f.as_raw_fd())).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        let e = bind(&ApiSocketConfig::Fd(1 << 20)).unwrap_err();
        assert!(
            e.to_string().starts_with("--api-socket fd=1048576: "),
            "{e}"
        );
    }
}
