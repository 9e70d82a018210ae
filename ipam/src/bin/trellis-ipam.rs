//! `trellis-ipam`: the CNI IPAM plugin. Every call is one RPC to the node's ipamd; see
//! `trellis_ipam::plugin` for the configuration keys.

fn main() {
    trellis_cni::skel::main(&trellis_ipam::plugin::TrellisIpam)
}
