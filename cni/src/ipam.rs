//! Delegating to the IPAM plugin named in `ipam.type` (spec §4): found in CNI_PATH, run with
//! our environment and the complete configuration, its answer parsed or passed on.
//!
//! A plugin may link IPAM plugins in ([`Delegation::linking`]): a configuration naming one of
//! them runs it in this process, through the same skeleton its binary runs
//! ([`exec::run_linked`]), so the answer and every error code are the binary's, without the
//! cost of a process. Every other `ipam.type` is executed as usual. The free functions
//! ([`add`], [`del`], …) link nothing.
//!
//! [`add`] returns a [`Lease`] that runs the IPAM DEL when dropped: if any later step of ADD
//! fails, the address goes back before the error is returned, with no code path to forget it.

use crate::exec::{self, CniEnv, Command};
use crate::result::CniResult;
use crate::skel::{Attachment, GcRequest, NetConf, Plugin};
use crate::{Error, Version};

/// How IPAM is reached: the IPAM plugins linked into the caller, by `ipam.type`; any other
/// type is executed from CNI_PATH.
#[derive(Clone, Copy, Default)]
pub struct Delegation<'p> {
    linked: &'p [(&'p str, &'p dyn Plugin)],
}

impl std::fmt::Debug for Delegation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.linked.iter().map(|(name, _)| name))
            .finish()
    }
}

/// Addresses obtained from the IPAM plugin for one ADD. Released on drop unless kept.
#[must_use = "dropping a Lease releases its addresses"]
pub struct Lease<'a> {
    req: &'a Attachment,
    via: Delegation<'a>,
    result: CniResult,
    kept: bool,
}

impl Lease<'_> {
    pub fn result(&self) -> &CniResult {
        &self.result
    }

    /// ADD succeeded: the addresses stay allocated.
    pub fn keep(mut self) -> CniResult {
        self.kept = true;
        std::mem::take(&mut self.result)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.kept
            && let Err(e) = self.via.del(self.req)
        {
            eprintln!("releasing addresses after a failed ADD: {e}");
        }
    }
}

fn ipam_type(conf: &NetConf) -> Result<&str, Error> {
    match conf.config.ipam.as_ref().map(|i| i.plugin_type.as_str()) {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(Error::invalid_config(
            "ipam.type is required",
            "the configuration names no IPAM plugin",
        )),
    }
}

fn env_for(command: Command, req: &Attachment) -> CniEnv {
    CniEnv {
        command,
        container_id: Some(req.container_id.as_str().to_string()),
        netns: req.netns.clone(),
        ifname: Some(req.ifname.as_str().to_string()),
        args: Some(req.args.to_env()),
        path: req.conf.path.clone(),
    }
}

impl<'p> Delegation<'p> {
    /// Every IPAM plugin is executed from CNI_PATH.
    pub const EXEC: Delegation<'static> = Delegation { linked: &[] };

    /// These IPAM plugins, by `ipam.type`, run in this process; others are executed.
    pub const fn linking(linked: &'p [(&'p str, &'p dyn Plugin)]) -> Self {
        Delegation { linked }
    }

