//! core/v1 (`k8s.io/api/core/v1/generated.proto`): pods and their specs, and the other core kinds
//! kubectl creates.

use super::Ty::{Bool, Bytes, I32, I64, IntOrString, M, Quantity, Str, Time};
use super::meta::{CONDITION, LABEL_SELECTOR, OBJECT_META};
use super::{Msg, f, inline, keep, map, rep};

pub(super) static NAMESPACE: Msg = Msg::new(
    "core/v1 Namespace",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&NAMESPACE_SPEC)),
        f(3, "status", M(&NAMESPACE_STATUS)),
    ],
);

pub(super) static NAMESPACE_SPEC: Msg =
    Msg::new("core/v1 NamespaceSpec", &[rep(1, "finalizers", Str)]);

pub(super) static NAMESPACE_STATUS: Msg = Msg::new(
    "core/v1 NamespaceStatus",
    &[
        f(1, "phase", Str),
        rep(2, "conditions", M(&NAMESPACE_CONDITION)),
    ],
);

pub(super) static NAMESPACE_CONDITION: Msg = Msg::new(
    "core/v1 NamespaceCondition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
    ],
);

pub(super) static CONFIG_MAP: Msg = Msg::new(
    "core/v1 ConfigMap",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        map(2, "data", Str),
        map(3, "binaryData", Bytes),
        keep(4, "immutable", Bool),
    ],
);

pub(super) static SECRET: Msg = Msg::new(
    "core/v1 Secret",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        map(2, "data", Bytes),
        f(3, "type", Str),
        map(4, "stringData", Str),
        keep(5, "immutable", Bool),
    ],
);

pub(super) static SERVICE_ACCOUNT: Msg = Msg::new(
    "core/v1 ServiceAccount",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        rep(2, "secrets", M(&OBJECT_REFERENCE)),
        rep(3, "imagePullSecrets", M(&LOCAL_OBJECT_REFERENCE)),
        keep(4, "automountServiceAccountToken", Bool),
    ],
);

pub(super) static OBJECT_REFERENCE: Msg = Msg::new(
    "core/v1 ObjectReference",
    &[
        f(1, "kind", Str),
        f(2, "namespace", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
        f(5, "apiVersion", Str),
        f(6, "resourceVersion", Str),
        f(7, "fieldPath", Str),
    ],
);

pub(super) static LOCAL_OBJECT_REFERENCE: Msg =
    Msg::new("core/v1 LocalObjectReference", &[f(1, "name", Str)]);

pub(super) static SERVICE: Msg = Msg::new(
    "core/v1 Service",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&SERVICE_SPEC)),
        f(3, "status", M(&SERVICE_STATUS)),
    ],
);

pub(super) static SERVICE_SPEC: Msg = Msg::new(
    "core/v1 ServiceSpec",
    &[
        rep(1, "ports", M(&SERVICE_PORT)),
        map(2, "selector", Str),
        f(3, "clusterIP", Str),
        f(4, "type", Str),
        rep(5, "externalIPs", Str),
        f(7, "sessionAffinity", Str),
        f(8, "loadBalancerIP", Str),
        rep(9, "loadBalancerSourceRanges", Str),
        f(10, "externalName", Str),
        f(11, "externalTrafficPolicy", Str),
        f(12, "healthCheckNodePort", I32),
        f(13, "publishNotReadyAddresses", Bool),
        f(14, "sessionAffinityConfig", M(&SESSION_AFFINITY_CONFIG)),
        keep(17, "ipFamilyPolicy", Str),
        rep(18, "clusterIPs", Str),
        rep(19, "ipFamilies", Str),
        keep(20, "allocateLoadBalancerNodePorts", Bool),
        keep(21, "loadBalancerClass", Str),
        keep(22, "internalTrafficPolicy", Str),
        keep(23, "trafficDistribution", Str),
    ],
);

pub(super) static SERVICE_PORT: Msg = Msg::new(
    "core/v1 ServicePort",
    &[
        f(1, "name", Str),
        f(2, "protocol", Str),
        keep(3, "port", I32),
        f(4, "targetPort", IntOrString),
        f(5, "nodePort", I32),
        keep(6, "appProtocol", Str),
    ],
);

pub(super) static SESSION_AFFINITY_CONFIG: Msg = Msg::new(
    "core/v1 SessionAffinityConfig",
    &[f(1, "clientIP", M(&CLIENT_IP_CONFIG))],
);

