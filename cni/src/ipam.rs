//! Delegating to the IPAM plugin named in `ipam.type` (spec §4): found in CNI_PATH, run with
//! our environment and the complete configuration, its answer parsed or passed on.
//!
//! [`add`] returns a [`Lease`] that runs the IPAM DEL when dropped: if any later step of ADD
//! fails, the address goes back before the error is returned, with no code path to forget it.

use crate::exec::{self, CniEnv, Command};
use crate::result::CniResult;
use crate::skel::{Attachment, GcRequest, NetConf};
use crate::{Error, Version};

/// Addresses obtained from the IPAM plugin for one ADD. Released on drop unless kept.
#[must_use = "dropping a Lease releases its addresses"]
pub struct Lease<'a> {
    req: &'a Attachment,
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
            && let Err(e) = del(self.req)
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

fn run(env: &CniEnv, conf: &NetConf) -> Result<exec::Output, Error> {
    let ty = ipam_type(conf)?;
    let plugin = exec::find_in_path(ty, &conf.path)?;
    let out = exec::exec(&plugin, env, &conf.raw)?;
    if !out.stderr.is_empty() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// IPAM ADD. The result is what the IPAM plugin printed, read in the configuration's version.
pub fn add(req: &Attachment) -> Result<Lease<'_>, Error> {
    let out = run(&env_for(Command::Add, req), &req.conf)?;
    // From here on a failure must give the address back: the Lease does that when dropped.
    let mut lease = Lease {
        req,
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
pub fn del(req: &Attachment) -> Result<(), Error> {
    run(&env_for(Command::Del, req), &req.conf).map(|_| ())
}

/// IPAM CHECK (0.4.0 and later).
pub fn check(req: &Attachment) -> Result<(), Error> {
    if req.conf.version < Version::V0_4_0 {
        return Ok(());
    }
    run(&env_for(Command::Check, req), &req.conf).map(|_| ())
}

/// IPAM GC, with the same valid attachments (the request is passed on whole).
pub fn gc(req: &GcRequest) -> Result<(), Error> {
    run(&CniEnv::new(Command::Gc, req.conf.path.clone()), &req.conf).map(|_| ())
}

/// IPAM STATUS: the spec requires an upper plugin to pass STATUS on.
pub fn status(conf: &NetConf) -> Result<(), Error> {
    run(&CniEnv::new(Command::Status, conf.path.clone()), conf).map(|_| ())
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
}
