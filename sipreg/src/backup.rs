//! `sipreg backup FILE` / `sipreg restore FILE` for the embedded SQLite store.
//!
//! Backup is online and consistent (`VACUUM INTO` reads one snapshot while the server keeps
//! writing). Restore replaces the database file and must run while `sipreg serve` is stopped; it
//! refuses a file that is not a sipreg database. PostgreSQL is backed up with its own tools.

use std::path::Path;
use std::process::ExitCode;

fn db_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("sipreg.db")
}

/// Writes a consistent copy of the data dir's database to `out` (mode 0600: it holds keys).
pub fn backup(data_dir: &Path, out: &Path) -> ExitCode {
    let db = db_path(data_dir);
    if !db.exists() {
        eprintln!(
            "sipreg: no database at {}; pass the server's --data-dir",
            db.display()
        );
        return ExitCode::from(3);
    }
    if out.exists() {
        eprintln!(
            "sipreg: {} exists; choose a new file name (nothing was overwritten)",
            out.display()
        );
        return ExitCode::from(1);
    }
    let result =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c.execute("VACUUM INTO ?1", [out.to_string_lossy().as_ref()])
                    .map(|_| ())
            });
    if let Err(e) = result {
        eprintln!("sipreg: backup failed: {e}");
        let _ = std::fs::remove_file(out);
        return ExitCode::from(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600));
    }
    println!(
        "backup written to {} (it holds signing keys: keep it private)",
        out.display()
    );
    ExitCode::SUCCESS
}

/// Replaces the data dir's database with `from`, after checking it is a sipreg database.
pub fn restore(data_dir: &Path, from: &Path) -> ExitCode {
    let check =
        rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM cluster_settings", [], |r| {
                    r.get::<_, i64>(0)
                })
            });
    if !matches!(check, Ok(1)) {
        eprintln!(
            "sipreg: {} is not a sipreg backup; nothing was changed",
            from.display()
        );
        return ExitCode::from(1);
    }
    if server_running(data_dir) {
        eprintln!(
            "sipreg: the server for this data dir is running; stop it first (nothing was changed)"
        );
        return ExitCode::from(1);
    }
    let db = db_path(data_dir);
    let tmp = data_dir.join("sipreg.db.restoring");
    let result = std::fs::copy(from, &tmp).and_then(|_| {
        for side in ["sipreg.db-wal", "sipreg.db-shm"] {
            let _ = std::fs::remove_file(data_dir.join(side));
        }
        std::fs::rename(&tmp, &db)
    });
    match result {
        Ok(()) => {
            println!("restored {} from {}", db.display(), from.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sipreg: restore failed: {e}; the old database is unchanged");
            let _ = std::fs::remove_file(&tmp);
            ExitCode::from(1)
        }
    }
}

/// Whether the server that wrote the data dir's `api-url` still answers on its port.
fn server_running(data_dir: &Path) -> bool {
    let Ok(url) = std::fs::read_to_string(data_dir.join("api-url")) else {
        return false;
    };
    let Some(port) = url
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return false;
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_ok()
}