pub(super) static CLIENT_IP_CONFIG: Msg =
    Msg::new("core/v1 ClientIPConfig", &[keep(1, "timeoutSeconds", I32)]);

pub(super) static SERVICE_STATUS: Msg = Msg::new(
    "core/v1 ServiceStatus",
    &[
        f(1, "loadBalancer", M(&LOAD_BALANCER_STATUS)),
        rep(2, "conditions", M(&CONDITION)),
    ],
);

pub(super) static LOAD_BALANCER_STATUS: Msg = Msg::new(
    "core/v1 LoadBalancerStatus",
    &[rep(1, "ingress", M(&LOAD_BALANCER_INGRESS))],
);

pub(super) static LOAD_BALANCER_INGRESS: Msg = Msg::new(
    "core/v1 LoadBalancerIngress",
    &[
        f(1, "ip", Str),
        f(2, "hostname", Str),
        keep(3, "ipMode", Str),
        rep(4, "ports", M(&PORT_STATUS)),
    ],
);

pub(super) static PORT_STATUS: Msg = Msg::new(
    "core/v1 PortStatus",
    &[
        keep(1, "port", I32),
        f(2, "protocol", Str),
        keep(3, "error", Str),
    ],
);

pub(super) static BINDING: Msg = Msg::new(
    "core/v1 Binding",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "target", M(&OBJECT_REFERENCE)),
    ],
);

pub(super) static POD: Msg = Msg::new(
    "core/v1 Pod",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&POD_SPEC)),
        f(3, "status", M(&POD_STATUS)),
    ],
);

pub(super) static POD_SPEC: Msg = Msg::new(
    "core/v1 PodSpec",
    &[
        rep(1, "volumes", M(&VOLUME)),
        rep(2, "containers", M(&CONTAINER)),
        f(3, "restartPolicy", Str),
        keep(4, "terminationGracePeriodSeconds", I64),
        keep(5, "activeDeadlineSeconds", I64),
        f(6, "dnsPolicy", Str),
        map(7, "nodeSelector", Str),
        f(8, "serviceAccountName", Str),
        f(9, "serviceAccount", Str),
        f(10, "nodeName", Str),
        f(11, "hostNetwork", Bool),
        f(12, "hostPID", Bool),
        f(13, "hostIPC", Bool),
        f(14, "securityContext", M(&POD_SECURITY_CONTEXT)),
        rep(15, "imagePullSecrets", M(&LOCAL_OBJECT_REFERENCE)),
        f(16, "hostname", Str),
        f(17, "subdomain", Str),
        f(18, "affinity", M(&AFFINITY)),
        f(19, "schedulerName", Str),
        rep(20, "initContainers", M(&CONTAINER)),
        keep(21, "automountServiceAccountToken", Bool),
        rep(22, "tolerations", M(&TOLERATION)),
        rep(23, "hostAliases", M(&HOST_ALIAS)),
        f(24, "priorityClassName", Str),
        keep(25, "priority", I32),
        f(26, "dnsConfig", M(&POD_DNS_CONFIG)),
        keep(27, "shareProcessNamespace", Bool),
        rep(28, "readinessGates", M(&POD_READINESS_GATE)),
        keep(29, "runtimeClassName", Str),
        keep(30, "enableServiceLinks", Bool),
        keep(31, "preemptionPolicy", Str),
        map(32, "overhead", Quantity),
        rep(
            33,
            "topologySpreadConstraints",
            M(&TOPOLOGY_SPREAD_CONSTRAINT),
        ),
        // 34: ephemeralContainers (EphemeralContainer): not covered
        keep(35, "setHostnameAsFQDN", Bool),
        f(36, "os", M(&POD_OS)),
        keep(37, "hostUsers", Bool),
        rep(38, "schedulingGates", M(&POD_SCHEDULING_GATE)),
        // 39: resourceClaims (PodResourceClaim): not covered
        f(40, "resources", M(&RESOURCE_REQUIREMENTS)),
        // 41: hostname_override: not in v1.33
        // 42: workload_ref: not in v1.33
    ],
);