    /// The linked plugin that serves this configuration, if any.
    pub fn linked(&self, conf: &NetConf) -> Option<&'p dyn Plugin> {
        let ty = conf.config.ipam.as_ref()?.plugin_type.as_str();
        self.linked
            .iter()
            .find(|(name, _)| *name == ty)
            .map(|(_, plugin)| *plugin)
    }

    fn run(&self, env: &CniEnv, conf: &NetConf) -> Result<exec::Output, Error> {
        let ty = ipam_type(conf)?;
        if let Some(plugin) = self.linked(conf) {
            return exec::run_linked(plugin, ty, env, &conf.raw);
        }
        let plugin = exec::find_in_path(ty, &conf.path)?;
        let out = exec::exec(&plugin, env, &conf.raw)?;
        if !out.stderr.is_empty() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    }

    /// IPAM ADD. The result is what the IPAM plugin printed, read in the configuration's
    /// version.
    pub fn add<'a>(&self, req: &'a Attachment) -> Result<Lease<'a>, Error>
    where
        'p: 'a,
    {
        let out = self.run(&env_for(Command::Add, req), &req.conf)?;
        // From here on a failure must give the address back: the Lease does that when dropped.
        let mut lease = Lease {
            req,
            via: *self,
            result: CniResult::default(),
            kept: false,
        };
        let (_, result) = CniResult::from_slice(&out.stdout, Some(req.conf.version))
            .map_err(|e| Error::decode("cannot decode the IPAM plugin's result", e))?;
        if result.ips.is_empty() {
            return Err(Error::internal(
                "the IPAM plugin returned no address",
                ipam_type(&req.conf)?.to_string(),
            ));
        }
        lease.result = result;
        Ok(lease)
    }

    /// IPAM DEL: must succeed when nothing is held.
    pub fn del(&self, req: &Attachment) -> Result<(), Error> {
        self.run(&env_for(Command::Del, req), &req.conf).map(|_| ())
    }

    /// IPAM CHECK (0.4.0 and later).
    pub fn check(&self, req: &Attachment) -> Result<(), Error> {
        if req.conf.version < Version::V0_4_0 {
            return Ok(());
        }
        self.run(&env_for(Command::Check, req), &req.conf)
            .map(|_| ())
    }

    /// IPAM GC, with the same valid attachments (the request is passed on whole).
    pub fn gc(&self, req: &GcRequest) -> Result<(), Error> {
        self.run(&CniEnv::new(Command::Gc, req.conf.path.clone()), &req.conf)
            .map(|_| ())
    }

    /// IPAM STATUS: the spec requires an upper plugin to pass STATUS on.
    pub fn status(&self, conf: &NetConf) -> Result<(), Error> {
        self.run(&CniEnv::new(Command::Status, conf.path.clone()), conf)
            .map(|_| ())
    }
}

/// IPAM ADD through the IPAM plugin's binary (see [`Delegation::add`]).
pub fn add(req: &Attachment) -> Result<Lease<'_>, Error> {
    Delegation::EXEC.add(req)
}

/// IPAM DEL: must succeed when nothing is held.
pub fn del(req: &Attachment) -> Result<(), Error> {
    Delegation::EXEC.del(req)
}

/// IPAM CHECK (0.4.0 and later).
pub fn check(req: &Attachment) -> Result<(), Error> {
    Delegation::EXEC.check(req)
}

/// IPAM GC, with the same valid attachments (the request is passed on whole).
pub fn gc(req: &GcRequest) -> Result<(), Error> {
    Delegation::EXEC.gc(req)
}

