//! Bodies kubectl sends, and bodies built to probe every refusal.

#![allow(clippy::unwrap_used)]

use super::*;

/// Bodies kubectl 1.33 sent to this server (captured with `-v=9`).
mod fixtures {
    /// `kubectl create namespace x`
    pub const NAMESPACE_PB: &str = concat!(
        "6b3873000a0f0a02763112094e616d65737061636512190a110a017812001a0022002a0032003800",
        "420012001a020a001a002200",
    );

    /// `kubectl create configmap cfg -n cap --from-literal=a=1 --from-literal=greeting='hello world'`
    pub const CONFIGMAP_PB: &str = concat!(
        "6b3873000a0f0a0276311209436f6e6669674d617012390a160a0363666712001a0363617022002a",
        "0032003800420012060a016112013112170a086772656574696e67120b68656c6c6f20776f726c64",
        "1a002200",
    );

    /// `kubectl create secret generic s1 -n cap --from-literal=user=admin --from-literal=pw='p@ss'`
    pub const SECRET_PB: &str = concat!(
        "6b3873000a0c0a027631120653656372657412340a150a02733112001a0363617022002a00320038",
        "004200120a0a027077120470407373120d0a0475736572120561646d696e1a001a002200",
    );

    /// `kubectl create deployment web2 -n cap --image=nginx:1.27 --replicas=3 --port=8080`
    pub const DEPLOYMENT_PB: &str = concat!(
        "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412c5010a240a04776562321200",
        "1a0363617022002a003200380042005a0b0a03617070120477656232128e010803120d0a0b0a0361",
        "70701204776562321a730a1d0a0012001a0022002a003200380042005a0b0a036170701204776562",
        "32125212340a056e67696e78120a6e67696e783a312e32372a00320b0a00100018903f22002a0042",
        "006a007200800100880100900100a201001a00320042004a0052005800600068008201008a01009a",
        "0100c2010022020a00280038001a0c0800100018002000280038001a002200",
    );

    /// `kubectl create service nodeport np1 -n cap --tcp=80:8080`
    pub const SERVICE_PB: &str = concat!(
        "6b3873000a0d0a027631120753657276696365126b0a220a036e703112001a0363617022002a0032",
        "00380042005a0a0a0361707012036e703112410a1b0a0738302d3830383012035443501850220708",
        "0010903f1a002800120a0a0361707012036e70311a0022084e6f6465506f72743a00420052005a00",
        "600068001a020a001a002200",
    );

    /// `kubectl debug pod1 -n cap --copy-to=pod1-copy --image=busybox:1.36 --container=dbg
    /// --env=X=1 -- sleep 1000`, pod1 being `kubectl run pod1 --image=nginx:1.27 --env=A=1
    /// --env=B=two --port=80 --labels=app=p1,tier=web` (`run` itself sends JSON; the copy
    /// drops the labels).
    pub const POD_COPY_PB: &str = concat!(
        "6b3873000a090a0276311203506f6412ae020a1c0a09706f64312d636f707912001a036361702200",
        "2a0032003800420012f801126b0a04706f6431120a6e67696e783a312e32372a00320d0a00100018",
        "5022035443502a003a060a01411201313a080a0142120374776f42006a142f6465762f7465726d69",
        "6e6174696f6e2d6c6f67720c49664e6f7450726573656e74800100880100900100a2010446696c65",
        "12400a03646267120c62757379626f783a312e33361a05736c6565701a04313030302a003a060a01",
        "5812013142006a007200800100880100900100a2010446696c651a06416c77617973201e320c436c",
        "7573746572466972737442004a00520058006000680072008201008a01009a011164656661756c74",
        "2d7363686564756c6572c20100c80100f001011a130a001a0022002a0032004a005a007200880100",
        "1a002200",
    );