pub(super) static POD_STATUS: Msg = Msg::new(
    "core/v1 PodStatus",
    &[
        f(1, "phase", Str),
        rep(2, "conditions", M(&POD_CONDITION)),
        f(3, "message", Str),
        f(4, "reason", Str),
        f(5, "hostIP", Str),
        f(6, "podIP", Str),
        f(7, "startTime", Time),
        // 8: containerStatuses (ContainerStatus): not covered
        f(9, "qosClass", Str),
        // 10: initContainerStatuses (ContainerStatus): not covered
        f(11, "nominatedNodeName", Str),
        rep(12, "podIPs", M(&POD_IP)),
        // 13: ephemeralContainerStatuses (ContainerStatus): not covered
        f(14, "resize", Str),
        // 15: resourceClaimStatuses (PodResourceClaimStatus): not covered
        rep(16, "hostIPs", M(&HOST_IP)),
        f(17, "observedGeneration", I64),
        // 18: extended_resource_claim_status: not in v1.33
        // 19: allocated_resources: not in v1.33
        // 20: resources: not in v1.33
    ],
);

pub(super) static POD_CONDITION: Msg = Msg::new(
    "core/v1 PodCondition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(3, "lastProbeTime", Time),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
        f(7, "observedGeneration", I64),
    ],
);

pub(super) static POD_IP: Msg = Msg::new("core/v1 PodIP", &[f(1, "ip", Str)]);

pub(super) static HOST_IP: Msg = Msg::new("core/v1 HostIP", &[f(1, "ip", Str)]);

pub(super) static POD_TEMPLATE_SPEC: Msg = Msg::new(
    "core/v1 PodTemplateSpec",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&POD_SPEC)),
    ],
);

pub(super) static CONTAINER: Msg = Msg::new(
    "core/v1 Container",
    &[
        f(1, "name", Str),
        f(2, "image", Str),
        rep(3, "command", Str),
        rep(4, "args", Str),
        f(5, "workingDir", Str),
        rep(6, "ports", M(&CONTAINER_PORT)),
        rep(7, "env", M(&ENV_VAR)),
        f(8, "resources", M(&RESOURCE_REQUIREMENTS)),
        rep(9, "volumeMounts", M(&VOLUME_MOUNT)),
        f(10, "livenessProbe", M(&PROBE)),
        f(11, "readinessProbe", M(&PROBE)),
        f(12, "lifecycle", M(&LIFECYCLE)),
        f(13, "terminationMessagePath", Str),
        f(14, "imagePullPolicy", Str),
        f(15, "securityContext", M(&SECURITY_CONTEXT)),
        f(16, "stdin", Bool),
        f(17, "stdinOnce", Bool),
        f(18, "tty", Bool),
        rep(19, "envFrom", M(&ENV_FROM_SOURCE)),
        f(20, "terminationMessagePolicy", Str),
        rep(21, "volumeDevices", M(&VOLUME_DEVICE)),
        f(22, "startupProbe", M(&PROBE)),
        rep(23, "resizePolicy", M(&CONTAINER_RESIZE_POLICY)),
        keep(24, "restartPolicy", Str),
        // 25: restart_policy_rules: not in v1.33
    ],
);

pub(super) static CONTAINER_PORT: Msg = Msg::new(
    "core/v1 ContainerPort",
    &[
        f(1, "name", Str),
        f(2, "hostPort", I32),
        keep(3, "containerPort", I32),
        f(4, "protocol", Str),
        f(5, "hostIP", Str),
    ],
);

pub(super) static ENV_VAR: Msg = Msg::new(
    "core/v1 EnvVar",
    &[
        f(1, "name", Str),
        f(2, "value", Str),
        f(3, "valueFrom", M(&ENV_VAR_SOURCE)),
    ],
);

pub(super) static ENV_VAR_SOURCE: Msg = Msg::new(
    "core/v1 EnvVarSource",
    &[
        f(1, "fieldRef", M(&OBJECT_FIELD_SELECTOR)),
        f(2, "resourceFieldRef", M(&RESOURCE_FIELD_SELECTOR)),
        f(3, "configMapKeyRef", M(&CONFIG_MAP_KEY_SELECTOR)),
        f(4, "secretKeyRef", M(&SECRET_KEY_SELECTOR)),
        // 5: file_key_ref: not in v1.33
    ],
);

pub(super) static OBJECT_FIELD_SELECTOR: Msg = Msg::new(
    "core/v1 ObjectFieldSelector",
    &[f(1, "apiVersion", Str), f(2, "fieldPath", Str)],
);

pub(super) static RESOURCE_FIELD_SELECTOR: Msg = Msg::new(
    "core/v1 ResourceFieldSelector",
    &[
        f(1, "containerName", Str),
        f(2, "resource", Str),
        f(3, "divisor", Quantity),
    ],
);

