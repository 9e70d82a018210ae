//! The `trellis-routed` CNI plugin binary (runtimes find it in /opt/cni/bin).

fn main() {
    trellis_cni::skel::main(&trellis_routed::plugin::PLUGIN)
}
