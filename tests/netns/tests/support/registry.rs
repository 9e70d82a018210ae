//! A registry for the pull tests: Debian's `docker-registry` (distribution 2.x) in a namespace
//! the test made, on an address the test chose, and a small OCI push over its HTTP API v2
//! (blob uploads, then the manifest PUT) from the test's own process, through a socket opened
//! in that namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use netns_testbed::{Node, Testbed};

/// An HTTP answer: status, headers (names in lower case), body.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// A running registry.
pub struct Registry {
    pub addr: SocketAddr,
    pub pid: i32,
}

impl Registry {
    /// Starts `docker-registry` in `node`'s namespace on `addr` (127.0.0.1 there), storing
    /// under the testbed's state directory, and waits until it answers `/v2/`.
    pub async fn start(tb: &Testbed, node: &Node, addr: SocketAddr) -> Registry {
        let bin = netns_testbed::require_tool("docker-registry", "docker-registry");
        let dir = tb.state_dir().join("registry");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let pid = tb
            .spawn(
                &node.ns,
                &[bin.to_str().unwrap(), "serve", cfg.to_str().unwrap()],
                Duration::from_secs(600),
            )
            .unwrap();
        let r = Registry { addr, pid };
        for _ in 0..100 {
            if let Ok((200, _, _)) = r.request(node, "GET", "/v2/", &[], &[]) {
                return r;
            }
            assert!(
                tb.running(pid),
                "docker-registry exited: {}",
                tb.log_of(pid)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("docker-registry did not answer: {}", tb.log_of(pid));
    }

    /// One HTTP/1.1 request from inside `node`'s namespace: (status, headers, body).
    pub fn request(
        &self,
        node: &Node,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let addr = self.addr;
        let mut s = node
            .ns
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .map_err(std::io::Error::other)??;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        let end = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no end of headers"))?;
        let head = String::from_utf8_lossy(&all[..end]).into_owned();
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
        let hs: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok((status, hs, all[end + 4..].to_vec()))
    }

    /// Pushes the single image of an OCI layout directory as `<repo>:<tag>`: every blob
    /// (monolithic upload: POST, then PUT with the digest), then the manifest.
    pub fn push_layout(&self, node: &Node, layout: &Path, repo: &str, tag: &str) {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mdesc = &index["manifests"][0];
        let blob = |d: &str| {
            std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap()
        };
        let mdigest = mdesc["digest"].as_str().unwrap();
        let mbytes = blob(mdigest);
        let manifest: serde_json::Value = serde_json::from_slice(&mbytes).unwrap();
        let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
        for l in manifest["layers"].as_array().unwrap() {
            digests.push(l["digest"].as_str().unwrap().to_string());
        }
        for d in &digests {
            let (st, hs, body) = self
                .request(
                    node,
                    "POST",
                    &format!("/v2/{repo}/blobs/uploads/"),
                    &[],
                    &[],
                )
                .unwrap();
            assert_eq!(
                st,
                202,
                "start an upload: {}",
                String::from_utf8_lossy(&body)
            );
            let loc = hs
                .iter()
                .find(|(k, _)| k == "location")
                .map(|(_, v)| v.clone())
                .expect("an upload location");
            // An absolute URL or a path: the path and query.
            let path = match loc.split_once("://") {
                Some((_, rest)) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
                None => loc,
            };
            let sep = if path.contains('?') { '&' } else { '?' };
            let (st, _, body) = self
                .request(
                    node,
                    "PUT",
                    &format!("{path}{sep}digest={d}"),
                    &[("Content-Type", "application/octet-stream")],
                    &blob(d),
                )
                .unwrap();
            assert_eq!(st, 201, "upload {d}: {}", String::from_utf8_lossy(&body));
        }
        let mt = manifest["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json");
        let (st, _, body) = self
            .request(
                node,
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Content-Type", mt)],
                &mbytes,
            )
            .unwrap();
        assert_eq!(
            st,
            201,
            "put the manifest: {}",
            String::from_utf8_lossy(&body)
        );
    }
}