pub(super) static CONFIG_MAP_KEY_SELECTOR: Msg = Msg::new(
    "core/v1 ConfigMapKeySelector",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        f(2, "key", Str),
        keep(3, "optional", Bool),
    ],
);

pub(super) static SECRET_KEY_SELECTOR: Msg = Msg::new(
    "core/v1 SecretKeySelector",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        f(2, "key", Str),
        keep(3, "optional", Bool),
    ],
);

pub(super) static ENV_FROM_SOURCE: Msg = Msg::new(
    "core/v1 EnvFromSource",
    &[
        f(1, "prefix", Str),
        f(2, "configMapRef", M(&CONFIG_MAP_ENV_SOURCE)),
        f(3, "secretRef", M(&SECRET_ENV_SOURCE)),
    ],
);

pub(super) static CONFIG_MAP_ENV_SOURCE: Msg = Msg::new(
    "core/v1 ConfigMapEnvSource",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        keep(2, "optional", Bool),
    ],
);

pub(super) static SECRET_ENV_SOURCE: Msg = Msg::new(
    "core/v1 SecretEnvSource",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        keep(2, "optional", Bool),
    ],
);

pub(super) static RESOURCE_REQUIREMENTS: Msg = Msg::new(
    "core/v1 ResourceRequirements",
    &[
        map(1, "limits", Quantity),
        map(2, "requests", Quantity),
        rep(3, "claims", M(&RESOURCE_CLAIM)),
    ],
);

pub(super) static RESOURCE_CLAIM: Msg = Msg::new(
    "core/v1 ResourceClaim",
    &[f(1, "name", Str), f(2, "request", Str)],
);

pub(super) static VOLUME_MOUNT: Msg = Msg::new(
    "core/v1 VolumeMount",
    &[
        f(1, "name", Str),
        f(2, "readOnly", Bool),
        f(3, "mountPath", Str),
        f(4, "subPath", Str),
        keep(5, "mountPropagation", Str),
        f(6, "subPathExpr", Str),
        keep(7, "recursiveReadOnly", Str),
    ],
);

pub(super) static VOLUME_DEVICE: Msg = Msg::new(
    "core/v1 VolumeDevice",
    &[f(1, "name", Str), f(2, "devicePath", Str)],
);

pub(super) static VOLUME: Msg = Msg::new(
    "core/v1 Volume",
    &[f(1, "name", Str), inline(2, &VOLUME_SOURCE)],
);

pub(super) static VOLUME_SOURCE: Msg = Msg::new(
    "core/v1 VolumeSource",
    &[
        f(1, "hostPath", M(&HOST_PATH_VOLUME_SOURCE)),
        f(2, "emptyDir", M(&EMPTY_DIR_VOLUME_SOURCE)),
        // 3: gcePersistentDisk (GcePersistentDiskVolumeSource): not covered
        // 4: awsElasticBlockStore (AwsElasticBlockStoreVolumeSource): not covered
        // 5: gitRepo (GitRepoVolumeSource): not covered
        f(6, "secret", M(&SECRET_VOLUME_SOURCE)),
        // 7: nfs (NfsVolumeSource): not covered
        // 8: iscsi (IscsiVolumeSource): not covered
        // 9: glusterfs (GlusterfsVolumeSource): not covered
        f(
            10,
            "persistentVolumeClaim",
            M(&PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE),
        ),
        // 11: rbd (RbdVolumeSource): not covered
        // 12: flexVolume (FlexVolumeSource): not covered
        // 13: cinder (CinderVolumeSource): not covered
        // 14: cephfs (CephFsVolumeSource): not covered
        // 15: flocker (FlockerVolumeSource): not covered
        f(16, "downwardAPI", M(&DOWNWARD_API_VOLUME_SOURCE)),
        // 17: fc (FcVolumeSource): not covered
        // 18: azureFile (AzureFileVolumeSource): not covered
        f(19, "configMap", M(&CONFIG_MAP_VOLUME_SOURCE)),
        // 20: vsphereVolume (VsphereVirtualDiskVolumeSource): not covered
        // 21: quobyte (QuobyteVolumeSource): not covered
        // 22: azureDisk (AzureDiskVolumeSource): not covered
        // 23: photonPersistentDisk (PhotonPersistentDiskVolumeSource): not covered
        // 24: portworxVolume (PortworxVolumeSource): not covered
        // 25: scaleIO (ScaleIoVolumeSource): not covered
        f(26, "projected", M(&PROJECTED_VOLUME_SOURCE)),
        // 27: storageos (StorageOsVolumeSource): not covered
        // 28: csi (CSIVolumeSource): not covered
        // 29: ephemeral (EphemeralVolumeSource): not covered
        // 30: image (ImageVolumeSource): not covered
    ],
);