    /// `kubectl debug node/n1 -n cap --image=busybox:1.36 --profile=general`
    pub const POD_NODE_PB: &str = concat!(
        "6b3873000a090a0276311203506f6412d4010a260a166e6f64652d64656275676765722d6e312d77",
        "6a6d673812001a0022002a003200380042001294010a120a09686f73742d726f6f7412050a030a01",
        "2f124a0a086465627567676572120c62757379626f783a312e33362a0042004a180a09686f73742d",
        "726f6f7410001a052f686f7374220032006a007200800100880100900100a2010446696c651a054e",
        "65766572320042004a0052026e315801600168018201008a01009a0100b2010e0a00120645786973",
        "74731a002200c201001a130a001a0022002a0032004a005a0072008801001a002200",
    );

    /// `kubectl drain n1 --force --grace-period=5`: the DELETE of a pod.
    pub const DELETE_OPTIONS_PB: &str =
        "6b3873000a130a027631120d44656c6574654f7074696f6e73120208051a002200";

    /// `kubectl autoscale deployment web -n cap --min=2 --max=5 --cpu-percent=70`
    pub const HPA_PB: &str = concat!(
        "6b3873000a290a0e6175746f7363616c696e672f76321217486f72697a6f6e74616c506f64417574",
        "6f7363616c657212610a130a0377656212001a0022002a0032003800420012440a1a0a0a4465706c",
        "6f796d656e7412037765621a07617070732f76311002180522220a085265736f7572636522160a03",
        "637075120f0a0b5574696c697a6174696f6e20461a04180020001a002200",
    );

    /// `kubectl create cronjob c1 -n cap --image=busybox:1.36 --schedule='*/5 * * * *' -- date`
    pub const CRONJOB_PB: &str = concat!(
        "6b3873000a130a0862617463682f7631120743726f6e4a6f6212ac010a150a02633112001a036361",
        "7022002a003200380042001290010a0b2a2f35202a202a202a202a1a002a7f0a120a02633112001a",
        "0022002a00320038004200126932670a100a0012001a0022002a003200380042001253122c0a0263",
        "31120c62757379626f783a312e33361a04646174652a0042006a007200800100880100900100a201",
        "001a094f6e4661696c757265320042004a0052005800600068008201008a01009a0100c201001a00",
        "1a002200",
    );

