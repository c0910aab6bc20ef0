//! A private PostgreSQL cluster for a test that stops and starts its database (the shared
//! server of the test script must stay up for the other tests): `initdb` in a temp dir, a free
//! port, `pg_ctl start` / `pg_ctl stop -m immediate`, from the newest
//! `/usr/lib/postgresql/*/bin`. As root the tools run as the `postgres` user (initdb refuses
//! root), as scripts/services.sh does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::redis_server::free_port;

pub struct PgProc {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    running: bool,
}

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL tool, as the postgres user when we are root.
fn as_pg(tool: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

fn run(mut c: Command, what: &str) {
    let ok = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .success();
    assert!(ok, "{what} failed");
}

impl PgProc {
    /// A cluster created (`initdb`) but not started.
    pub fn unstarted() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let mut c = Command::new("chown");
            c.arg("postgres").arg(dir.path());
            run(c, "chown");
        }
        let pg = Self {
            port: free_port(),
            bin: pg_bin(),
            dir,
            running: false,
        };
        let mut c = as_pg(&pg.bin.join("initdb"));
        c.arg("-D")
            .arg(pg.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync"]);
        run(c, "initdb");
        pg
    }

    pub fn start() -> Self {
        let mut pg = Self::unstarted();
        pg.launch();
        pg
    }

    /// A cluster that accepts only TLS connections over TCP (`ssl = on`; `hostssl` in
    /// pg_hba.conf, anything else rejected), presenting `cert_pem` with `key_pem`.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let mut pg = Self::unstarted();
        let data = pg.data();
        let write = |name: &str, text: &str, mode: u32| {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if is_root() {
                let mut c = Command::new("chown");
                c.arg("postgres").arg(&path);
                run(c, "chown");
            }
        };
        write("server.crt", cert_pem, 0o644);
        // PostgreSQL refuses a key others can read.
        write("server.key", key_pem, 0o600);
        write(
            "pg_hba.conf",
            "local all all trust
hostssl all all 127.0.0.1/32 trust
host all all 127.0.0.1/32 reject
",
            0o600,
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| {
                f.write_all(
                    b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
                )
            })
            .expect("postgresql.conf");
        pg.launch();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://` URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn launch(&mut self) {
        let mut c = as_pg(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
                self.port,
                self.dir.path().display()
            ))
            .arg("start");
        run(c, "pg_ctl start");
        self.running = true;
    }

    /// `pg_ctl stop -m immediate`: the server is gone at once, as in a crash.
    pub fn stop(&mut self) {
        if self.running {
            let mut c = as_pg(&self.bin.join("pg_ctl"));
            c.arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"]);
            run(c, "pg_ctl stop");
            self.running = false;
        }
    }
}

impl Drop for PgProc {
    fn drop(&mut self) {
        self.stop();
    }
}