pub(super) static HOST_PATH_VOLUME_SOURCE: Msg = Msg::new(
    "core/v1 HostPathVolumeSource",
    &[f(1, "path", Str), keep(2, "type", Str)],
);

pub(super) static EMPTY_DIR_VOLUME_SOURCE: Msg = Msg::new(
    "core/v1 EmptyDirVolumeSource",
    &[f(1, "medium", Str), f(2, "sizeLimit", Quantity)],
);

pub(super) static SECRET_VOLUME_SOURCE: Msg = Msg::new(
    "core/v1 SecretVolumeSource",
    &[
        f(1, "secretName", Str),
        rep(2, "items", M(&KEY_TO_PATH)),
        keep(3, "defaultMode", I32),
        keep(4, "optional", Bool),
    ],
);

pub(super) static CONFIG_MAP_VOLUME_SOURCE: Msg = Msg::new(
    "core/v1 ConfigMapVolumeSource",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        rep(2, "items", M(&KEY_TO_PATH)),
        keep(3, "defaultMode", I32),
        keep(4, "optional", Bool),
    ],
);

pub(super) static KEY_TO_PATH: Msg = Msg::new(
    "core/v1 KeyToPath",
    &[f(1, "key", Str), f(2, "path", Str), keep(3, "mode", I32)],
);

pub(super) static PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE: Msg = Msg::new(
    "core/v1 PersistentVolumeClaimVolumeSource",
    &[f(1, "claimName", Str), f(2, "readOnly", Bool)],
);

pub(super) static DOWNWARD_API_VOLUME_SOURCE: Msg = Msg::new(
    "core/v1 DownwardAPIVolumeSource",
    &[
        rep(1, "items", M(&DOWNWARD_API_VOLUME_FILE)),
        keep(2, "defaultMode", I32),
    ],
);

pub(super) static DOWNWARD_API_VOLUME_FILE: Msg = Msg::new(
    "core/v1 DownwardAPIVolumeFile",
    &[
        f(1, "path", Str),
        f(2, "fieldRef", M(&OBJECT_FIELD_SELECTOR)),
        f(3, "resourceFieldRef", M(&RESOURCE_FIELD_SELECTOR)),
        keep(4, "mode", I32),
    ],
);

pub(super) static PROJECTED_VOLUME_SOURCE: Msg = Msg::new(
    "core/v1 ProjectedVolumeSource",
    &[
        rep(1, "sources", M(&VOLUME_PROJECTION)),
        keep(2, "defaultMode", I32),
    ],
);

pub(super) static VOLUME_PROJECTION: Msg = Msg::new(
    "core/v1 VolumeProjection",
    &[
        f(1, "secret", M(&SECRET_PROJECTION)),
        f(2, "downwardAPI", M(&DOWNWARD_API_PROJECTION)),
        f(3, "configMap", M(&CONFIG_MAP_PROJECTION)),
        f(
            4,
            "serviceAccountToken",
            M(&SERVICE_ACCOUNT_TOKEN_PROJECTION),
        ),
        // 5: clusterTrustBundle (ClusterTrustBundleProjection): not covered
        // 6: pod_certificate: not in v1.33
    ],
);

pub(super) static SECRET_PROJECTION: Msg = Msg::new(
    "core/v1 SecretProjection",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        rep(2, "items", M(&KEY_TO_PATH)),
        keep(4, "optional", Bool),
    ],
);

pub(super) static CONFIG_MAP_PROJECTION: Msg = Msg::new(
    "core/v1 ConfigMapProjection",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        rep(2, "items", M(&KEY_TO_PATH)),
        keep(4, "optional", Bool),
    ],
);

pub(super) static DOWNWARD_API_PROJECTION: Msg = Msg::new(
    "core/v1 DownwardAPIProjection",
    &[rep(1, "items", M(&DOWNWARD_API_VOLUME_FILE))],
);

pub(super) static SERVICE_ACCOUNT_TOKEN_PROJECTION: Msg = Msg::new(
    "core/v1 ServiceAccountTokenProjection",
    &[
        f(1, "audience", Str),
        keep(2, "expirationSeconds", I64),
        f(3, "path", Str),
    ],
);