    /// `kubectl create job j2 -n cap --from=cronjob/c1`
    pub const JOB_FROM_PB: &str = concat!(
        "6b3873000a0f0a0862617463682f763112034a6f6212ef020a83010a026a3212001a036361702200",
        "2a00320038004200622b0a2163726f6e6a6f622e6b756265726e657465732e696f2f696e7374616e",
        "746961746512066d616e75616c6a3f0a0743726f6e4a6f621a026331222438373763616538382d63",
        "6131352d343736652d383632392d3130666261356133633136312a0862617463682f7631300112dc",
        "010801100132b0010a100a0012001a0022002a00320038004200129b0112500a026331120c627573",
        "79626f783a312e33361a04646174652a0042006a142f6465762f7465726d696e6174696f6e2d6c6f",
        "67720c49664e6f7450726573656e74800100880100900100a2010446696c651a094f6e4661696c75",
        "7265201e320c436c7573746572466972737442004a00520058006000680072008201008a01009a01",
        "1164656661756c742d7363686564756c6572c20100f0010138064a0a4e6f6e496e64657865645000",
        "72135465726d696e6174696e674f724661696c65641a082000280030003a001a002200",
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// A tiny encoder, to build bodies kubectl does not send.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field (negative numbers sign-extended to 64 bits, as protobuf does).
fn int(num: u32, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(num) << 3, &mut out);
    varint(v as u64, &mut out);
    out
}

/// A length-delimited field.
fn len(num: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((u64::from(num) << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn s(num: u32, text: &str) -> Vec<u8> {
    len(num, text.as_bytes())
}

fn m(num: u32, parts: &[Vec<u8>]) -> Vec<u8> {
    len(num, &parts.concat())
}

fn envelope(api_version: &str, kind: &str, raw: &[Vec<u8>]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(m(1, &[s(1, api_version), s(2, kind)]));
    out.extend(m(2, raw));
    out
}

fn unsupported(body: &[u8]) -> String {
    match decode(body) {
        Err(DecodeError::Unsupported(m)) => m,
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

fn malformed(body: &[u8]) -> String {
    match decode(body) {
        Err(DecodeError::Malformed(m)) => m,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn kubectl_bodies_decode_to_the_json_kubectl_would_have_sent() {
    use serde_json::json;
    let cases = [
        (
            fixtures::NAMESPACE_PB,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"},
                "spec": {}, "status": {}}),
        ),
        (
            fixtures::CONFIGMAP_PB,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cfg", "namespace": "cap"},
                "data": {"a": "1", "greeting": "hello world"}}),
        ),
        (
            fixtures::SECRET_PB,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s1", "namespace": "cap"},
                "data": {"pw": "cEBzcw==", "user": "YWRtaW4="}}),
        ),
        (
            fixtures::DEPLOYMENT_PB,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web2", "namespace": "cap", "labels": {"app": "web2"}},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web2"}},
                    "template": {"metadata": {"labels": {"app": "web2"}},
                        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                            "ports": [{"containerPort": 8080}], "resources": {}}]}},
                    "strategy": {}},
                "status": {}}),
        ),
        (
            fixtures::SERVICE_PB,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "np1", "namespace": "cap", "labels": {"app": "np1"}},
                "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80,
                        "targetPort": 8080}],
                    "selector": {"app": "np1"}, "type": "NodePort"},
                "status": {"loadBalancer": {}}}),
        ),
        (
            fixtures::POD_COPY_PB,
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "pod1-copy", "namespace": "cap"},
                "spec": {
                    "containers": [
                        {"name": "pod1", "image": "nginx:1.27",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}],
                            "resources": {},
                            "terminationMessagePath": "/dev/termination-log",
                            "imagePullPolicy": "IfNotPresent",
                            "terminationMessagePolicy": "File"},
                        {"name": "dbg", "image": "busybox:1.36", "command": ["sleep", "1000"],
                            "env": [{"name": "X", "value": "1"}], "resources": {},
                            "terminationMessagePolicy": "File"}],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst", "securityContext": {},
                    "schedulerName": "default-scheduler", "priority": 0,
                    "enableServiceLinks": true},
                "status": {}}),
        ),
        (
            fixtures::POD_NODE_PB,
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "node-debugger-n1-wjmg8"},
                "spec": {
                    "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
                    "containers": [{"name": "debugger", "image": "busybox:1.36",
                        "resources": {},
                        "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
                        "terminationMessagePolicy": "File"}],
                    "restartPolicy": "Never", "nodeName": "n1", "hostNetwork": true,
                    "hostPID": true, "hostIPC": true, "tolerations": [{"operator": "Exists"}]},
                "status": {}}),
        ),
        (
            fixtures::DELETE_OPTIONS_PB,
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 5}),
        ),
        (
            fixtures::HPA_PB,
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web"},
                "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web",
                        "apiVersion": "apps/v1"},
                    "minReplicas": 2, "maxReplicas": 5,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70}}}]},
                "status": {"desiredReplicas": 0}}),
        ),
        (
            fixtures::CRONJOB_PB,
            json!({"apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": "c1", "namespace": "cap"},
                "spec": {"schedule": "*/5 * * * *",
                    "jobTemplate": {"metadata": {"name": "c1"},
                        "spec": {"template": {"metadata": {},
                            "spec": {"containers": [{"name": "c1", "image": "busybox:1.36",
                                "command": ["date"], "resources": {}}],
                                "restartPolicy": "OnFailure"}}}}},
                "status": {}}),
        ),
        (
            fixtures::JOB_FROM_PB,
            json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "j2", "namespace": "cap",
                    "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                    "ownerReferences": [{"kind": "CronJob", "name": "c1",
                        "uid": "877cae88-ca15-476e-8629-10fba5a3c161",
                        "apiVersion": "batch/v1", "controller": true}]},
                "spec": {"parallelism": 1, "completions": 1,
                    "template": {"metadata": {},
                        "spec": {"containers": [{"name": "c1", "image": "busybox:1.36",
                                "command": ["date"], "resources": {},
                                "terminationMessagePath": "/dev/termination-log",
                                "imagePullPolicy": "IfNotPresent",
                                "terminationMessagePolicy": "File"}],
                            "restartPolicy": "OnFailure", "terminationGracePeriodSeconds": 30,
                            "dnsPolicy": "ClusterFirst", "securityContext": {},
                            "schedulerName": "default-scheduler",
                            "enableServiceLinks": true}},
                    "backoffLimit": 6, "completionMode": "NonIndexed", "suspend": false,
                    "podReplacementPolicy": "TerminatingOrFailed"},
                "status": {}}),
        ),
    ];
    for (body, want) in cases {
        let got = decode(&hex(body)).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn plain_zeros_are_left_out_and_pointer_zeros_kept() {
    // DeploymentSpec: replicas (*int32) = 0, minReadySeconds (int32) = 0, paused = false.
    let body = envelope(
        "apps/v1",
        "Deployment",
        &[
            m(1, &[s(1, "d"), s(3, ""), int(7, 0)]),
            m(2, &[int(1, 0), int(5, 0), int(7, 0)]),
        ],
    );
    assert_eq!(
        decode(&body).unwrap(),
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"}, "spec": {"replicas": 0}})
    );
    // maxUnavailable (*IntOrString) = 0 stays; a ServicePort's zero targetPort goes.
    let rolling = envelope(
        "apps/v1",
        "Deployment",
        &[m(
            2,
            &[m(
                4,
                &[
                    s(1, "RollingUpdate"),
                    m(2, &[m(1, &[int(1, 0), int(2, 0)])]),
                ],
            )],
        )],
    );
    assert_eq!(
        decode(&rolling).unwrap()["spec"]["strategy"],
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}})
    );
    let port = envelope("v1", "Service", &[m(2, &[m(1, &[int(3, 80), m(4, &[])])])]);
    assert_eq!(
        decode(&port).unwrap()["spec"]["ports"],
        serde_json::json!([{"port": 80}])
    );
}

