//! nginx with libnginx-mod-rtmp as a local RTMP ingest (the agent's RTMP upload reaches it as it
//! would reach IVS), writing HLS of every stream it receives.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// nginx as Debian installs it.
const NGINX: &str = "/usr/sbin/nginx";

/// The RTMP module (libnginx-mod-rtmp).
const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// nginx-rtmp on a free loopback port, writing HLS of every stream to `<dir>/hls`.
pub struct Ingest {
    /// Its RTMP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Ingest {
    /// Starts it.
    pub fn start() -> Ingest {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::create_dir_all(dir.path().join("hls")).expect("mkdir");
        std::fs::write(
            &conf,
            format!(
                "load_module {RTMP_MODULE};\ndaemon off;\nmaster_process off;\nuser root;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
                   application app {{ live on; record off; hls on; hls_path {d}/hls;\n\
                     hls_fragment 1s; hls_playlist_length 60s; hls_cleanup off; }} }} }}\n",
                d = dir.path().display()
            ),
        )
        .expect("write nginx.conf");
        let mut ingest = Ingest {
            port,
            dir,
            child: None,
        };
        ingest.start_again();
        ingest
    }

    /// Starts nginx (again) with the same configuration, port and HLS directory.
    pub fn start_again(&mut self) {
        let conf = self.dir.path().join("nginx.conf");
        let child = Command::new(NGINX)
            .args([
                "-c",
                &conf.display().to_string(),
                "-p",
                &self.dir.path().display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (apt-get install nginx libnginx-mod-rtmp)");
        self.child = Some(child);
        super::wait_for_port(self.port, "nginx-rtmp", Duration::from_secs(10));
    }

    /// Kills it (the ingest goes away mid-stream).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The newest modification time of any segment.
    pub fn newest_segment(&self) -> Option<std::time::SystemTime> {
        std::fs::read_dir(self.hls())
            .ok()?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "ts"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max()
    }

    /// Where it writes the HLS segments of every stream.
    pub fn hls(&self) -> PathBuf {
        self.dir.path().join("hls")
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop();
    }
}