pub(super) static PROBE: Msg = Msg::new(
    "core/v1 Probe",
    &[
        inline(1, &PROBE_HANDLER),
        f(2, "initialDelaySeconds", I32),
        f(3, "timeoutSeconds", I32),
        f(4, "periodSeconds", I32),
        f(5, "successThreshold", I32),
        f(6, "failureThreshold", I32),
        keep(7, "terminationGracePeriodSeconds", I64),
    ],
);

pub(super) static PROBE_HANDLER: Msg = Msg::new(
    "core/v1 ProbeHandler",
    &[
        f(1, "exec", M(&EXEC_ACTION)),
        f(2, "httpGet", M(&HTTP_GET_ACTION)),
        f(3, "tcpSocket", M(&TCP_SOCKET_ACTION)),
        f(4, "grpc", M(&GRPC_ACTION)),
    ],
);

pub(super) static EXEC_ACTION: Msg = Msg::new("core/v1 ExecAction", &[rep(1, "command", Str)]);

pub(super) static HTTP_GET_ACTION: Msg = Msg::new(
    "core/v1 HTTPGetAction",
    &[
        f(1, "path", Str),
        f(2, "port", IntOrString),
        f(3, "host", Str),
        f(4, "scheme", Str),
        rep(5, "httpHeaders", M(&HTTP_HEADER)),
    ],
);

pub(super) static HTTP_HEADER: Msg = Msg::new(
    "core/v1 HTTPHeader",
    &[f(1, "name", Str), f(2, "value", Str)],
);

pub(super) static TCP_SOCKET_ACTION: Msg = Msg::new(
    "core/v1 TCPSocketAction",
    &[f(1, "port", IntOrString), f(2, "host", Str)],
);

pub(super) static GRPC_ACTION: Msg = Msg::new(
    "core/v1 GRPCAction",
    &[keep(1, "port", I32), keep(2, "service", Str)],
);

pub(super) static LIFECYCLE: Msg = Msg::new(
    "core/v1 Lifecycle",
    &[
        f(1, "postStart", M(&LIFECYCLE_HANDLER)),
        f(2, "preStop", M(&LIFECYCLE_HANDLER)),
        keep(3, "stopSignal", Str),
    ],
);

pub(super) static LIFECYCLE_HANDLER: Msg = Msg::new(
    "core/v1 LifecycleHandler",
    &[
        f(1, "exec", M(&EXEC_ACTION)),
        f(2, "httpGet", M(&HTTP_GET_ACTION)),
        f(3, "tcpSocket", M(&TCP_SOCKET_ACTION)),
        f(4, "sleep", M(&SLEEP_ACTION)),
    ],
);

pub(super) static SLEEP_ACTION: Msg = Msg::new("core/v1 SleepAction", &[keep(1, "seconds", I64)]);

pub(super) static SECURITY_CONTEXT: Msg = Msg::new(
    "core/v1 SecurityContext",
    &[
        f(1, "capabilities", M(&CAPABILITIES)),
        keep(2, "privileged", Bool),
        f(3, "seLinuxOptions", M(&SE_LINUX_OPTIONS)),
        keep(4, "runAsUser", I64),
        keep(5, "runAsNonRoot", Bool),
        keep(6, "readOnlyRootFilesystem", Bool),
        keep(7, "allowPrivilegeEscalation", Bool),
        keep(8, "runAsGroup", I64),
        keep(9, "procMount", Str),
        f(10, "windowsOptions", M(&WINDOWS_SECURITY_CONTEXT_OPTIONS)),
        f(11, "seccompProfile", M(&SECCOMP_PROFILE)),
        f(12, "appArmorProfile", M(&APP_ARMOR_PROFILE)),
    ],
);

pub(super) static CAPABILITIES: Msg = Msg::new(
    "core/v1 Capabilities",
    &[rep(1, "add", Str), rep(2, "drop", Str)],
);

pub(super) static SE_LINUX_OPTIONS: Msg = Msg::new(
    "core/v1 SELinuxOptions",
    &[
        f(1, "user", Str),
        f(2, "role", Str),
        f(3, "type", Str),
        f(4, "level", Str),
    ],
);

pub(super) static SECCOMP_PROFILE: Msg = Msg::new(
    "core/v1 SeccompProfile",
    &[f(1, "type", Str), keep(2, "localhostProfile", Str)],
);