#[test]
fn well_known_types_take_their_json_form() {
    use serde_json::json;
    // 2026-01-02T03:04:05Z
    const T: i64 = 1_767_323_045;
    let pod = envelope(
        "v1",
        "Pod",
        &[
            m(1, &[s(1, "p"), m(8, &[int(1, T), int(2, 999)])]),
            m(
                2,
                &[
                    m(
                        2,
                        &[
                            s(1, "c"),
                            // resources: limits cpu=500m, requests memory=128Mi
                            m(
                                8,
                                &[
                                    m(1, &[s(1, "cpu"), m(2, &[s(1, "500m")])]),
                                    m(2, &[s(1, "memory"), m(2, &[s(1, "128Mi")])]),
                                ],
                            ),
                            // livenessProbe.httpGet.port = "http" (IntOrString string)
                            m(10, &[m(1, &[m(2, &[m(2, &[int(1, 1), s(3, "http")])])])]),
                        ],
                    ),
                    // priority (*int32) = -5, sign-extended to ten bytes
                    int(25, -5),
                    // securityContext.supplementalGroups: repeated int64, unpacked
                    m(14, &[int(4, 1000), int(4, 2000)]),
                ],
            ),
        ],
    );
    let v = decode(&pod).unwrap();
    assert_eq!(
        v["metadata"]["creationTimestamp"],
        json!("2026-01-02T03:04:05Z")
    );
    let c = &v["spec"]["containers"][0];
    assert_eq!(
        c["resources"],
        json!({"limits": {"cpu": "500m"}, "requests": {"memory": "128Mi"}})
    );
    assert_eq!(c["livenessProbe"], json!({"httpGet": {"port": "http"}}));
    assert_eq!(v["spec"]["priority"], json!(-5));
    assert_eq!(
        v["spec"]["securityContext"]["supplementalGroups"],
        json!([1000, 2000])
    );

    // MicroTime: microsecond precision.
    let lease = envelope(
        "coordination.k8s.io/v1",
        "Lease",
        &[m(2, &[s(1, "me"), m(4, &[int(1, T), int(2, 123_456_789)])])],
    );
    assert_eq!(
        decode(&lease).unwrap()["spec"],
        json!({"holderIdentity": "me", "renewTime": "2026-01-02T03:04:05.123456Z"})
    );

    // bytes → base64; a RawExtension → the embedded JSON.
    let secret = envelope("v1", "Secret", &[m(2, &[s(1, "k"), len(2, &[0, 255, 1])])]);
    assert_eq!(decode(&secret).unwrap()["data"], json!({"k": "AP8B"}));
    let revision = envelope(
        "apps/v1",
        "ControllerRevision",
        &[m(2, &[s(1, r#"{"spec":{"replicas":2}}"#)]), int(3, 4)],
    );
    let v = decode(&revision).unwrap();
    assert_eq!(v["data"], json!({"spec": {"replicas": 2}}));
    assert_eq!(v["revision"], json!(4));

    // Packed repeated int32 (JobSpec.podFailurePolicy.rules[].onExitCodes.values).
    let job = envelope(
        "batch/v1",
        "Job",
        &[m(
            2,
            &[m(
                11,
                &[m(
                    1,
                    &[s(1, "FailJob"), m(2, &[s(2, "In"), len(3, &[1, 42])])],
                )],
            )],
        )],
    );
    assert_eq!(
        decode(&job).unwrap()["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"],
        json!({"operator": "In", "values": [1, 42]})
    );
}

#[test]
fn go_durations_print_as_go_prints_them() {
    for (nanos, want) in [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5µs"),
        (20_000_000, "20ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_000_000_001, "1h2m3.000000001s"),
        (-61_000_000_000, "-1m1s"),
    ] {
        assert_eq!(go_duration(nanos), want, "{nanos}");
    }
}

#[test]
fn what_the_table_does_not_know_is_refused_not_dropped() {
    // ObjectMeta field 15 (clusterName, removed upstream).
    let body = envelope("v1", "Namespace", &[m(1, &[s(1, "x"), s(15, "c")])]);
    let msg = unsupported(&body);
    assert!(
        msg.contains("field 15 of meta/v1 ObjectMeta (at metadata)"),
        "{msg}"
    );
    assert!(msg.contains("JSON"), "{msg}");

    // PodSpec field 34 (ephemeralContainers) deep in a Deployment.
    let body = envelope(
        "apps/v1",
        "Deployment",
        &[m(2, &[m(3, &[m(2, &[m(34, &[s(1, "e")])])])])],
    );
    let msg = unsupported(&body);
    assert!(
        msg.contains("field 34 of core/v1 PodSpec (at spec.template.spec)"),
        "{msg}"
    );

    // A volume source the table does not cover (nfs = 7), inline in Volume.
    let body = envelope(
        "v1",
        "Pod",
        &[m(
            2,
            &[m(1, &[s(1, "v"), m(2, &[m(7, &[s(1, "server")])])])],
        )],
    );
    let msg = unsupported(&body);
    assert!(
        msg.contains("field 7 of core/v1 VolumeSource (at spec.volumes)"),
        "{msg}"
    );

    // A kind the table does not cover, an encoding, an embedded object that is not JSON.
    let msg = unsupported(&envelope("storage.k8s.io/v1", "StorageClass", &[]));
    assert!(msg.contains("storage.k8s.io/v1 StorageClass"), "{msg}");
    let mut gz = envelope("v1", "Namespace", &[]);
    gz.extend(s(3, "gzip"));
    unsupported(&gz);
    let revision = envelope("apps/v1", "ControllerRevision", &[m(2, &[s(1, "\u{1}x")])]);
    unsupported(&revision);
}

#[test]
fn role_bindings_and_access_reviews_decode_as_kubectl_sends_them() {
    use serde_json::json;
    // kubectl create rolebinding viewers --clusterrole=view --user=viewer -n team
    let binding = envelope(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        &[
            m(1, &[s(1, "viewers"), s(3, "team")]),
            m(
                2,
                &[
                    s(1, "User"),
                    s(2, "rbac.authorization.k8s.io"),
                    s(3, "viewer"),
                ],
            ),
            m(
                3,
                &[
                    s(1, "rbac.authorization.k8s.io"),
                    s(2, "ClusterRole"),
                    s(3, "view"),
                ],
            ),
        ],
    );
    let v = decode(&binding).unwrap();
    assert_eq!(
        v["subjects"],
        json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "viewer"}])
    );
    assert_eq!(
        v["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"})
    );
    // kubectl create role pod-reader --verb=get,list --resource=pods
    let role = envelope(
        "rbac.authorization.k8s.io/v1",
        "Role",
        &[
            m(1, &[s(1, "pod-reader")]),
            m(2, &[s(1, "get"), s(1, "list"), s(2, ""), s(3, "pods")]),
        ],
    );
    assert_eq!(
        decode(&role).unwrap()["rules"],
        json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}])
    );
    // kubectl auth can-i delete pods -n team
    let review = envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &[m(2, &[m(1, &[s(1, "team"), s(2, "delete"), s(5, "pods")])])],
    );
    assert_eq!(
        decode(&review).unwrap()["spec"],
        json!({"resourceAttributes": {"namespace": "team", "verb": "delete", "resource": "pods"}})
    );
}

