//! One CNI plugin run as a runtime makes it: the `CNI_*` variables in the environment, the
//! network configuration on stdin, the result (or error object) read back from stdout.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_net::Netns;

use crate::Result;
use crate::bed::Testbed;

/// What one plugin run gave.
#[derive(Debug)]
pub struct PluginRun {
    /// The plugin exited 0.
    pub ok: bool,
    /// Its stdout as JSON (`Null` when it printed nothing or no JSON).
    pub out: Value,
    pub stderr: String,
    /// From the start of the process to its exit.
    pub took: Duration,
}

impl Testbed {
    /// Runs `plugin` in `ns` with `env` (the `CNI_*` variables, `CNI_PATH` included) and `conf`
    /// on stdin, within `limit`.
    pub async fn run_plugin(
        &self,
        ns: &Netns,
        plugin: &Path,
        env: &[(&str, String)],
        conf: &Value,
        limit: Duration,
    ) -> Result<PluginRun> {
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(plugin.display().to_string());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = self
            .exec_stdin(ns, &argv, conf.to_string().as_bytes(), limit)
            .await?;
        Ok(PluginRun {
            ok: out.success(),
            out: serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null),
            stderr: out.stderr,
            took: started.elapsed(),
        })
    }
}