pub(super) static APP_ARMOR_PROFILE: Msg = Msg::new(
    "core/v1 AppArmorProfile",
    &[f(1, "type", Str), keep(2, "localhostProfile", Str)],
);

pub(super) static WINDOWS_SECURITY_CONTEXT_OPTIONS: Msg = Msg::new(
    "core/v1 WindowsSecurityContextOptions",
    &[
        keep(1, "gmsaCredentialSpecName", Str),
        keep(2, "gmsaCredentialSpec", Str),
        keep(3, "runAsUserName", Str),
        keep(4, "hostProcess", Bool),
    ],
);

pub(super) static POD_SECURITY_CONTEXT: Msg = Msg::new(
    "core/v1 PodSecurityContext",
    &[
        f(1, "seLinuxOptions", M(&SE_LINUX_OPTIONS)),
        keep(2, "runAsUser", I64),
        keep(3, "runAsNonRoot", Bool),
        rep(4, "supplementalGroups", I64),
        keep(5, "fsGroup", I64),
        keep(6, "runAsGroup", I64),
        rep(7, "sysctls", M(&SYSCTL)),
        f(8, "windowsOptions", M(&WINDOWS_SECURITY_CONTEXT_OPTIONS)),
        keep(9, "fsGroupChangePolicy", Str),
        f(10, "seccompProfile", M(&SECCOMP_PROFILE)),
        f(11, "appArmorProfile", M(&APP_ARMOR_PROFILE)),
        keep(12, "supplementalGroupsPolicy", Str),
        keep(13, "seLinuxChangePolicy", Str),
    ],
);

pub(super) static SYSCTL: Msg =
    Msg::new("core/v1 Sysctl", &[f(1, "name", Str), f(2, "value", Str)]);

pub(super) static TOLERATION: Msg = Msg::new(
    "core/v1 Toleration",
    &[
        f(1, "key", Str),
        f(2, "operator", Str),
        f(3, "value", Str),
        f(4, "effect", Str),
        keep(5, "tolerationSeconds", I64),
    ],
);

pub(super) static HOST_ALIAS: Msg = Msg::new(
    "core/v1 HostAlias",
    &[f(1, "ip", Str), rep(2, "hostnames", Str)],
);

pub(super) static POD_DNS_CONFIG: Msg = Msg::new(
    "core/v1 PodDNSConfig",
    &[
        rep(1, "nameservers", Str),
        rep(2, "searches", Str),
        rep(3, "options", M(&POD_DNS_CONFIG_OPTION)),
    ],
);

pub(super) static POD_DNS_CONFIG_OPTION: Msg = Msg::new(
    "core/v1 PodDNSConfigOption",
    &[f(1, "name", Str), keep(2, "value", Str)],
);

pub(super) static POD_READINESS_GATE: Msg =
    Msg::new("core/v1 PodReadinessGate", &[f(1, "conditionType", Str)]);

pub(super) static TOPOLOGY_SPREAD_CONSTRAINT: Msg = Msg::new(
    "core/v1 TopologySpreadConstraint",
    &[
        keep(1, "maxSkew", I32),
        f(2, "topologyKey", Str),
        f(3, "whenUnsatisfiable", Str),
        f(4, "labelSelector", M(&LABEL_SELECTOR)),
        keep(5, "minDomains", I32),
        keep(6, "nodeAffinityPolicy", Str),
        keep(7, "nodeTaintsPolicy", Str),
        rep(8, "matchLabelKeys", Str),
    ],
);

pub(super) static POD_OS: Msg = Msg::new("core/v1 PodOS", &[f(1, "name", Str)]);

pub(super) static POD_SCHEDULING_GATE: Msg =
    Msg::new("core/v1 PodSchedulingGate", &[f(1, "name", Str)]);

pub(super) static CONTAINER_RESIZE_POLICY: Msg = Msg::new(
    "core/v1 ContainerResizePolicy",
    &[f(1, "resourceName", Str), f(2, "restartPolicy", Str)],
);

pub(super) static AFFINITY: Msg = Msg::new(
    "core/v1 Affinity",
    &[
        f(1, "nodeAffinity", M(&NODE_AFFINITY)),
        f(2, "podAffinity", M(&POD_AFFINITY)),
        f(3, "podAntiAffinity", M(&POD_ANTI_AFFINITY)),
    ],
);