#[test]
fn bodies_that_are_not_protobuf_are_malformed() {
    malformed(b"");
    malformed(b"{\"kind\":\"Namespace\"}");
    let ns = hex(fixtures::NAMESPACE_PB);
    malformed(&ns[..ns.len() - 1]);
    malformed(&ns[..20]);
    // name as a varint instead of a string
    malformed(&envelope("v1", "Namespace", &[m(1, &[int(1, 7)])]));
    // wire type 3 (groups)
    malformed(&envelope("v1", "Namespace", &[vec![0x0b]]));
    // an invalid UTF-8 string
    malformed(&envelope("v1", "Namespace", &[m(1, &[len(1, &[0xff])])]));
    // a time past year 9999
    malformed(&envelope(
        "v1",
        "Namespace",
        &[m(1, &[m(8, &[int(1, 300_000_000_000)])])],
    ));
    // no kind
    malformed(&envelope("v1", "", &[]));
}

#[test]
fn errors_become_400_and_415() {
    let e = ApiError::from(DecodeError::Malformed("cut short".into()));
    assert_eq!((e.code, e.reason), (400, "BadRequest"));
    let e = ApiError::from(DecodeError::Unsupported("field 9".into()));
    assert_eq!(
        (e.code, e.reason, e.message.as_str()),
        (415, "UnsupportedMediaType", "field 9")
    );
}

