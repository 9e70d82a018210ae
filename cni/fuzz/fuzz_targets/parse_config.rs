//! Any bytes as a network configuration list, a single config, or a plugin request: parsing
//! either fails cleanly or gives a value that survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_cni::{NetworkConfigList, PluginConf};

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = NetworkConfigList::from_slice(data) {
        let again = serde_json::to_vec(&list).expect("a parsed list serialises");
        let back = NetworkConfigList::from_slice(&again).expect("a serialised list parses");
        assert_eq!(back, list);
        let _ = list.version();
    }
    let _ = NetworkConfigList::from_single(data);
    if let Ok(conf) = serde_json::from_slice::<PluginConf>(data) {
        let _ = conf.version();
        let _ = conf.runtime("ips");
        let _ = conf.cni_arg("ips");
    }
});
