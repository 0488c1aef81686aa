package kubecluster

// PauseImage is containerd's sandbox image: `make images` builds it
// (bin/images/ambit-pause.tar), and nothing pulls it.
const PauseImage = "ghcr.io/ambit-mesh/ambit-pause:3.10"

// containerdConfig is a node's containerd configuration. The paths are the
// fixed ones, which the node's mount namespace binds to its own
// directories (see nodeBinds); the shims' sockets under /run/containerd/s
// are fixed in containerd's code, which is why /run/containerd must be
// private to the node.
func containerdConfig(runc string) string {
	return `# Written by internal/kubecluster for one node; see nodeBinds.
version = 4
root = '/var/lib/containerd'
state = '/run/containerd'
imports = []
# The VM has no CAP_SYS_RESOURCE for negative OOM scores.
oom_score = 0
disabled_plugins = [
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile',
]

[plugins]
  # containerd 2 ignores a top-level [grpc] table: the sockets are set here.
  [plugins.'io.containerd.server.v1.grpc']
    address = '/run/containerd/containerd.sock'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '/run/containerd/containerd.sock.ttrpc'
  [plugins.'io.containerd.server.v1.debug']
    address = ''
  [plugins.'io.containerd.internal.v1.opt']
    path = '/var/lib/containerd/opt'
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '/var/lib/containerd/image-verifier/bin'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '` + PauseImage + `'

  [plugins.'io.containerd.cri.v1.runtime']
    # Without CAP_SYS_RESOURCE runc cannot lower a container's OOM score
    # below the runtime's: every sandbox would fail to start.
    restrict_oom_score_adj = true
    # Pods' network namespaces under /run/containerd, the node's own.
    netns_mounts_under_state_dir = true
    enable_unprivileged_ports = true
    enable_unprivileged_icmp = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        # There is no registry: the pause image is imported.
        disable_pause_image_pull = true
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '` + runc + `'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/opt/cni/bin']
      conf_dir = '/etc/cni/net.d'
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
`
}

// cniConfig is a node's pod network: a veth per pod routed by the node
// (ptp), addresses from the node's pod subnet (host-local), and hostPort
// support (portmap). Routed rather than bridged, so pod-to-service traffic
// on one node needs no bridge netfilter (a host-global setting).
func cniConfig(podCIDR string) string {
	return `{
  "cniVersion": "1.0.0",
  "name": "ambit-kubecluster",
  "plugins": [
    {
      "type": "ptp",
      "mtu": 1500,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "` + podCIDR + `"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/var/lib/cni/networks"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
}

// kubeletConfig is a node's KubeletConfiguration.
func kubeletConfig(n NodeState, caFile, certFile, keyFile string, withDNS bool) string {
	dns := ""
	if withDNS {
		dns = "clusterDNS: [" + DNSServiceIP + "]\n"
	}
	failV1 := "true"
	if cgroupV1() {
		failV1 = "false"
	}
	return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ` + n.IP + `
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: ` + certFile + `
tlsPrivateKeyFile: ` + keyFile + `
tlsMinVersion: VersionTLS13
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ` + caFile + `}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
# A cgroup root of the node's own in every hierarchy: two kubelets on one
# host must not share /kubepods.
cgroupRoot: ` + n.CgroupRoot + `
cgroupsPerQOS: true
# Hybrid hosts (cgroup v1 controllers) only start with this set.
failCgroupV1: ` + failV1 + `
failSwapOn: false
# The kubelet sets kernel.panic and friends (host-global; see host.go).
protectKernelDefaults: false
# No CAP_SYS_RESOURCE: the kubelet may not lower its own OOM score.
oomScoreAdj: 0
` + dns + `clusterDomain: ` + ClusterDomain + `
# Pods get the cluster DNS only, not the host's resolver.
resolvConf: ""
podLogsDir: /var/log/pods
# Images cannot be pulled again: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
localStorageCapacityIsolation: true
serializeImagePulls: false
staticPodPath: ""
enableServer: true
`
}

// kubeProxyConfig is a node's KubeProxyConfiguration: iptables in the
// node's namespace; no conntrack setting (nf_conntrack_max and the
// hash size are host-global) and no route_localnet.
func kubeProxyConfig(n NodeState, kubeconfigPath string) string {
	return `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: ` + kubeconfigPath + `
hostnameOverride: ` + n.Name + `
bindAddress: ` + n.IP + `
clusterCIDR: ` + clusterCIDR + `
mode: iptables
oomScoreAdj: 0
# NodePorts on the node's own address only.
nodePortAddresses: [primary]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
iptables:
  localhostNodePorts: false
  masqueradeAll: false
`
}
