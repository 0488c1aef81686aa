package kubecluster

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// Issuer is the service account token issuer; also the default audience.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// files are the certificates and configuration the daemons read.
type files struct {
	caFile, caKeyFile            string
	saKey, saPub                 string
	apiCert, apiKey              string
	kubeletClient                *keyPair
	schedulerKC, controllerMgrKC string
}

// writeFiles creates the cluster's CA and every certificate, kubeconfig and
// configuration file, and fills the nodes' directories (CNI plugins and
// configuration).
func (c *Cluster) writeFiles(withDNS bool) (*files, error) {
	st := c.st
	a, err := newCA(filepath.Join(st.StateDir, "pki"))
	if err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	f := &files{caFile: a.path("ca.crt"), caKeyFile: a.path("ca.key")}
	if f.saKey, f.saPub, err = a.serviceAccountKey(); err != nil {
		return nil, err
	}
	api, err := a.issue("apiserver", "kube-apiserver", nil, true,
		[]net.IP{net.ParseIP(controlIP), net.ParseIP(kubernetesSvc), net.IPv4(127, 0, 0, 1)},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + ClusterDomain})
	if err != nil {
		return nil, err
	}
	f.apiCert, f.apiKey = api.certFile, api.keyFile
	if f.kubeletClient, err = a.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, false, nil, nil); err != nil {
		return nil, err
	}
	writeKC := func(path, cn string, orgs []string) error {
		kp, err := a.issue(filepath.Base(path), cn, orgs, false, nil, nil)
		if err != nil {
			return err
		}
		return os.WriteFile(path, kubeconfig(st.APIServer, a.pem, kp), 0o600)
	}
	if err := writeKC(st.Kubeconfig, "ambit-cluster-admin", []string{"system:masters"}); err != nil {
		return nil, err
	}
	cpDir := st.ControlPlane.Dir
	if err := os.MkdirAll(cpDir, 0o755); err != nil {
		return nil, err
	}
	f.schedulerKC = filepath.Join(cpDir, "scheduler.kubeconfig")
	f.controllerMgrKC = filepath.Join(cpDir, "controller-manager.kubeconfig")
	if err := writeKC(f.schedulerKC, "system:kube-scheduler", nil); err != nil {
		return nil, err
	}
	if err := writeKC(f.controllerMgrKC, "system:kube-controller-manager", nil); err != nil {
		return nil, err
	}

	for _, n := range st.Nodes {
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return nil, err
		}
		if err := writeKC(filepath.Join(n.Dir, "kubelet.kubeconfig"), "system:node:"+n.Name, []string{"system:nodes"}); err != nil {
			return nil, err
		}
		if err := writeKC(filepath.Join(n.Dir, "kube-proxy.kubeconfig"), "system:kube-proxy", nil); err != nil {
			return nil, err
		}
		serving, err := a.issue(n.Name+"-kubelet", "system:node:"+n.Name, []string{"system:nodes"}, true,
			[]net.IP{net.ParseIP(n.IP)}, []string{n.Name})
		if err != nil {
			return nil, err
		}
		for name, data := range map[string]string{
			"containerd.toml": containerdConfig(st.Bins.Runc),
			"kubelet.yaml":    kubeletConfig(n, f.caFile, serving.certFile, serving.keyFile, withDNS),
			"kube-proxy.yaml": kubeProxyConfig(n, filepath.Join(n.Dir, "kube-proxy.kubeconfig")),
		} {
			if err := os.WriteFile(filepath.Join(n.Dir, name), []byte(data), 0o644); err != nil {
				return nil, err
			}
		}
		root := filepath.Join(n.Dir, "root")
		if err := os.WriteFile(filepath.Join(root, "etc/cni/net.d/10-ambit-kubecluster.conflist"), []byte(cniConfig(n.PodCIDR)), 0o644); err != nil {
			return nil, err
		}
		for _, p := range cniPlugins {
			if err := copyFile(filepath.Join(st.Bins.CNIPluginDir, p), filepath.Join(root, "opt/cni/bin", p), 0o755); err != nil {
				return nil, fmt.Errorf("CNI plugin: %w", err)
			}
		}
	}
	return f, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// startControlPlane starts etcd (data in the state dir) and the API server
// in the control plane's namespace.
func (c *Cluster) startControlPlane(f *files) error {
	st := c.st
	cp := st.ControlPlane
	if err := c.startProcess("etcd", "", cp.NetNS, "", st.Bins.Etcd,
		"--name=ambit",
		"--data-dir="+filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=ambit=http://127.0.0.1:2380",
		"--logger=zap", "--log-outputs=stderr", "--log-level=warn",
	); err != nil {
		return err
	}
	return c.startProcess("kube-apiserver", "", cp.NetNS, "", st.Bins.KubeAPIServer,
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0",
		"--advertise-address="+controlIP,
		"--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+filepath.Join(cp.Dir, "apiserver"),
		"--tls-cert-file="+f.apiCert,
		"--tls-private-key-file="+f.apiKey,
		"--tls-min-version=VersionTLS13",
		"--client-ca-file="+f.caFile,
		"--service-account-issuer="+Issuer,
		"--service-account-key-file="+f.saPub,
		"--service-account-signing-key-file="+f.saKey,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
		"--service-cluster-ip-range="+serviceCIDR,
		"--allow-privileged=true",
		"--kubelet-client-certificate="+f.kubeletClient.certFile,
		"--kubelet-client-key="+f.kubeletClient.keyFile,
		"--kubelet-certificate-authority="+f.caFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
	)
}

// startControllers starts the scheduler and the controller manager (no
// node CIDR allocation: the nodes are registered with theirs).
func (c *Cluster) startControllers(f *files) error {
	st := c.st
	cp := st.ControlPlane
	if err := c.startProcess("kube-scheduler", "", cp.NetNS, "", st.Bins.KubeScheduler,
		"--kubeconfig="+f.schedulerKC,
		"--authentication-kubeconfig="+f.schedulerKC,
		"--authorization-kubeconfig="+f.schedulerKC,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--v=1",
	); err != nil {
		return err
	}
	return c.startProcess("kube-controller-manager", "", cp.NetNS, "", st.Bins.KubeControllerManager,
		"--kubeconfig="+f.controllerMgrKC,
		"--authentication-kubeconfig="+f.controllerMgrKC,
		"--authorization-kubeconfig="+f.controllerMgrKC,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--service-account-private-key-file="+f.saKey,
		"--root-ca-file="+f.caFile,
		"--use-service-account-credentials=true",
		"--cluster-cidr="+clusterCIDR,
		"--allocate-node-cidrs=false",
		"--service-cluster-ip-range="+serviceCIDR,
		"--cluster-signing-cert-file="+f.caFile,
		"--cluster-signing-key-file="+f.caKeyFile,
		"--v=1",
	)
}