#[test]
fn no_input_panics() {
    let bodies: Vec<Vec<u8>> = [
        fixtures::NAMESPACE_PB,
        fixtures::CONFIGMAP_PB,
        fixtures::SECRET_PB,
        fixtures::DEPLOYMENT_PB,
        fixtures::SERVICE_PB,
        fixtures::POD_COPY_PB,
        fixtures::POD_NODE_PB,
        fixtures::DELETE_OPTIONS_PB,
        fixtures::HPA_PB,
        fixtures::CRONJOB_PB,
        fixtures::JOB_FROM_PB,
    ]
    .iter()
    .map(|h| hex(h))
    .collect();
    let check = |b: &[u8]| {
        if let Ok(v) = decode(b) {
            assert!(v.is_object());
        }
    };
    for body in &bodies {
        // every prefix
        for n in 0..body.len() {
            check(&body[..n]);
        }
        // every single-bit flip, and every byte set to 0x00 and 0xff
        for i in 0..body.len() {
            let mut b = body.clone();
            for bit in 0..8 {
                b[i] ^= 1 << bit;
                check(&b);
                b[i] ^= 1 << bit;
            }
            for x in [0x00, 0xff] {
                let saved = b[i];
                b[i] = x;
                check(&b);
                b[i] = saved;
            }
        }
    }
    // random bytes after the magic, and random splices of the fixtures
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let n = (next() % 300) as usize;
        let mut b = MAGIC.to_vec();
        b.extend((0..n).map(|_| next() as u8));
        check(&b);
        let body = &bodies[(next() % bodies.len() as u64) as usize];
        let mut b = body.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        check(&b);
    }
}