pub(super) static NODE_AFFINITY: Msg = Msg::new(
    "core/v1 NodeAffinity",
    &[
        f(
            1,
            "requiredDuringSchedulingIgnoredDuringExecution",
            M(&NODE_SELECTOR),
        ),
        rep(
            2,
            "preferredDuringSchedulingIgnoredDuringExecution",
            M(&PREFERRED_SCHEDULING_TERM),
        ),
    ],
);

pub(super) static NODE_SELECTOR: Msg = Msg::new(
    "core/v1 NodeSelector",
    &[rep(1, "nodeSelectorTerms", M(&NODE_SELECTOR_TERM))],
);

pub(super) static NODE_SELECTOR_TERM: Msg = Msg::new(
    "core/v1 NodeSelectorTerm",
    &[
        rep(1, "matchExpressions", M(&NODE_SELECTOR_REQUIREMENT)),
        rep(2, "matchFields", M(&NODE_SELECTOR_REQUIREMENT)),
    ],
);

pub(super) static NODE_SELECTOR_REQUIREMENT: Msg = Msg::new(
    "core/v1 NodeSelectorRequirement",
    &[
        f(1, "key", Str),
        f(2, "operator", Str),
        rep(3, "values", Str),
    ],
);

pub(super) static PREFERRED_SCHEDULING_TERM: Msg = Msg::new(
    "core/v1 PreferredSchedulingTerm",
    &[
        keep(1, "weight", I32),
        f(2, "preference", M(&NODE_SELECTOR_TERM)),
    ],
);

pub(super) static POD_AFFINITY: Msg = Msg::new(
    "core/v1 PodAffinity",
    &[
        rep(
            1,
            "requiredDuringSchedulingIgnoredDuringExecution",
            M(&POD_AFFINITY_TERM),
        ),
        rep(
            2,
            "preferredDuringSchedulingIgnoredDuringExecution",
            M(&WEIGHTED_POD_AFFINITY_TERM),
        ),
    ],
);

pub(super) static POD_ANTI_AFFINITY: Msg = Msg::new(
    "core/v1 PodAntiAffinity",
    &[
        rep(
            1,
            "requiredDuringSchedulingIgnoredDuringExecution",
            M(&POD_AFFINITY_TERM),
        ),
        rep(
            2,
            "preferredDuringSchedulingIgnoredDuringExecution",
            M(&WEIGHTED_POD_AFFINITY_TERM),
        ),
    ],
);

pub(super) static POD_AFFINITY_TERM: Msg = Msg::new(
    "core/v1 PodAffinityTerm",
    &[
        f(1, "labelSelector", M(&LABEL_SELECTOR)),
        rep(2, "namespaces", Str),
        f(3, "topologyKey", Str),
        f(4, "namespaceSelector", M(&LABEL_SELECTOR)),
        rep(5, "matchLabelKeys", Str),
        rep(6, "mismatchLabelKeys", Str),
    ],
);

pub(super) static WEIGHTED_POD_AFFINITY_TERM: Msg = Msg::new(
    "core/v1 WeightedPodAffinityTerm",
    &[
        keep(1, "weight", I32),
        f(2, "podAffinityTerm", M(&POD_AFFINITY_TERM)),
    ],
);

pub(super) static RESOURCE_QUOTA: Msg = Msg::new(
    "core/v1 ResourceQuota",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&RESOURCE_QUOTA_SPEC)),
        f(3, "status", M(&RESOURCE_QUOTA_STATUS)),
    ],
);

pub(super) static RESOURCE_QUOTA_SPEC: Msg = Msg::new(
    "core/v1 ResourceQuotaSpec",
    &[
        map(1, "hard", Quantity),
        rep(2, "scopes", Str),
        f(3, "scopeSelector", M(&SCOPE_SELECTOR)),
    ],
);

pub(super) static RESOURCE_QUOTA_STATUS: Msg = Msg::new(
    "core/v1 ResourceQuotaStatus",
    &[map(1, "hard", Quantity), map(2, "used", Quantity)],
);

pub(super) static SCOPE_SELECTOR: Msg = Msg::new(
    "core/v1 ScopeSelector",
    &[rep(
        1,
        "matchExpressions",
        M(&SCOPED_RESOURCE_SELECTOR_REQUIREMENT),
    )],
);

pub(super) static SCOPED_RESOURCE_SELECTOR_REQUIREMENT: Msg = Msg::new(
    "core/v1 ScopedResourceSelectorRequirement",
    &[
        f(1, "scopeName", Str),
        f(2, "operator", Str),
        rep(3, "values", Str),
    ],
);