/// IPAM STATUS: the spec requires an upper plugin to pass STATUS on.
pub fn status(conf: &NetConf) -> Result<(), Error> {
    Delegation::EXEC.status(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::CniArgs;
    use crate::skel::{ContainerId, IfName};
    use std::path::{Path, PathBuf};

    /// A fake IPAM plugin: a shell script that logs each command and answers ADD.
    fn fake_ipam(dir: &Path, add_answer: &str) -> PathBuf {
        let script = format!(
            "#!/bin/sh\ncat > {d}/stdin.$CNI_COMMAND\necho $CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME >> {d}/log\n\
             if [ $CNI_COMMAND = ADD ]; then echo '{add_answer}'; fi\n",
            d = dir.display()
        );
        let p = dir.join("fake-ipam");
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn request(dir: &Path, conf: &str) -> Attachment {
        let config = serde_json::from_str(conf).unwrap();
        Attachment {
            command: Command::Add,
            container_id: ContainerId::new("ctr").unwrap(),
            ifname: IfName::new("eth0").unwrap(),
            netns: None,
            args: CniArgs::default(),
            prev_result: None,
            conf: NetConf {
                version: Version::V1_0_0,
                config,
                raw: conf.as_bytes().to_vec(),
                path: vec![dir.to_path_buf()],
            },
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"fake-ipam","subnet":"10.0.0.0/24"}}"#;
    const ANSWER: &str =
        r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24","gateway":"10.0.0.1"}]}"#;

    #[test]
    fn ipam_gets_the_whole_config_and_our_environment() {
        let dir = tempfile::tempdir().unwrap();
        fake_ipam(dir.path(), ANSWER);
        let req = request(dir.path(), CONF);
        let result = add(&req).unwrap().keep();
        assert_eq!(result.ips[0].address.to_string(), "10.0.0.2/24");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stdin.ADD")).unwrap(),
            CONF
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "ADD ctr eth0\n"
        );
    }

    #[test]
    fn a_dropped_lease_runs_ipam_del() {
        let dir = tempfile::tempdir().unwrap();
        fake_ipam(dir.path(), ANSWER);
        let req = request(dir.path(), CONF);
        let failing_add = || -> Result<CniResult, Error> {
            let _lease = add(&req)?;
            Err(Error::internal("cannot create veth", "EEXIST"))
        };
        assert!(failing_add().is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "ADD ctr eth0\nDEL ctr eth0\n"
        );
    }

    #[test]
    fn an_unreadable_ipam_answer_is_released_too() {
        let dir = tempfile::tempdir().unwrap();
        fake_ipam(dir.path(), "garbage");
        let req = request(dir.path(), CONF);
        assert_eq!(add(&req).err().unwrap().code.get(), 6);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "ADD ctr eth0\nDEL ctr eth0\n"
        );
    }

    #[test]
    fn missing_ipam_plugin_is_an_invalid_config() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(dir.path(), &CONF.replace("fake-ipam", "absent-ipam"));
        let err = add(&req).err().unwrap();
        assert_eq!(err.code.get(), 7);
        assert!(err.msg.contains("absent-ipam"), "{err}");
        let req = request(
            dir.path(),
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
        );
        assert_eq!(add(&req).err().unwrap().code.get(), 7);
    }

    /// A linked IPAM plugin: logs each call, answers ADD with `ANSWER` or an error.
    struct Linked {
        log: std::sync::Mutex<Vec<String>>,
        fail_add: Option<u32>,
    }

    impl Linked {
        fn new(fail_add: Option<u32>) -> Self {
            Linked {
                log: Default::default(),
                fail_add,
            }
        }
        fn note(&self, what: &str, req: &Attachment) {
            self.log.lock().unwrap().push(format!(
                "{what} {} {} {:?} {:?}",
                req.container_id.as_str(),
                req.ifname.as_str(),
                req.netns,
                req.args.get("IP"),
            ));
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Plugin for Linked {
        fn known_args(&self) -> &[&str] {
            &["IP"]
        }
        fn add(&self, req: &Attachment) -> Result<CniResult, Error> {
            self.note("ADD", req);
            match self.fail_add {
                Some(code) => Err(Error::new(
                    crate::Code::plugin(code).unwrap(),
                    "no address left",
                    "pool p",
                )),
                None => Ok(CniResult::from_slice(ANSWER.as_bytes(), None).unwrap().1),
            }
        }
        fn del(&self, req: &Attachment) -> Result<(), Error> {
            self.note("DEL", req);
            Ok(())
        }
        fn check(&self, req: &Attachment) -> Result<(), Error> {
            self.note("CHECK", req);
            Ok(())
        }
        fn gc(&self, req: &GcRequest) -> Result<(), Error> {
            self.log
                .lock()
                .unwrap()
                .push(format!("GC {:?}", req.valid_attachments));
            Ok(())
        }
        fn status(&self, _: &NetConf) -> Result<(), Error> {
            Err(Error::not_available("ipamd is down", ""))
        }
    }

    /// A network namespace that is not ours (ADD needs one), held by a thread until dropped;
    /// `None` without the privilege to make one.
    struct OtherNetns {
        path: PathBuf,
        done: Option<std::sync::mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl OtherNetns {
        fn new() -> Option<OtherNetns> {
            let (tx_path, rx_path) = std::sync::mpsc::channel();
            let (done, wait) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                let path = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .ok()
                    .and_then(|_| std::fs::read_link("/proc/thread-self").ok())
                    .map(|task| Path::new("/proc").join(task).join("ns/net"));
                let held = path.is_some();
                let _ = tx_path.send(path);
                if held {
                    let _ = wait.recv();
                }
            });
            let path = rx_path.recv().ok().flatten()?;
            Some(OtherNetns {
                path,
                done: Some(done),
                thread: Some(thread),
            })
        }
    }

    impl Drop for OtherNetns {
        fn drop(&mut self) {
            self.done.take();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn a_linked_ipam_plugin_runs_in_process_and_its_lease_releases_through_it() {
        let Some(netns) = OtherNetns::new() else {
            eprintln!("skipped: cannot create a network namespace (needs CAP_SYS_ADMIN)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // The binary exists too: the linked plugin must win.
        fake_ipam(dir.path(), ANSWER);
        let linked = Linked::new(None);
        let table: &[(&str, &dyn Plugin)] = &[("fake-ipam", &linked)];
        let via = Delegation::linking(table);
        let mut req = request(dir.path(), CONF);
        req.netns = Some(netns.path.clone());
        req.args = CniArgs::parse("IP=10.0.0.9", &["IP"]).unwrap();
        let result = via.add(&req).unwrap().keep();
        assert_eq!(result.ips[0].address.to_string(), "10.0.0.2/24");
        let failing_add = || -> Result<CniResult, Error> {
            let _lease = via.add(&req)?;
            Err(Error::internal("cannot create veth", "EEXIST"))
        };
        assert!(failing_add().is_err());
        via.check(&req).unwrap();
        assert_eq!(
            linked.log(),
            [
                format!("ADD ctr eth0 {:?} Some(\"10.0.0.9\")", req.netns),
                format!("ADD ctr eth0 {:?} Some(\"10.0.0.9\")", req.netns),
                format!("DEL ctr eth0 {:?} Some(\"10.0.0.9\")", req.netns),
                format!("CHECK ctr eth0 {:?} Some(\"10.0.0.9\")", req.netns),
            ]
        );
        assert!(!dir.path().join("log").exists(), "the binary never ran");
        // Another type is still executed.
        assert!(
            Delegation::linking(&[("other", &linked as &dyn Plugin)])
                .add(&req)
                .unwrap()
                .keep()
                .ips
                .len()
                == 1
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "ADD ctr eth0\n"
        );
    }

    #[test]
    fn a_linked_plugin_answers_as_its_binary_would() {
        let dir = tempfile::tempdir().unwrap();
        // Its skeleton checks the environment as the binary's would: ADD needs a netns.
        let linked = Linked::new(None);
        let table: &[(&str, &dyn Plugin)] = &[("fake-ipam", &linked)];
        let linked_via = Delegation::linking(table);
        let req = request(dir.path(), CONF);
        assert_eq!(linked_via.add(&req).err().unwrap().code.get(), 4);
        assert!(linked.log().is_empty());
        let Some(netns) = OtherNetns::new() else {
            eprintln!("skipped: cannot create a network namespace (needs CAP_SYS_ADMIN)");
            return;
        };
        let mut req = request(dir.path(), CONF);
        req.netns = Some(netns.path.clone());
        // Its own error code, unchanged, and nothing to release.
        let exhausted = Linked::new(Some(100));
        let table: &[(&str, &dyn Plugin)] = &[("fake-ipam", &exhausted)];
        let via = Delegation::linking(table);
        let err = via.add(&req).err().unwrap();
        assert_eq!((err.code.get(), err.msg.as_str()), (100, "no address left"));
        assert_eq!(exhausted.log().len(), 1, "{:?}", exhausted.log());
        // Its skeleton refuses CNI_ARGS keys it does not know, as the binary's would.
        let mut req = request(dir.path(), CONF);
        req.netns = Some(netns.path.clone());
        req.args = CniArgs::parse("MAC=aa:bb:cc:dd:ee:ff", &["MAC"]).unwrap();
        let via = linked_via;
        assert_eq!(via.add(&req).err().unwrap().code.get(), 4);
        assert!(linked.log().is_empty());
        // STATUS of a 1.0.0 configuration is refused by its skeleton (code 1), as by the binary.
        assert_eq!(via.status(&req.conf).err().unwrap().code.get(), 1);
        // GC gets the request's attachments through the configuration, as a binary does.
        let gc_conf = r#"{"cniVersion":"1.1.0","name":"n","type":"bridge","ipam":{"type":"fake-ipam"},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        let gc = GcRequest {
            valid_attachments: Vec::new(),
            conf: NetConf {
                version: Version::V1_1_0,
                config: serde_json::from_str(gc_conf).unwrap(),
                raw: gc_conf.as_bytes().to_vec(),
                path: Vec::new(),
            },
        };
        assert_eq!(via.status(&gc.conf).err().unwrap().code.get(), 50);
        via.gc(&gc).unwrap();
        assert_eq!(
            linked.log(),
            [r#"GC [AttachmentId { container_id: "a", ifname: "eth0" }]"#]
        );
    }
}
