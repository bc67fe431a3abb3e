//! A `redis-server` of a test's own, on a free port: never one that may already listen on
//! 6379. Shared by the core's and the facade's Redis tests.

#![allow(dead_code)] // each test file uses a part

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own, on a free port, killed when dropped.
pub struct RedisServer {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> RedisServer {
        RedisServer::on(free_port())
    }

    /// Starts one on `port` (again, after a kill).
    pub fn on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `redis-server` ({e}): install it (Debian: apt-get install redis-server; .ci/run does)")
            });
        wait_for(port);
        RedisServer { child, port }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl RedisServer {
    /// Starts one that speaks TLS only, with a certificate for 127.0.0.1 signed by itself;
    /// returns it and the certificate (PEM), which clients trust as their root.
    pub fn start_tls(dir: &std::path::Path) -> (RedisServer, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("a certificate");
        std::fs::create_dir_all(dir).expect("a directory for the certificate");
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert_file)
            .arg("--tls-key-file")
            .arg(&key_file)
            .arg("--tls-ca-cert-file")
            .arg(&cert_file)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        wait_for(port);
        (RedisServer { child, port }, cert.pem().into_bytes())
    }
}

impl RedisServer {
    /// Starts one that listens on a Unix socket only, at `socket`.
    pub fn start_unix(socket: &std::path::Path) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", "0"])
            .arg("--unixsocket")
            .arg(socket)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port: 0 }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local three-node Redis Cluster (`redis-server --cluster-enabled yes`, joined by
/// `redis-cli --cluster create`), its nodes killed when dropped.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// The nodes' ports.
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts three nodes and waits until the cluster says it is ok.
    pub fn start() -> RedisCluster {
        // Each node also listens on its port + 10000 (the cluster bus): pick ports that leave
        // room for it.
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = 20_000 + (free_port() % 20_000);
            let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
            if free(port) && free(port + 10_000) && !ports.contains(&port) {
                ports.push(port);
            }
        }
        let dir = std::env::temp_dir().join(format!("ratelimit-cluster-{}", ports[0]));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster's files");
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .current_dir(&dir)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server")
            })
            .collect();
        let cluster = RedisCluster { nodes, ports, dir };
        for port in &cluster.ports {
            wait_for(*port);
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        let started = Instant::now();
        while !cluster.ports.iter().all(|p| cluster_ok(*p)) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the cluster did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `redis://` URLs of the nodes.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

fn wait_for(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
